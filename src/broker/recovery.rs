//! Connection state recovery, the broker's part: the recent broadcasts of
//! each recovering namespace with their offsets (the log), and the
//! sessions of disconnected sockets (single node, classic and sharded
//! modes; `streams` mode keeps sessions in Redis and hands them in).
//!
//! The rules are socket.io 4.8's (`packages/socket.io/lib/socket.ts`,
//! `namespace.ts`, `socket.io-adapter/lib/in-memory-adapter.ts`'s
//! `SessionAwareAdapter`, and `@socket.io/redis-streams-adapter`'s
//! `restoreSession`) with these differences, each on purpose:
//! - an offset is an id of the Redis stream form (`<ms>-<seq>`) in every
//!   mode, so a client's offset means the same on any node that read the
//!   same stream;
//! - a session is taken when it is recovered: recovering it again is
//!   refused (the in-memory adapter of socket.io 4.8.1 keeps it, so a
//!   client that recovered, disconnected and connected again comes back
//!   `recovered` with the old rooms);
//! - a client that received no event before it lost its connection (its
//!   CONNECT carries a `pid` but no `offset`) recovers from the place the
//!   log was at when its socket joined, instead of not at all;
//! - what cannot be replayed exactly is refused, not replayed in part: an
//!   offset older than the log keeps, a log with a hole (a broadcast
//!   delivered without an offset while Redis was away), or more missed
//!   frames than the connection may buffer.
//!
//! Every broadcast in a recovering namespace gets its offset as one more
//! last argument (the client keeps the last one it saw), except the
//! broker's own presence notices, which are not replayed.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt as _, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::Value;

use crate::adapter::Offset;
use crate::engineio::Frame;

/// What the broker does for recovery (`[recovery]`).
#[derive(Debug, Clone, Default)]
pub struct RecoveryConfig {
    /// Recovering namespaces; empty = recovery is off.
    pub namespaces: Vec<Arc<str>>,
    /// `max_disconnection_ms`: how long a session and a logged broadcast
    /// are kept.
    pub window: Duration,
    /// Bytes of logged broadcasts kept, over every namespace.
    pub max_log_bytes: usize,
    /// Disconnected sessions kept (local store).
    pub max_sessions: usize,
    /// `streams` mode: how often a connected socket's session is written
    /// to the cluster's store again.
    pub refresh: Duration,
}

impl RecoveryConfig {
    /// Whether `nsp` recovers.
    pub fn covers(&self, nsp: &str) -> bool {
        self.namespaces.iter().any(|n| **n == *nsp)
    }
}

/// Why a recovery was refused (`roomcast_recoveries_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No session has this private id (never, taken already, or lost with
    /// a node's memory).
    #[error("no session has this private id")]
    Unknown,
    /// The session or the broadcasts after the client's offset are older
    /// than what is kept.
    #[error("the session or the events after its offset are no longer kept")]
    Expired,
    /// The token did not verify again.
    #[error("the token did not verify")]
    Token,
    /// A broadcast after the client's offset was delivered without one
    /// (Redis was away), so the replay would not be complete.
    #[error("an event after its offset was delivered while Redis was away")]
    Incomplete,
    /// More missed frames than the connection may buffer.
    #[error("more events were missed than the connection may buffer")]
    TooMany,
    /// The session store (Redis) cannot be reached, or the node has not
    /// read the stream yet.
    #[error("the session store is not available")]
    Unavailable,
}

impl Refused {
    /// The metric label.
    pub fn code(self) -> &'static str {
        match self {
            Refused::Unknown => "unknown",
            Refused::Expired => "expired",
            Refused::Token => "token",
            Refused::Incomplete => "incomplete",
            Refused::TooMany => "too_many",
            Refused::Unavailable => "unavailable",
        }
    }

    /// Every reason, for the metric's series.
    pub const ALL: [Refused; 6] = [
        Refused::Unknown,
        Refused::Expired,
        Refused::Token,
        Refused::Incomplete,
        Refused::TooMany,
        Refused::Unavailable,
    ];
}

