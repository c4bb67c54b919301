//! Links the local broker to the other nodes of a cluster.
//!
//! [`redis::RedisAdapter`] speaks the wire formats of the official
//! `@socket.io/redis-adapter` 8.x: the classic one, shared with
//! `@socket.io/redis-emitter` 5.x ([`wire`], [`requests`]), and the sharded
//! one of Redis 7 sharded pub/sub, for Redis Cluster ([`sharded`]); and that
//! of `@socket.io/redis-streams-adapter` 0.3 ([`streams`]). So roomcast
//! nodes, Node.js Socket.IO servers with those adapters, and backends using
//! the emitter share broadcasts.
//!
//! With pub/sub (classic, sharded) delivery across nodes is at most once: a
//! message published while a node is disconnected from Redis is lost for
//! that node, counted and logged. Order is kept per publisher per
//! connection. In `streams` mode every node reads the same stream, resumes
//! where it was after a loss of Redis (within what the stream keeps), and
//! delivers every broadcast, its own too, in the stream's order.

pub mod directory;
mod link;
pub mod redis;
pub mod requests;
pub mod sharded;
pub mod streams;
pub mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

/// A broadcast this node sends to the others: a [`wire::Broadcast`] once
/// the adapter has added its node id.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Outbound {
    /// Namespace.
    pub nsp: String,
    /// `[event, args...]`: JSON text, as the publisher wrote its data, with
    /// placeholders for binary values.
    pub args: bytestring::ByteString,
    /// The binary values, in placeholder order.
    pub attachments: Vec<bytes::Bytes>,
    /// Target rooms; empty = the whole namespace.
    pub rooms: Vec<String>,
    /// Rooms (socket ids included) that do not receive it.
    pub except: Vec<String>,
    /// `streams` mode: told whether the stream took it (`true` once it is
    /// in the stream, so its publisher's ack means it is kept; `false`
    /// when it could only be delivered on this node).
    pub stored: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// A broadcast from another node or an emitter, for the local broker; the
/// result is the number of local recipients.
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct Inbound(pub wire::Broadcast);

/// A local socket as other nodes see it (`fetchSockets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Namespace socket id.
    pub id: String,
    /// Its rooms (not counting its own id).
    pub rooms: Vec<String>,
    /// Its user, if authenticated.
    pub user: Option<String>,
}

/// The local sockets a selection matches (Socket.IO semantics: no rooms =
/// the namespace; a socket id names that socket).
#[derive(Message, Debug)]
#[rtype(result = "Vec<SocketInfo>")]
pub struct LocalSockets {
    /// Namespace.
    pub nsp: Arc<str>,
    /// Rooms.
    pub rooms: Vec<Arc<str>>,
    /// Excluded rooms and sockets.
    pub except: Vec<Arc<str>>,
}

/// Every room name of a namespace here, socket ids included (as Socket.IO
/// servers list them).
#[derive(Message, Debug)]
#[rtype(result = "Vec<String>")]
pub struct LocalRooms {
    /// Namespace.
    pub nsp: Arc<str>,
}

/// Another node asks the matched local sockets to join or leave rooms, or
/// to disconnect.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RemoteOperation {
    /// Namespace.
    pub nsp: Arc<str>,
    /// Selection: rooms.
    pub rooms: Vec<Arc<str>>,
    /// Selection: excluded rooms and sockets.
    pub except: Vec<Arc<str>>,
    /// What to do.
    pub op: RemoteOp,
}

/// See [`RemoteOperation`].
#[derive(Debug, Clone)]
pub enum RemoteOp {
    /// Join these rooms.
    Join(Vec<Arc<str>>),
    /// Leave these rooms.
    Leave(Vec<Arc<str>>),
    /// Disconnect: the whole connection when `close`, else the namespace.
    Disconnect {
        /// Close the underlying connection too.
        close: bool,
    },
}

/// What the adapter reports about itself.
#[derive(Debug, Default)]
pub struct AdapterStatus {
    /// Subscribed and able to receive.
    pub connected: AtomicBool,
    /// Broadcasts published to Redis.
    pub published: AtomicU64,
    /// Broadcasts received from other nodes.
    pub received: AtomicU64,
    /// Cross-node broadcasts lost (Redis away, queue full, timeouts).
    pub lost: AtomicU64,
    /// Messages on the channels that did not decode.
    pub malformed: AtomicU64,
    /// Requests of other nodes dropped because too many were being served
    /// (`roomcast_cluster_requests_dropped_total`).
    pub requests_dropped: AtomicU64,
    /// `streams` mode: session writes (keep, drop) dropped because the
    /// queue was full or Redis failed them
    /// (`roomcast_cluster_sessions_dropped_total`).
    pub sessions_dropped: AtomicU64,
}

