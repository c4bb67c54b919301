//! The Engine.IO session state machine, free of I/O.
//!
//! One [`Session`] per Engine.IO session. The connection actor feeds it the
//! packets that arrive (and on which transport: the active one or a WebSocket
//! being probed for an upgrade), asks it for the frames to write, and drives
//! its clock by calling [`Session::poll_timers`] at [`Session::next_deadline`].
//! Time is always passed in, so tests step it explicitly.
//!
//! Life cycle (spec "Handshake", "Heartbeat", "Upgrade"):
//!
//! ```text
//!   Open ──(WebSocket with this sid)──▶ Upgrading ──2probe/3probe, 5──▶ Open (on WebSocket)
//!    │                                      │ anything else, timeout, probe closed
//!    │                                      └────────────────────────────▶ Open (still polling)
//!    └─ close(reason) ─▶ Closing (polling: deliver what is buffered, then `1`) ─▶ Closed
//!                     └─────────────────────────────────────────────────────▶ Closed
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::packet::{Frame, Packet, Payload, PROBE};
use crate::reason::DisconnectReason;

/// Which transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
}

impl TransportKind {
    /// The name used in the `transport` query parameter.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// Where a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The transport that currently carries the session.
    Active,
    /// A WebSocket opened with this sid that is being probed for an upgrade.
    Probe,
}

/// Life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Exchanging packets.
    Open,
    /// A WebSocket is being probed; the polling transport still carries data.
    Upgrading {
        /// `2probe` was received and answered.
        probed: bool,
        /// When the upgrade is abandoned.
        deadline: Instant,
    },
    /// Closing over polling: waiting for a GET to take the buffered packets
    /// and the close packet.
    Closing {
        /// When the session is dropped even if nobody polled.
        deadline: Instant,
    },
    /// Ended.
    Closed,
}

/// The timing and buffer limits of a session.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `pingInterval`: time from a pong (or the handshake) to the next ping.
    pub ping_interval: Duration,
    /// `pingTimeout`: time a client has to answer a ping.
    pub ping_timeout: Duration,
    /// How long a probed WebSocket may take to send `5`.
    pub upgrade_timeout: Duration,
    /// Outgoing frames one session may hold while nobody takes them (a polling
    /// client between GETs); beyond it the client is a slow consumer.
    pub max_buffered: usize,
    /// Frames one polling GET takes at most; the rest wait for the next.
    pub max_per_poll: usize,
}

/// Why the session must close, and the detail for logs and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseCause {
    /// The reason, with its Socket.IO string.
    pub reason: DisconnectReason,
    /// A human-readable detail.
    pub detail: String,
    /// End at once even where the reason would deliver buffered data first
    /// (a limit breach: the client already got the error).
    pub at_once: bool,
}

impl CloseCause {
    /// A cause with a detail.
    pub fn new(reason: DisconnectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            at_once: false,
        }
    }

    /// The same cause, ending the session at once.
    pub fn at_once(mut self) -> Self {
        self.at_once = true;
        self
    }
}

/// What the caller has to do after a packet or a timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Hand this message to the application.
    Message(Payload),
    /// `2probe` arrived on the probe: write `3probe` on it, and end any
    /// pending poll with a noop so the client can pause polling.
    ProbeAnswered,
    /// `5` arrived: the probed WebSocket is now the transport; write the
    /// buffered frames on it and close polling.
    Upgraded,
    /// The upgrade was abandoned: close the probing WebSocket.
    UpgradeAborted,
    /// The heartbeat ping was queued: flush.
    PingQueued,
}

/// How a close proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Tear the transport down now.
    Now,
    /// Polling with buffered frames: the next GET takes them and the close
    /// packet, then the session ends (or at the deadline).
    Drain,
}

/// An Engine.IO session without I/O.
#[derive(Debug)]
pub struct Session {
    transport: TransportKind,
    state: State,
    /// Frames waiting for a transport to take them. On WebSocket the actor
    /// moves them to the writer at once; on polling they wait for a GET.
    buffer: VecDeque<Frame>,
    /// When the next ping is due (`None` while one is outstanding).
    next_ping: Option<Instant>,
    /// When the outstanding ping times out.
    pong_deadline: Option<Instant>,
    /// The frame that ends a closing polling session (close or noop).
    last: Option<Frame>,
    /// The node's (shared: every session has the same).
    limits: Arc<Limits>,
}