/// Whom a logged broadcast was for, as the broker chose its targets.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub rooms: Vec<Arc<str>>,
    pub except: Vec<Arc<str>>,
    /// A name shaped like a socket id is that socket (backends, other
    /// servers), not a room (clients).
    pub ids_as_rooms: bool,
}

impl Target {
    /// Whether the socket `sid` in `rooms` was one of the targets.
    pub fn reaches(&self, sid: &str, rooms: &HashSet<Arc<str>>) -> bool {
        let excluded = self.except.iter().any(|e| **e == *sid || rooms.contains(e));
        if excluded {
            return false;
        }
        self.rooms.is_empty()
            || self
                .rooms
                .iter()
                .any(|r| rooms.contains(r) || (self.ids_as_rooms && **r == *sid))
    }
}

struct Entry {
    offset: Offset,
    at: Instant,
    target: Target,
    frames: Arc<[Frame]>,
    bytes: usize,
}

/// One namespace's recent broadcasts, in offset order.
struct Log {
    entries: VecDeque<Entry>,
    /// Every broadcast after this offset is in `entries` (or was for
    /// nobody here): those at or before it were trimmed, or came before
    /// this node read the stream.
    floor: Offset,
    /// A broadcast was delivered without an offset after this one.
    gap: Option<Offset>,
}

impl Log {
    fn head(&self) -> Offset {
        self.entries.back().map_or(self.floor, |e| e.offset)
    }
}

/// A disconnected socket's session in the local store.
#[derive(Debug, Clone)]
pub(super) struct Kept {
    pub sid: Arc<str>,
    pub nsp: Arc<str>,
    pub rooms: Vec<Arc<str>>,
    pub data: Value,
    /// Where the log was when the socket joined (for a client that got no
    /// offset).
    pub start: Offset,
    until: Instant,
}

/// What a resumed socket gets back.
pub(super) struct Replay {
    /// The missed broadcasts' frames, in order, as one delivery.
    pub frames: Arc<[Frame]>,
    /// How many broadcasts.
    pub packets: usize,
}

/// The log and the local sessions.
pub(super) struct Recovery {
    pub config: RecoveryConfig,
    logs: HashMap<Arc<str>, Log>,
    bytes: usize,
    sessions: HashMap<Arc<str>, Kept>,
    /// Sessions in the order they expire (all last the window), so the
    /// oldest goes first without a scan; an entry whose session was taken
    /// or replaced is skipped.
    expiry: VecDeque<(Instant, Arc<str>)>,
    /// The last offset this node made (single node, classic, sharded).
    last: Offset,
    /// `streams` mode: the stream has not been read yet (backfill under
    /// way): no recovery can be complete.
    pub waiting_for_stream: bool,
}