impl AdapterStatus {
    /// Whether the node is cut off from the cluster.
    pub fn degraded(&self) -> bool {
        !self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The public rooms this node has members in, for the sharded adapter's
/// per-room channels (its dynamic mode). The broker updates it as rooms
/// appear and vanish; the adapter's subscriber follows it. A set and a
/// wake-up rather than messages: nothing can be lost to a full mailbox, and
/// its size is bounded by the rooms that exist.
#[derive(Debug, Default)]
pub struct RoomWatch {
    rooms: Mutex<HashSet<(Arc<str>, Arc<str>)>>,
    changed: tokio::sync::Notify,
}

impl RoomWatch {
    /// Records that `room` of `nsp` exists here (or no longer does).
    pub fn set(&self, nsp: &Arc<str>, room: &Arc<str>, exists: bool) {
        let key = (nsp.clone(), room.clone());
        // unwrap: the lock is only held for set operations.
        let mut rooms = self.rooms.lock().unwrap();
        let changed = if exists { rooms.insert(key) } else { rooms.remove(&key) };
        drop(rooms);
        if changed {
            self.changed.notify_one();
        }
    }

    /// The rooms now: `(namespace, room)`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>)> {
        // unwrap: as above.
        self.rooms.lock().unwrap().iter().cloned().collect()
    }

    /// Resolves after the next change (or at once if one is unseen).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Where a broadcast stands in the order every node delivers in: a Redis
/// stream entry id `<ms>-<seq>` in `streams` mode (so Node.js nodes with
/// `@socket.io/redis-streams-adapter` and roomcast nodes hand clients the
/// same offsets), and an id of the same form made by this node's broker
/// otherwise. Ordered as the stream orders its ids. Clients see it as the
/// last argument of an event (connection state recovery) and send the last
/// one back when they reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl Offset {
    /// The smallest offset after this one (the exclusive start of an
    /// `XRANGE`, as Redis before 6.2 needs it).
    pub fn next(self) -> Offset {
        Offset {
            ms: self.ms,
            seq: self.seq + 1,
        }
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for Offset {
    type Err = ();

    /// `<ms>-<seq>`, decimal digits only (the form the Node.js streams
    /// adapter checks with `/^[0-9]+-[0-9]+$/`).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(Offset {
            ms: ms.parse().map_err(drop)?,
            seq: seq.parse().map_err(drop)?,
        })
    }
}

/// A broadcast in the order of the cluster's stream (`streams` mode): every
/// node's, this node's own included, which the broker delivers only now,
/// so every node delivers in the same order and an offset names a place in
/// it. `offset: None`: Redis could not take this node's own broadcast; it
/// is delivered anyway, without an offset (a gap recovery must not cross).
/// `backfill`: read from the stream when the node started, for its
/// recovery log only, not for delivery.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Sequenced {
    /// The broadcast.
    pub broadcast: wire::Broadcast,
    /// Its stream entry id.
    pub offset: Option<Offset>,
    /// Not to deliver: the recovery log only.
    pub backfill: bool,
}

/// `streams` mode: every broadcast after `floor` has been or will be
/// handed over as [`Sequenced`] (the readers have read back the recovery
/// window and know where they go on), so recovery can tell what a client
/// missed since then. Sent again with a higher floor when entries the
/// readers never read were trimmed while they were away.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StreamRead {
    /// Every broadcast after it is (or will be) handed over.
    pub floor: Offset,
}

/// A disconnected socket's state kept for connection state recovery: the
/// `Session` of `socket.io-adapter` (`{sid, pid, rooms, data}`), which the
/// streams adapter stores msgpack-encoded, base64, under
/// `{session_key_prefix}{pid}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The namespace socket id it had and gets back.
    pub sid: String,
    /// The private session id its client holds.
    pub pid: String,
    /// Its rooms. Node.js servers list the socket's own id too, which
    /// roomcast skips when it restores.
    pub rooms: Vec<String>,
    /// `socket.data`: roomcast keeps the socket's identity there (`user`,
    /// and the room patterns it may subscribe and publish to).
    pub data: serde_json::Value,
}

/// Takes (reads and deletes: a session is recovered once) the session
/// `pid` from the cluster's store. `Err`: the store cannot be reached.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Session>, SessionStoreDown>")]
pub struct TakeSession {
    /// The private session id.
    pub pid: String,
}

/// Stores `session` for `ttl` (replacing what `pid` had): a socket that
/// ended for a reason that keeps its session, or, while it is connected,
/// refreshed so a node killed outright leaves it behind.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct KeepSession {
    /// The session.
    pub session: Session,
    /// How long the store keeps it.
    pub ttl: std::time::Duration,
}

/// Deletes the session `pid` (its socket ended for a reason that does not
/// keep it).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DropSession {
    /// The private session id.
    pub pid: String,
}

/// The cluster's session store could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session store (Redis) cannot be reached")]
pub struct SessionStoreDown;

#[cfg(test)]
mod tests {
    use super::Offset;

    #[test]
    fn offsets_read_and_write_the_stream_id_form_and_order_as_redis_does() {
        let a: Offset = "1700000000000-0".parse().unwrap();
        let b: Offset = "1700000000000-10".parse().unwrap();
        let c: Offset = "1700000000001-2".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(a.next().to_string(), "1700000000000-1");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1 -2",
            "+1-2",
            "123456789012345678901-0",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?}");
        }
    }
}