impl Session {
    /// A session that was just opened on `transport` at `now`.
    pub fn new(transport: TransportKind, limits: Arc<Limits>, now: Instant) -> Self {
        Self {
            transport,
            state: State::Open,
            buffer: VecDeque::new(),
            next_ping: Some(now + limits.ping_interval),
            pong_deadline: None,
            last: None,
            limits,
        }
    }

    /// The transport that carries the session.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// The life-cycle state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the session accepts packets from the client.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Open | State::Upgrading { .. })
    }

    /// Frames waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Feeds one packet from the client.
    pub fn on_packet(&mut self, via: Via, packet: Packet, now: Instant) -> Result<Option<Event>, CloseCause> {
        if !self.is_live() {
            return Ok(None);
        }
        match via {
            Via::Active => self.on_active_packet(packet, now),
            Via::Probe => Ok(self.on_probe_packet(packet)),
        }
    }

    fn on_active_packet(&mut self, packet: Packet, now: Instant) -> Result<Option<Event>, CloseCause> {
        use DisconnectReason::{ParseError, TransportClose};
        match packet {
            Packet::Message(payload) => Ok(Some(Event::Message(payload))),
            Packet::Pong(_) => {
                // Spec "Heartbeat": the next ping is pingInterval after the pong.
                if self.pong_deadline.take().is_some() {
                    self.next_ping = Some(now + self.limits.ping_interval);
                }
                Ok(None)
            }
            Packet::Noop => Ok(None),
            Packet::Close => Err(CloseCause::new(TransportClose, "client sent a close packet")),
            Packet::Open => Err(CloseCause::new(ParseError, "open packet from the client")),
            Packet::Ping(_) => Err(CloseCause::new(
                ParseError,
                "ping from the client (v4 heartbeats go from server to client)",
            )),
            Packet::Upgrade => Err(CloseCause::new(ParseError, "upgrade packet on the active transport")),
        }
    }

    fn on_probe_packet(&mut self, packet: Packet) -> Option<Event> {
        let State::Upgrading { probed, deadline } = self.state else {
            return Some(Event::UpgradeAborted);
        };
        match packet {
            Packet::Ping(data) if !probed && data == PROBE => {
                self.state = State::Upgrading { probed: true, deadline };
                Some(Event::ProbeAnswered)
            }
            Packet::Upgrade if probed => {
                self.state = State::Open;
                self.transport = TransportKind::WebSocket;
                Some(Event::Upgraded)
            }
            _ => {
                self.state = State::Open;
                Some(Event::UpgradeAborted)
            }
        }
    }

    /// A WebSocket asks to take over this session. Only a live polling
    /// session that is not already upgrading accepts.
    pub fn begin_upgrade(&mut self, now: Instant) -> bool {
        if self.transport != TransportKind::Polling || self.state != State::Open {
            return false;
        }
        self.state = State::Upgrading {
            probed: false,
            deadline: now + self.limits.upgrade_timeout,
        };
        true
    }

    /// The probing WebSocket went away before the upgrade completed.
    pub fn probe_closed(&mut self) {
        if matches!(self.state, State::Upgrading { .. }) {
            self.state = State::Open;
        }
    }

    /// Whether polling is read-only: the probe was answered and the client
    /// is pausing polling, so a GET gets only a noop and data waits for the
    /// WebSocket.
    pub fn polling_paused(&self) -> bool {
        matches!(self.state, State::Upgrading { probed: true, .. })
    }

    /// Queues a frame for the client. Frames queued after a close began are
    /// dropped; a full buffer means the client does not keep up.
    pub fn push(&mut self, frame: Frame) -> Result<(), CloseCause> {
        if !self.is_live() {
            return Ok(());
        }
        if self.buffer.len() >= self.limits.max_buffered {
            return Err(CloseCause::new(
                DisconnectReason::ForcedClose,
                format!("slow consumer: {} frames buffered", self.buffer.len()),
            ));
        }
        self.buffer.push_back(frame);
        Ok(())
    }

    /// Frames wait in the buffer.
    pub fn has_buffered(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Takes every buffered frame, in order.
    pub fn take_buffered(&mut self) -> VecDeque<Frame> {
        std::mem::take(&mut self.buffer)
    }

    /// Puts frames that could not be delivered back in front of the buffer.
    pub fn unshift(&mut self, frames: VecDeque<Frame>) {
        let mut frames = frames;
        frames.append(&mut self.buffer);
        self.buffer = frames;
    }

    /// Starts closing. On polling the session ends with a last GET: after a
    /// server-decided close, GETs first take what is buffered, then one
    /// takes the close packet on its own (as the reference server sends it,
    /// so a client handles every message before it learns of the close);
    /// after the client's own close packet, the next GET takes a noop (a
    /// GET racing the POST that carried the close is answered cleanly).
    /// Every other close is at once.
    pub fn close(&mut self, cause: &CloseCause, now: Instant) -> CloseMode {
        let reason = cause.reason;
        if matches!(self.state, State::Closed | State::Closing { .. }) {
            return CloseMode::Now;
        }
        self.next_ping = None;
        self.pong_deadline = None;
        let polling = self.transport == TransportKind::Polling;
        self.last = if polling && reason.drains_first() && !cause.at_once {
            Some(Frame::close())
        } else if polling && reason == DisconnectReason::TransportClose {
            self.buffer.clear();
            Some(Frame::noop())
        } else {
            self.buffer.clear();
            self.state = State::Closed;
            return CloseMode::Now;
        };
        self.state = State::Closing {
            deadline: now + self.limits.ping_timeout,
        };
        CloseMode::Drain
    }

    /// What a polling GET takes now: the buffered frames, or, once they are
    /// gone from a closing session, its last frame (which ends it). `None`:
    /// nothing yet, the GET waits.
    pub fn poll_payload(&mut self) -> Option<VecDeque<Frame>> {
        if self.buffer.len() > self.limits.max_per_poll {
            // The rest waits for the next GET, which comes at once.
            let rest = self.buffer.split_off(self.limits.max_per_poll);
            return Some(std::mem::replace(&mut self.buffer, rest));
        }
        if !self.buffer.is_empty() {
            return Some(self.take_buffered());
        }
        if matches!(self.state, State::Closing { .. }) {
            let last = self.last.take()?;
            self.state = State::Closed;
            return Some(VecDeque::from([last]));
        }
        None
    }

    /// Marks the session closed (after a drain timed out).
    pub fn finish_close(&mut self) {
        self.buffer.clear();
        self.last = None;
        self.state = State::Closed;
    }

    /// The earliest instant at which [`Session::poll_timers`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::Upgrading { deadline, .. } | State::Closing { deadline } => Some(deadline),
            _ => None,
        };
        [self.next_ping, self.pong_deadline, state_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the timers due at `now`: sends the ping, times out the pong,
    /// abandons a slow upgrade, ends a drain.
    pub fn poll_timers(&mut self, now: Instant) -> Result<Option<Event>, CloseCause> {
        match self.state {
            State::Closing { deadline } if now >= deadline => {
                self.finish_close();
                return Ok(None);
            }
            State::Upgrading { deadline, .. } if now >= deadline => {
                self.state = State::Open;
                return Ok(Some(Event::UpgradeAborted));
            }
            _ => {}
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(CloseCause::new(
                DisconnectReason::PingTimeout,
                format!("no pong within {} ms", self.limits.ping_timeout.as_millis()),
            ));
        }
        if let Some(due) = self.next_ping.filter(|d| now >= *d) {
            self.next_ping = None;
            // From when the ping was due, not when the timer ran: timer slack
            // must not stretch the timeout.
            self.pong_deadline = Some(due + self.limits.ping_timeout);
            // The ping is part of the heartbeat, not data: it may exceed the
            // buffer bound by one rather than count as a slow consumer.
            self.buffer.push_back(Frame::ping());
            return Ok(Some(Event::PingQueued));
        }
        Ok(None)
    }
}