/// Milliseconds since the Unix epoch now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Recovery {
    pub fn new(config: RecoveryConfig) -> Self {
        let logs = config
            .namespaces
            .iter()
            .map(|n| {
                let log = Log {
                    entries: VecDeque::new(),
                    floor: Offset::default(),
                    gap: None,
                };
                (n.clone(), log)
            })
            .collect();
        Self {
            config,
            logs,
            bytes: 0,
            sessions: HashMap::new(),
            expiry: VecDeque::new(),
            last: Offset::default(),
            waiting_for_stream: false,
        }
    }

    /// Whether `nsp` recovers.
    pub fn covers(&self, nsp: &str) -> bool {
        self.logs.contains_key(nsp)
    }

    /// `streams` mode: the node reads the stream from after `floor`
    /// (nothing before it is known here).
    pub fn stream_from(&mut self, floor: Offset) {
        for log in self.logs.values_mut() {
            log.floor = log.floor.max(floor);
        }
        self.waiting_for_stream = false;
    }

    /// A new offset of this node, after every one before (the stream's
    /// id rule: the time in ms, and a sequence within the same ms).
    pub fn next_offset(&mut self) -> Offset {
        let ms = now_ms();
        self.last = if ms > self.last.ms {
            Offset { ms, seq: 0 }
        } else {
            self.last.next()
        };
        self.last
    }

    /// Where `nsp`'s log is now (a socket joining starts there).
    pub fn head(&self, nsp: &str) -> Offset {
        self.logs.get(nsp).map_or_else(Offset::default, Log::head)
    }

    /// A broadcast of `nsp` went out here without an offset.
    pub fn mark_gap(&mut self, nsp: &str) {
        if let Some(log) = self.logs.get_mut(nsp) {
            log.gap = Some(log.head());
        }
    }

    /// Logs a broadcast of `nsp` (whose `frames` carry `offset` already).
    pub fn log(&mut self, nsp: &Arc<str>, offset: Offset, target: Target, frames: Arc<[Frame]>) {
        let Some(log) = self.logs.get_mut(nsp) else { return };
        if log.entries.back().is_some_and(|e| e.offset >= offset) || offset <= log.floor {
            // Out of order (a stream read twice after a reconnection):
            // already logged.
            return;
        }
        let bytes = frames.iter().map(Frame::len).sum::<usize>()
            + target
                .rooms
                .iter()
                .chain(&target.except)
                .map(|r| r.len() + 16)
                .sum::<usize>()
            + 64;
        log.entries.push_back(Entry {
            offset,
            at: Instant::now(),
            target,
            frames,
            bytes,
        });
        self.bytes += bytes;
        while self.bytes > self.config.max_log_bytes {
            if !self.trim_oldest() {
                break;
            }
        }
    }

    /// Drops the oldest entry of all logs; false when they are empty.
    fn trim_oldest(&mut self) -> bool {
        let oldest = self
            .logs
            .values_mut()
            .filter(|l| !l.entries.is_empty())
            .min_by_key(|l| l.entries.front().map(|e| e.at));
        let Some(log) = oldest else { return false };
        // unwrap: the filter kept non-empty logs only.
        let entry = log.entries.pop_front().unwrap();
        log.floor = entry.offset;
        self.bytes -= entry.bytes;
        true
    }

    /// Drops what is older than the window: log entries and sessions.
    pub fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        for log in self.logs.values_mut() {
            while log.entries.front().is_some_and(|e| now.duration_since(e.at) > window) {
                // unwrap: front() is some.
                let entry = log.entries.pop_front().unwrap();
                log.floor = entry.offset;
                self.bytes -= entry.bytes;
            }
        }
        while let Some((until, _)) = self.expiry.front() {
            if *until > now {
                break;
            }
            self.drop_first();
        }
    }

    /// Drops the session that expires first (if it is still there).
    fn drop_first(&mut self) {
        if let Some((until, pid)) = self.expiry.pop_front() {
            if self.sessions.get(&pid).is_some_and(|k| k.until == until) {
                self.sessions.remove(&pid);
            }
        }
    }

    /// Keeps a disconnected socket's session (local store).
    pub fn keep(&mut self, pid: Arc<str>, mut kept: Kept) {
        if self.config.max_sessions == 0 {
            return;
        }
        // The ones closest to expiring go (every session has its place in
        // `expiry`, so this ends).
        while self.sessions.len() >= self.config.max_sessions
            && !self.sessions.contains_key(&pid)
            && !self.expiry.is_empty()
        {
            self.drop_first();
        }
        kept.until = Instant::now() + self.config.window;
        self.expiry.push_back((kept.until, pid.clone()));
        self.sessions.insert(pid, kept);
    }

    /// A session for the local store.
    pub fn session(sid: Arc<str>, nsp: Arc<str>, rooms: Vec<Arc<str>>, data: Value, start: Offset) -> Kept {
        Kept {
            sid,
            nsp,
            rooms,
            data,
            start,
            until: Instant::now(),
        }
    }

    /// Takes the session `pid` of `nsp` from the local store.
    pub fn take(&mut self, pid: &str, nsp: &str) -> Option<Kept> {
        let now = Instant::now();
        match self.sessions.get(pid) {
            Some(k) if k.nsp.as_ref() == nsp && k.until > now => self.sessions.remove(pid),
            Some(k) if k.until <= now => {
                self.sessions.remove(pid);
                None
            }
            _ => None,
        }
    }

    /// Sessions in the local store.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes of the logs.
    pub fn log_bytes(&self) -> usize {
        self.bytes
    }

    /// What the socket `sid` of `nsp`, in `rooms`, missed after `from`:
    /// refused when that cannot be told exactly, or is more than
    /// `max_frames` frames.
    pub fn replay(
        &self,
        nsp: &str,
        from: Offset,
        sid: &str,
        rooms: &HashSet<Arc<str>>,
        max_frames: usize,
    ) -> Result<Replay, Refused> {
        if self.waiting_for_stream {
            return Err(Refused::Unavailable);
        }
        let log = self.logs.get(nsp).ok_or(Refused::Unknown)?;
        if from < log.floor {
            return Err(Refused::Expired);
        }
        if log.gap.is_some_and(|g| from <= g) {
            return Err(Refused::Incomplete);
        }
        let start = log.entries.partition_point(|e| e.offset <= from);
        let mut frames = Vec::new();
        let mut packets = 0;
        for entry in log.entries.range(start..) {
            if entry.target.reaches(sid, rooms) {
                if frames.len() + entry.frames.len() > max_frames {
                    return Err(Refused::TooMany);
                }
                frames.extend(entry.frames.iter().cloned());
                packets += 1;
            }
        }
        Ok(Replay {
            frames: frames.into(),
            packets,
        })
    }
}