/// The JSON data of the open packet (spec "Handshake"): exactly `sid`,
/// `upgrades`, `pingInterval`, `pingTimeout` and `maxPayload`.
pub fn handshake_json(sid: &str, upgrades: &[&str], limits: &Limits, max_payload: usize) -> String {
    serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": limits.ping_interval.as_millis() as u64,
        "pingTimeout": limits.ping_timeout.as_millis() as u64,
        "maxPayload": max_payload,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use DisconnectReason::*;

    fn limits() -> Arc<Limits> {
        Arc::new(Limits {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            upgrade_timeout: Duration::from_millis(1000),
            max_buffered: 4,
            max_per_poll: 16,
        })
    }

    #[test]
    fn a_poll_takes_at_most_max_per_poll_frames_the_rest_the_next() {
        let limits = Arc::new(Limits {
            max_buffered: 10,
            max_per_poll: 3,
            ..(*limits()).clone()
        });
        let mut s = Session::new(TransportKind::Polling, limits, Instant::now());
        for i in 0..5 {
            s.push(Frame::message_text(&format!("m{i}"))).unwrap();
        }
        assert_eq!(s.poll_payload().unwrap().len(), 3);
        assert_eq!(s.poll_payload().unwrap().len(), 2);
        assert!(s.poll_payload().is_none());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn heartbeat_pings_then_times_out() {
        let t0 = Instant::now();
        let mut s = Session::new(TransportKind::WebSocket, limits(), t0);
        assert_eq!(s.next_deadline(), Some(t0 + ms(300)));
        assert_eq!(s.poll_timers(t0 + ms(299)), Ok(None));
        assert_eq!(s.poll_timers(t0 + ms(300)), Ok(Some(Event::PingQueued)));
        assert_eq!(s.take_buffered(), [Frame::ping()]);
        assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
        // A pong re-arms the ping one interval later.
        s.on_packet(Via::Active, Packet::Pong("".into()), t0 + ms(350)).unwrap();
        assert_eq!(s.next_deadline(), Some(t0 + ms(650)));
        assert_eq!(s.poll_timers(t0 + ms(650)), Ok(Some(Event::PingQueued)));
        let err = s.poll_timers(t0 + ms(850)).unwrap_err();
        assert_eq!(err.reason, PingTimeout);
    }

    #[test]
    fn client_packets_that_are_invalid_close_with_parse_error() {
        let t0 = Instant::now();
        for packet in [Packet::Open, Packet::Ping("".into()), Packet::Upgrade] {
            let mut s = Session::new(TransportKind::Polling, limits(), t0);
            assert_eq!(s.on_packet(Via::Active, packet, t0).unwrap_err().reason, ParseError);
        }
        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        assert_eq!(
            s.on_packet(Via::Active, Packet::Close, t0).unwrap_err().reason,
            TransportClose
        );
    }

    #[test]
    fn upgrade_completes_after_probe() {
        let t0 = Instant::now();
        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        assert!(s.begin_upgrade(t0));
        assert!(!s.begin_upgrade(t0), "one upgrade at a time");
        assert!(!s.polling_paused());
        assert_eq!(
            s.on_packet(Via::Probe, Packet::Ping("probe".into()), t0),
            Ok(Some(Event::ProbeAnswered))
        );
        assert!(s.polling_paused());
        assert_eq!(s.on_packet(Via::Probe, Packet::Upgrade, t0), Ok(Some(Event::Upgraded)));
        assert_eq!(s.transport(), TransportKind::WebSocket);
        assert_eq!(s.state(), State::Open);
        assert!(!s.begin_upgrade(t0), "a WebSocket session does not upgrade again");
    }

    #[test]
    fn upgrade_aborts_on_bad_probe_or_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        s.begin_upgrade(t0);
        assert_eq!(
            s.on_packet(Via::Probe, Packet::Upgrade, t0),
            Ok(Some(Event::UpgradeAborted))
        );
        assert_eq!(s.transport(), TransportKind::Polling);
        assert!(s.begin_upgrade(t0));
        assert_eq!(s.poll_timers(t0 + ms(1000)), Ok(Some(Event::UpgradeAborted)));
        assert_eq!(s.state(), State::Open);
    }

    #[test]
    fn buffer_is_bounded_and_close_drains_only_when_server_decided() {
        let t0 = Instant::now();
        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        for i in 0..4 {
            s.push(Frame::message_text(&i.to_string())).unwrap();
        }
        assert_eq!(s.push(Frame::noop()).unwrap_err().reason, ForcedClose);
        assert_eq!(s.close(&CloseCause::new(ForcedClose, ""), t0), CloseMode::Drain);
        // The data first, then the close packet in a response of its own.
        assert_eq!(s.poll_payload().unwrap().len(), 4);
        assert_eq!(s.poll_payload().unwrap(), [Frame::close()]);
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.poll_payload(), None);

        // A server-decided close with nothing buffered still tells the client.
        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        assert_eq!(s.close(&CloseCause::new(ServerShuttingDown, ""), t0), CloseMode::Drain);
        assert_eq!(s.poll_payload().unwrap(), [Frame::close()]);

        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        s.push(Frame::message_text("x")).unwrap();
        assert_eq!(s.close(&CloseCause::new(TransportClose, ""), t0), CloseMode::Drain);
        assert_eq!(s.poll_payload().unwrap(), [Frame::noop()]);

        let mut s = Session::new(TransportKind::Polling, limits(), t0);
        s.push(Frame::message_text("x")).unwrap();
        assert_eq!(s.close(&CloseCause::new(ParseError, ""), t0), CloseMode::Now);
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn handshake_has_exactly_the_five_keys() {
        let json = handshake_json("abc", &["websocket"], &limits(), 1_000_000);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
        assert_eq!(v["pingInterval"], 300);
    }
}