/// `frames` (an event: its packet text, then its attachments) with
/// `offset` as one more last argument: `…]` becomes `…,"<offset>"]`.
pub fn tag(frames: &[Frame], offset: Offset) -> Arc<[Frame]> {
    let mut out: Vec<Frame> = frames.to_vec();
    if let Some(Frame::Text(text)) = out.first_mut() {
        if let Some(body) = text.strip_suffix(']') {
            let tagged = format!("{body},\"{offset}\"]");
            *text = ByteString::from(tagged);
        }
    }
    out.into()
}

/// The JSON text of an event's arguments `[event, …]` with `offset` as
/// one more last argument.
pub fn tag_args(args: &str, offset: Offset) -> String {
    match args.strip_suffix(']') {
        Some(body) => format!("{body},\"{offset}\"]"),
        None => args.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_log_bytes: usize) -> RecoveryConfig {
        RecoveryConfig {
            namespaces: vec!["/".into()],
            window: Duration::from_secs(60),
            max_log_bytes,
            max_sessions: 2,
            refresh: Duration::from_secs(30),
        }
    }

    fn target(rooms: &[&str], except: &[&str]) -> Target {
        Target {
            rooms: rooms.iter().map(|r| Arc::from(*r)).collect(),
            except: except.iter().map(|r| Arc::from(*r)).collect(),
            ids_as_rooms: true,
        }
    }

    fn text(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Text(t) => t.to_string(),
                Frame::Binary(b) => format!("<{} bytes>", b.len()),
            })
            .collect()
    }

    fn rooms(names: &[&str]) -> HashSet<Arc<str>> {
        names.iter().map(|r| Arc::from(*r)).collect()
    }

    #[test]
    fn refusal_codes_are_the_declared_metric_labels() {
        let codes: Vec<_> = Refused::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, crate::metrics::RECOVERY_REFUSALS);
    }

    #[test]
    fn tagging_appends_the_offset_as_a_last_string_argument() {
        let offset = Offset { ms: 17, seq: 3 };
        let frames = [
            Frame::Text("42[\"m\",{\"a\":[1]}]".into()),
            Frame::Binary(vec![1, 2].into()),
        ];
        assert_eq!(
            text(&tag(&frames, offset)),
            ["42[\"m\",{\"a\":[1]},\"17-3\"]", "<2 bytes>"]
        );
        assert_eq!(tag_args("[\"m\"]", offset), "[\"m\",\"17-3\"]");
    }

    #[test]
    fn offsets_made_here_increase_strictly() {
        let mut r = Recovery::new(config(1 << 20));
        let mut last = Offset::default();
        for _ in 0..10_000 {
            let o = r.next_offset();
            assert!(o > last, "{o} after {last}");
            last = o;
        }
    }

    #[test]
    fn a_replay_is_what_reached_the_socket_after_its_offset_in_order() {
        let mut r = Recovery::new(config(1 << 20));
        let nsp: Arc<str> = "/".into();
        let mut offsets = vec![];
        for (i, t) in [
            target(&["a"], &[]),
            target(&["b"], &[]),
            target(&[], &[]),
            target(&["a"], &["sid1"]),
            target(&["a"], &["b"]),
            target(&["sid1"], &[]),
        ]
        .into_iter()
        .enumerate()
        {
            let o = r.next_offset();
            offsets.push(o);
            r.log(&nsp, o, t, Arc::new([Frame::Text(format!("42[\"m{i}\"]").into())]));
        }
        let replay = r.replay("/", offsets[0], "sid1", &rooms(&["a"]), 100).unwrap();
        assert_eq!(text(&replay.frames), ["42[\"m2\"]", "42[\"m4\"]", "42[\"m5\"]"]);
        let replay = r
            .replay("/", Offset::default(), "sid2", &rooms(&["a", "c"]), 100)
            .unwrap();
        assert_eq!(
            text(&replay.frames),
            ["42[\"m0\"]", "42[\"m2\"]", "42[\"m3\"]", "42[\"m4\"]"]
        );
        assert_eq!(replay.packets, 4);
        assert_eq!(
            r.replay("/", Offset::default(), "sid2", &rooms(&["a"]), 3).err(),
            Some(Refused::TooMany)
        );
        // Nothing after the last one.
        let replay = r.replay("/", offsets[5], "sid1", &rooms(&["a"]), 100).unwrap();
        assert_eq!(replay.packets, 0);
    }

    #[test]
    fn trimmed_entries_make_older_offsets_expired_and_a_gap_incomplete() {
        let mut r = Recovery::new(config(400));
        let nsp: Arc<str> = "/".into();
        let mut offsets = vec![];
        for i in 0..10 {
            let o = r.next_offset();
            offsets.push(o);
            r.log(
                &nsp,
                o,
                target(&[], &[]),
                Arc::new([Frame::Text(format!("42[\"m{i}\"]").into())]),
            );
        }
        assert!(r.log_bytes() <= 400);
        assert_eq!(
            r.replay("/", offsets[0], "s", &rooms(&[]), 100).err(),
            Some(Refused::Expired)
        );
        let kept = r.replay("/", offsets[8], "s", &rooms(&[]), 100).unwrap();
        assert_eq!(text(&kept.frames), ["42[\"m9\"]"]);
        r.mark_gap("/");
        assert_eq!(
            r.replay("/", offsets[8], "s", &rooms(&[]), 100).err(),
            Some(Refused::Incomplete)
        );
        let o = r.next_offset();
        r.log(
            &nsp,
            o,
            target(&[], &[]),
            Arc::new([Frame::Text("42[\"after\"]".into())]),
        );
        assert_eq!(
            r.replay("/", offsets[9], "s", &rooms(&[]), 100).err(),
            Some(Refused::Incomplete)
        );
        assert_eq!(r.replay("/", o, "s", &rooms(&[]), 100).unwrap().packets, 0);
    }

    #[test]
    fn a_session_is_taken_once_and_the_store_is_bounded() {
        let mut r = Recovery::new(config(1 << 20));
        let kept = |sid: &str| Recovery::session(sid.into(), "/".into(), vec![], Value::Null, Offset::default());
        r.keep("p1".into(), kept("s1"));
        r.keep("p2".into(), kept("s2"));
        r.keep("p3".into(), kept("s3"));
        assert_eq!(r.sessions(), 2);
        assert!(r.take("p1", "/").is_none(), "the oldest went when a third came");
        assert!(r.take("p3", "/nope").is_none(), "another namespace's");
        assert_eq!(r.take("p3", "/").map(|k| k.sid), Some("s3".into()));
        assert!(r.take("p3", "/").is_none(), "taken once");
    }
}
