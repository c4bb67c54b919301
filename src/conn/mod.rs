//! The connection actor: one per Engine.IO session.
//!
//! A [`Connection`] owns the sans-IO [`Session`] (life cycle, heartbeat,
//! outgoing buffer), the transport it writes to (a pending polling GET, the
//! active WebSocket writer, a WebSocket being probed), and the application
//! that consumes its messages. Transports talk to it through the messages in
//! [`messages`]; it never awaits a socket: WebSocket writers have bounded
//! queues it `try_send`s into, polling GETs get a oneshot reply.
//!
//! Every handler ends in `Connection::after`, which writes what the session
//! buffered and re-arms the single timer at the session's next deadline.
//! Every end goes through [`Connection::close`].

pub mod events;
pub mod messages;
mod registry;
pub mod service;
mod socketio;

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::audit::{excerpt, sanitize, AuditEvent, AuditHandle, AuditKind, AuditReason};
use crate::engineio::payload::{body_text, decode_payload, encode_payload};
use crate::engineio::{
    packet, CloseCause, CloseMode, ErrorCode, Event, Frame, Limits, Packet, Payload, Session, State, TransportKind, Via,
};
use crate::reason::DisconnectReason;
use messages::*;
pub use registry::{Entry, Registry};
use socketio::SioState;
pub use socketio::{PublishBounds, RecoveryPolicy, SioConfig};

/// WebSocket close codes (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away.
    pub const AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (parse errors, forced closes).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later: the server is overloaded.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How long a GET is held once polling is paused for an upgrade before it
/// gets its noop. The reference server checks every 100 ms; a short hold
/// keeps upgrades fast while letting a `5` that was sent right behind
/// `2probe` complete the upgrade first, so a GET the client sent after it
/// (on another connection, racing) is refused rather than answered.
pub const PAUSED_POLL_HOLD: std::time::Duration = std::time::Duration::from_millis(25);

/// What consumes a session's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Raw Engine.IO: every message is sent back (the engine.io compliance
    /// suite's endpoint).
    Echo,
    /// Socket.IO over the session.
    SocketIo,
}

/// What every session of one endpoint shares.
pub struct EngineShared {
    /// Timing and buffer limits.
    pub limits: Arc<Limits>,
    /// `maxPayload`.
    pub max_payload: usize,
    /// Packets per polling POST.
    pub max_packets_per_payload: usize,
    /// Transports offered as upgrades in the open packet of a polling session.
    pub upgrades: Vec<&'static str>,
    /// The application of this endpoint.
    pub app: App,
    /// Socket.IO settings (for [`App::SocketIo`]).
    pub sio: Option<SioConfig>,
    /// Namespace sockets joining and leaving, when someone watches
    /// ([`crate::startup::Application::build_watched`]).
    pub events: Option<tokio::sync::broadcast::Sender<events::SocketEvent>>,
    /// Sessions by sid.
    pub registry: Registry,
    /// Where forced closes and parse errors go.
    pub audit: AuditHandle,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-address and per-connection limits, and their breaches.
    pub guards: Arc<crate::limits::Guards>,
    /// This server's tag, at the start of every sid it makes.
    pub node_tag: crate::engineio::NodeTag,
}

/// Who is on the other end, for logs and the audit log.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The client: the TCP peer, or the address a trusted proxy forwarded
    /// for (`server.trusted_proxies`).
    pub client: Option<String>,
    /// The client's address (what [`PeerInfo::client`] names).
    pub ip: Option<std::net::IpAddr>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// This session's place in its address's count of open sessions
    /// (`limits.connections_per_ip`), given back when the last clone goes.
    pub slot: Option<Arc<crate::limits::AddressSlot>>,
}

impl PeerInfo {
    /// Names this peer (its client address and user agent) in `event`.
    pub fn tag(&self, event: &mut AuditEvent) {
        event.peer.clone_from(&self.client);
        event.user_agent.clone_from(&self.user_agent);
    }
}

/// One Engine.IO session.
pub struct Connection {
    sid: Arc<str>,
    session: Session,
    shared: Arc<EngineShared>,
    peer: PeerInfo,
    /// The pending polling GET, answered when there is something to send.
    poll: Option<tokio::sync::oneshot::Sender<PollResult>>,
    /// The active WebSocket's writer (WebSocket sessions and upgraded ones).
    ws: Option<WsWriter>,
    /// A WebSocket being probed for an upgrade.
    probe: Option<WsWriter>,
    /// The armed timer and the deadline it is for, so it is only re-armed
    /// when the session's next deadline changes.
    timer: Option<(Instant, SpawnHandle)>,
    /// Why the session ended, once it did.
    closed_by: Option<DisconnectReason>,
    /// The Socket.IO layer's state ([`App::SocketIo`] endpoints).
    sio: Option<SioState>,
    /// The client stopped reading: drop the socket instead of closing it.
    abort_transport: bool,
    /// Broadcast frames wait for a timer to be written (coalescing).
    flush_scheduled: bool,
    /// Messages and bytes per second from the client (`[limits]`).
    rate: crate::limits::ConnectionRate,
    /// Audit rows this connection caused while open, and those held back.
    audit_rows: crate::limits::ClientRows,
    span: tracing::Span,
}

impl Connection {
    /// Starts a session on `transport` and registers it. A WebSocket session
    /// gets its open packet as the first frame, and reads its socket
    /// through `reader` itself; for polling the caller answers the
    /// handshake GET with [`Connection::open_packet`].
    pub fn start(
        shared: Arc<EngineShared>,
        transport: TransportKind,
        mut ws: Option<WsWriter>,
        reader: Option<impl futures_util::Stream<Item = WsRead> + 'static>,
        peer: PeerInfo,
    ) -> (Arc<str>, Addr<Connection>) {
        let sid: Arc<str> = shared.node_tag.sid().into();
        // A debug span: at the default level (`info`) a span per session
        // cost 0.5 KiB of every idle session and a log line per handshake;
        // the close is logged with the session's fields instead.
        let span = tracing::debug_span!(
            "conn",
            sid = %sid,
            transport = transport.as_str(),
            peer = peer.client.as_deref().unwrap_or_default(),
        );
        let session = Session::new(transport, shared.limits.clone(), Instant::now());
        // A WebSocket session's open packet goes straight to its socket's
        // sink, not through the session's buffer (which the actor flushes
        // once it runs): queued before the 101 is written, it leaves with
        // it in one write (`transport::handover`).
        if let Some(ws) = ws.as_mut() {
            let open = Self::open_packet(&shared, &sid, transport);
            shared.metrics.bytes_out.inc_by(open.len() as u64);
            // A new sink takes its first frame (and a failed one is
            // reported by the socket's reader).
            let _ = ws.sink.write(open);
        }
        let conn = Connection {
            sid: sid.clone(),
            session,
            shared: shared.clone(),
            peer,
            poll: None,
            ws,
            probe: None,
            timer: None,
            closed_by: None,
            sio: shared.sio.as_ref().map(|c| SioState::new(c, &shared.guards.input)),
            abort_transport: false,
            flush_scheduled: false,
            rate: crate::limits::ConnectionRate::new(&shared.guards.rate, Instant::now()),
            audit_rows: Default::default(),
            span,
        };
        let addr = Connection::create(|ctx| {
            if let Some(reader) = reader {
                ctx.add_stream(reader);
            }
            conn
        });
        shared.registry.insert(sid.clone(), addr.clone());
        shared.metrics.session_opened(transport.as_str());
        (sid, addr)
    }

    /// The open packet (spec "Handshake") for a session on `transport`.
    pub fn open_packet(shared: &EngineShared, sid: &str, transport: TransportKind) -> Frame {
        let upgrades: &[&str] = match transport {
            TransportKind::Polling => &shared.upgrades,
            TransportKind::WebSocket => &[],
        };
        Frame::open(&crate::engineio::session::handshake_json(
            sid,
            upgrades,
            &shared.limits,
            shared.max_payload,
        ))
    }

    /// Runs the session's timers that are already due, so an input that
    /// arrives just after a deadline sees the state the deadline led to,
    /// whether or not the timer task has run yet.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while self.session.is_live() && self.session.next_deadline().is_some_and(|d| d <= now) {
            match self.session.poll_timers(now) {
                Ok(Some(event)) => self.on_event(event, ctx),
                Ok(None) => {}
                Err(cause) => self.close(cause, None, ctx),
            }
        }
    }

    /// Feeds one packet to the session and acts on what it says.
    fn receive(&mut self, via: Via, packet: Packet, ctx: &mut Context<Self>) {
        match self.session.on_packet(via, packet, Instant::now()) {
            Ok(Some(event)) => self.on_event(event, ctx),
            Ok(None) => {}
            Err(cause) => self.close(cause, None, ctx),
        }
    }

    fn on_event(&mut self, event: Event, ctx: &mut Context<Self>) {
        match event {
            Event::Message(payload) => self.on_message(payload, ctx),
            Event::ProbeAnswered => {
                if let Some(probe) = &mut self.probe {
                    let _ = probe.sink.write(Frame::pong_probe());
                }
                // Spec "Upgrade": a pending GET ends with a noop, so the
                // client can pause polling. Polling is read-only from now on.
                if self.poll.is_some() {
                    self.hold_paused_poll(ctx);
                }
            }
            Event::Upgraded => {
                // A paused client has no GET out; one still pending came
                // after the upgrade and is refused. What is buffered goes
                // out on the WebSocket, in order, from `after`.
                if let Some(reply) = self.poll.take() {
                    refuse_after_websocket(reply, ctx);
                }
                self.ws = self.probe.take();
                self.shared.metrics.session_upgraded();
                self.span.record("transport", TransportKind::WebSocket.as_str());
                self.sio_transport_changed(TransportKind::WebSocket.as_str());
                tracing::debug!(parent: &self.span, "upgraded to websocket");
            }
            Event::UpgradeAborted => {
                if let Some(probe) = self.probe.take() {
                    probe.sink.close(close_code::NORMAL);
                }
                tracing::debug!(parent: &self.span, "upgrade abandoned");
            }
            Event::PingQueued => {}
        }
    }

    /// The application's turn.
    fn on_message(&mut self, payload: Payload, ctx: &mut Context<Self>) {
        self.shared.metrics.events_in.inc();
        let len = match &payload {
            Payload::Text(text) => text.len(),
            Payload::Binary(bytes) => bytes.len(),
        };
        if let Err(limit) = self.rate.admit(&self.shared.guards.rate, len, Instant::now()) {
            self.over_rate(limit, ctx);
            if !self.session.is_live() || self.shared.app == App::Echo {
                return; // refused: the echo endpoint drops it
            }
            // The Socket.IO layer still decodes it (attachments must stay
            // in step) and refuses the packet it completes.
            if let Some(sio) = self.sio.as_mut() {
                sio.refused_by = Some(limit);
            }
        }
        match self.shared.app {
            App::Echo => {
                let frame = match payload {
                    Payload::Text(text) => Frame::message_text(&text),
                    Payload::Binary(bytes) => Frame::message_binary(bytes),
                };
                self.send(frame, ctx);
            }
            App::SocketIo => self.sio_message(payload, ctx),
        }
    }

    /// A message over the connection's rate: counted (the first refusal
    /// since the client was last quiet is audited), and past
    /// `limits.refused_before_close` refusals the connection is closed.
    fn over_rate(&mut self, limit: crate::limits::Limit, ctx: &mut Context<Self>) {
        let guards = self.shared.guards.clone();
        let refused = self.rate.refused;
        let allowed = match limit {
            crate::limits::Limit::ByteRate => format!("{} bytes", guards.settings().bytes_per_second),
            _ => format!("{} messages", guards.settings().packets_per_second),
        };
        if refused == 1 {
            let detail = format!("client sends more than {allowed} per second: messages refused");
            let mut rows = self.audit_rows;
            guards.connection_breach(limit, &mut rows, || {
                self.audit_event(crate::audit::AuditKind::LimitExceeded, limit.reason(), detail, None)
            });
            self.audit_rows = rows;
        } else {
            self.shared.metrics.limit_breach(limit.as_str());
        }
        if refused > guards.rate.refused_before_close {
            let cause = CloseCause::new(
                DisconnectReason::ForcedClose,
                format!("rate limit: {refused} messages refused (more than {allowed} per second)"),
            );
            self.close(cause, None, ctx);
        }
    }

    /// Queues a frame for the client; a full buffer closes the session as a
    /// slow consumer.
    pub fn send(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        self.shared.metrics.events_out.inc();
        if let Err(cause) = self.session.push(frame) {
            self.close(cause, None, ctx);
        }
    }

    /// Writes what is buffered, stops a closed session, re-arms the timer.
    fn after(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
        if self.session.state() == State::Closed {
            ctx.stop();
            return;
        }
        self.arm_timer(ctx);
    }

    /// The WebSocket the broker may write this session's broadcasts to
    /// itself: only the active socket of a session that is not upgrading,
    /// with nothing left in the session's buffer (what the broker writes
    /// would otherwise overtake it).
    fn direct_sink(&self) -> Option<Arc<dyn crate::broker::DirectSink>> {
        let ready = self.session.transport() == TransportKind::WebSocket
            && self.probe.is_none()
            && self.session.is_live()
            && !self.session.has_buffered();
        ready.then(|| self.ws.as_ref()?.sink.direct()).flatten()
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        match self.session.transport() {
            TransportKind::WebSocket => {
                let Some(ws) = &mut self.ws else { return };
                let mut slow = false;
                for frame in self.session.take_buffered() {
                    self.shared.metrics.bytes_out.inc_by(frame.len() as u64);
                    match ws.sink.write(frame) {
                        Ok(()) => {}
                        Err(SinkError::Full) => {
                            slow = true;
                            break;
                        }
                        // The socket is gone; its read side reports the end.
                        Err(SinkError::Closed) => break,
                    }
                }
                if slow {
                    let cause = CloseCause::new(
                        DisconnectReason::ForcedClose,
                        "slow consumer: websocket write queue full",
                    );
                    self.abort_transport = true;
                    self.shared.metrics.slow_consumers.inc();
                    self.close(cause, None, ctx);
                }
            }
            TransportKind::Polling => self.flush_poll(),
        }
    }

    /// Answers the pending GET with what is buffered (or with the last
    /// frame of a closing session). While polling is read-only (upgrade
    /// probed) nothing but the noop from [`Connection::hold_paused_poll`]
    /// goes out on it.
    fn flush_poll(&mut self) {
        if self.session.polling_paused() {
            return;
        }
        let Some(reply) = self.poll.take() else { return };
        if reply.is_closed() {
            return; // the client gave up on that GET; data stays buffered
        }
        let Some(frames) = self.session.poll_payload() else {
            self.poll = Some(reply);
            return;
        };
        tracing::debug!(parent: &self.span, frames = frames.len(), "poll answered with data");
        let body = encode_payload(&frames);
        self.shared.metrics.bytes_out.inc_by(body.len() as u64);
        if let Err(Ok(_)) = reply.send(Ok(body)) {
            // The GET went away between the check and the send: keep order.
            if self.session.is_live() {
                self.session.unshift(frames);
            }
        }
    }

    /// Ends the pending GET with a noop after [`PAUSED_POLL_HOLD`] if polling
    /// is still paused then; if the upgrade completed first, the GET was
    /// refused (the session left polling).
    fn hold_paused_poll(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(PAUSED_POLL_HOLD, |act, _| {
            if act.session.polling_paused() {
                act.answer_poll(Ok(encode_payload(&[Frame::noop()])));
            }
        });
    }

    fn answer_poll(&mut self, result: PollResult) {
        if let Some(reply) = self.poll.take() {
            tracing::debug!(parent: &self.span, ?result, "poll answered");
            let _ = reply.send(result);
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let next = self.session.next_deadline();
        if next == self.timer.as_ref().map(|t| t.0) {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.on_timer(ctx);
            });
            self.timer = Some((at, handle));
        }
    }

    fn on_timer(&mut self, ctx: &mut Context<Self>) {
        let _enter = self.span.clone().entered();
        self.catch_up(ctx);
        self.after(ctx);
    }

    /// The one close path. Idempotent; tears down in this order:
    /// 1. the transport: a pending GET gets the close packet, or on polling
    ///    what [`Session::close`] left for the last GET (buffered data and
    ///    the close packet, or a noop after the client's own close); the
    ///    WebSocket gets a close frame after what is already queued; a probe
    ///    is closed;
    /// 2. the application learns the reason;
    /// 3. the audit row: server-initiated closes and parse errors always,
    ///    other disconnects with `audit.record_disconnects` (its namespace
    ///    sockets and user are noted before step 2 removes them);
    /// 4. the log line.
    ///
    /// The registry entry goes in `stopped`, once no GET can still drain it.
    pub fn close(&mut self, cause: CloseCause, input: Option<&[u8]>, ctx: &mut Context<Self>) {
        self.close_with_code(cause, input, None, ctx)
    }

    fn close_with_code(
        &mut self,
        cause: CloseCause,
        input: Option<&[u8]>,
        ws_code: Option<u16>,
        ctx: &mut Context<Self>,
    ) {
        if !self.session.is_live() || self.closed_by.is_some() {
            return;
        }
        let reason = cause.reason;
        self.closed_by = Some(reason);
        let transport = self.session.transport();
        self.shared.metrics.session_closed(transport.as_str(), reason.as_str());
        // A server-decided close delivers what was accepted for the client
        // first; on WebSocket that means moving it to the socket now.
        if reason.drains_first() && transport == TransportKind::WebSocket && !self.abort_transport {
            self.flush(ctx);
        }
        // 1. transport
        match self.session.close(&cause, Instant::now()) {
            CloseMode::Now => self.answer_poll(Ok(encode_payload(&[Frame::close()]))),
            CloseMode::Drain => self.flush_poll(),
        }
        let code = ws_code.unwrap_or(match reason {
            DisconnectReason::ServerShuttingDown => close_code::AWAY,
            DisconnectReason::ParseError | DisconnectReason::ForcedClose => close_code::POLICY,
            DisconnectReason::TransportError => close_code::PROTOCOL,
            _ => close_code::NORMAL,
        });
        for writer in [self.ws.take(), self.probe.take()].into_iter().flatten() {
            if self.abort_transport {
                writer.sink.abort();
            } else {
                writer.sink.close(code);
            }
        }
        // (who the audit row is about, before the namespace sockets go)
        let kind = AuditKind::of_close(reason);
        let audit = self.shared.audit.records(kind).then(|| {
            let mut event = self.audit_event(kind, reason, cause.detail.clone(), None);
            event.excerpt = input.map(excerpt);
            event
        });
        let held_back = self
            .shared
            .guards
            .held_back_event(&self.audit_rows)
            .map(|summary| self.audit_event(summary.kind, summary.reason, summary.detail, None));
        // 2. application: every namespace socket ends with this reason.
        self.sio_closed(reason);
        // 3. audit (and the count of the rows this connection caused that
        //    were held back while it was open)
        if let Some(event) = audit {
            self.shared.audit.record(event);
        }
        if let Some(event) = held_back {
            self.shared.audit.record(event);
        }
        // 4. log (the detail may quote the client: escaped)
        let detail = sanitize(&cause.detail, crate::audit::DETAIL_BYTES);
        let (sid, transport) = (&*self.sid, self.session.transport().as_str());
        let peer = self.peer.client.as_deref().unwrap_or_default();
        if matches!(reason, DisconnectReason::ForcedClose | DisconnectReason::ParseError) {
            tracing::warn!(parent: None, sid, transport, peer, reason = reason.as_str(), "session closed: {detail}");
        } else {
            tracing::info!(parent: None, sid, transport, peer, reason = reason.as_str(), "session closed: {detail}");
        }
    }

    /// An audit event about this session: what the connection knows (sid,
    /// transport, client, user agent) and the namespace sockets concerned
    /// (`nsp`, or all of them).
    fn audit_event(
        &self,
        kind: AuditKind,
        reason: impl Into<AuditReason>,
        detail: String,
        nsp: Option<&str>,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(kind, reason, detail);
        event.sid = Some(self.sid.to_string());
        event.transport = Some(self.session.transport().as_str());
        self.peer.tag(&mut event);
        self.sio_scope(&mut event, nsp);
        event
    }
}

/// Refuses a polling GET of a session that moved to WebSocket. The refusal
/// waits [`PAUSED_POLL_HOLD`] so that frames already written on the
/// WebSocket (the `3probe`) reach the client before this answer does: the
/// two travel on different connections, written by different workers.
fn refuse_after_websocket(reply: tokio::sync::oneshot::Sender<PollResult>, ctx: &mut Context<Connection>) {
    ctx.run_later(PAUSED_POLL_HOLD, move |_, _| {
        let _ = reply.send(Err(ErrorCode::BadRequest));
    });
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Transports and the broker `try_send` (and transports wait when
        // it is full); the broker drops (and counts) a delivery it finds
        // the mailbox full for.
        ctx.set_mailbox_capacity(self.shared.limits.max_buffered);
        tracing::debug!(parent: &self.span, "session opened");
        if self.sio.is_some() {
            self.sio_started(ctx);
        }
        self.after(ctx);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Stopped from outside (the worker's arbiter is shutting down).
        if self.session.is_live() {
            let cause = CloseCause::new(DisconnectReason::ServerShuttingDown, "server stopped");
            self.close(cause, None, ctx);
        }
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.registry.remove(&self.sid);
        self.answer_poll(Err(ErrorCode::UnknownSid));
    }
}

impl Handler<PollGet> for Connection {
    type Result = ();

    fn handle(&mut self, msg: PollGet, ctx: &mut Self::Context) {
        let _enter = self.span.clone().entered();
        self.catch_up(ctx);
        if self.session.transport() != TransportKind::Polling {
            refuse_after_websocket(msg.reply, ctx);
            return;
        }
        if self.session.state() == State::Closed {
            let _ = msg.reply.send(Err(ErrorCode::UnknownSid));
            return;
        }
        if self.poll.as_ref().is_some_and(|p| !p.is_closed()) {
            // Spec: more than one active GET is an error that closes the session.
            let _ = msg.reply.send(Err(ErrorCode::BadRequest));
            let cause = CloseCause::new(DisconnectReason::TransportError, "overlapping polling GET");
            self.close(cause, None, ctx);
        } else {
            self.poll = Some(msg.reply);
            if self.session.polling_paused() {
                self.hold_paused_poll(ctx);
            }
        }
        self.after(ctx);
    }
}

impl Handler<PollPost> for Connection {
    type Result = Result<(), ErrorCode>;

    fn handle(&mut self, msg: PollPost, ctx: &mut Self::Context) -> Self::Result {
        let _enter = self.span.clone().entered();
        self.catch_up(ctx);
        if self.session.transport() != TransportKind::Polling {
            return Err(ErrorCode::BadRequest);
        }
        if !self.session.is_live() {
            return Err(ErrorCode::UnknownSid);
        }
        self.shared.metrics.bytes_in.inc_by(msg.body.len() as u64);
        let decoded =
            body_text(msg.body.clone()).and_then(|text| decode_payload(&text, self.shared.max_packets_per_payload));
        let result = match decoded {
            Err(err) => {
                if matches!(err, packet::DecodeError::TooManyPackets(_)) {
                    let limit = crate::limits::Limit::PacketsPerPayload;
                    self.shared.metrics.limit_breach(limit.as_str());
                }
                let cause = CloseCause::new(DisconnectReason::ParseError, err.to_string());
                self.close(cause, Some(&msg.body), ctx);
                Err(ErrorCode::BadRequest)
            }
            Ok(packets) => {
                for packet in packets {
                    self.receive(Via::Active, packet, ctx);
                    if !self.session.is_live() {
                        break;
                    }
                }
                // The body was accepted unless it was itself the problem: a
                // close it caused (the client's close packet, a forced close
                // by the application) still answers "ok", as the reference
                // server does.
                match self.closed_by {
                    Some(DisconnectReason::ParseError) => Err(ErrorCode::BadRequest),
                    _ => Ok(()),
                }
            }
        };
        self.after(ctx);
        result
    }
}

impl Handler<AttachProbe> for Connection {
    type Result = Result<(), ErrorCode>;

    fn handle(&mut self, msg: AttachProbe, ctx: &mut Self::Context) -> Self::Result {
        let _enter = self.span.clone().entered();
        self.catch_up(ctx);
        // Refused: a WebSocket session, an upgrade under way, a closing one.
        if !self.session.begin_upgrade(Instant::now()) {
            msg.writer.sink.close(close_code::POLICY);
            return Err(ErrorCode::BadRequest);
        }
        self.probe = Some(msg.writer);
        self.after(ctx);
        Ok(())
    }
}

/// The session's own WebSocket, read by the actor itself (see
/// [`WsRead`]): the same as the messages a probe's read pump sends.
impl StreamHandler<WsRead> for Connection {
    fn handle(&mut self, read: WsRead, ctx: &mut Self::Context) {
        match read {
            WsRead::Message(msg) => <Self as Handler<WsInbound>>::handle(self, msg, ctx),
            WsRead::End(ended) => <Self as Handler<WsEnded>>::handle(self, ended, ctx),
        }
    }

    /// The end was told (`WsRead::End`); the session's life is not the
    /// socket's (it closes with its reason from there).
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<WsInbound> for Connection {
    type Result = ();

    fn handle(&mut self, msg: WsInbound, ctx: &mut Self::Context) {
        let _enter = self.span.clone().entered();
        self.catch_up(ctx);
        let via = if self.ws.as_ref().is_some_and(|w| w.id == msg.id) {
            Via::Active
        } else if self.probe.as_ref().is_some_and(|w| w.id == msg.id) {
            Via::Probe
        } else {
            return; // a socket this session already let go of
        };
        let size = match &msg.message {
            WsMessage::Text(t) => t.len(),
            WsMessage::Binary(b) | WsMessage::Ping(b) => b.len(),
        };
        self.shared.metrics.bytes_in.inc_by(size as u64);
        let writer = if via == Via::Active { &self.ws } else { &self.probe };
        if let (Some(held), false) = (
            writer.as_ref().and_then(|w| w.held.as_ref()),
            matches!(msg.message, WsMessage::Ping(_)),
        ) {
            held.shrink(size);
        }
        let packet = match msg.message {
            WsMessage::Ping(payload) => {
                let writer = if via == Via::Active {
                    &mut self.ws
                } else {
                    &mut self.probe
                };
                if let Some(writer) = writer {
                    writer.sink.pong(payload);
                }
                return;
            }
            WsMessage::Binary(bytes) => packet::decode_binary(bytes),
            WsMessage::Text(text) => match packet::decode_text(&text, false) {
                Ok(packet) => packet,
                Err(err) if via == Via::Active => {
                    let cause = CloseCause::new(DisconnectReason::ParseError, err.to_string());
                    self.close(cause, Some(text.as_bytes()), ctx);
                    self.after(ctx);
                    return;
                }
                // Garbage on a probe abandons the upgrade, not the session.
                Err(_) => Packet::Noop,
            },
        };
        self.receive(via, packet, ctx);
        self.after(ctx);
    }
}

impl Handler<WsEnded> for Connection {
    type Result = ();

    fn handle(&mut self, msg: WsEnded, ctx: &mut Self::Context) {
        let _enter = self.span.clone().entered();
        if self.probe.as_ref().is_some_and(|w| w.id == msg.id) {
            self.probe = None;
            self.session.probe_closed();
        } else if self.ws.as_ref().is_some_and(|w| w.id == msg.id) {
            use DisconnectReason::*;
            if msg.end == WsEnd::TooLarge {
                self.shared
                    .metrics
                    .limit_breach(crate::limits::Limit::MaxPayload.as_str());
            }
            let (reason, code, detail) = match &msg.end {
                WsEnd::Closed => (TransportClose, None, "websocket closed by the client".to_string()),
                WsEnd::TooLarge => (
                    ForcedClose,
                    Some(close_code::TOO_BIG),
                    format!("websocket message above maxPayload ({} bytes)", self.shared.max_payload),
                ),
                WsEnd::InvalidUtf8 => (
                    ParseError,
                    Some(close_code::INVALID_DATA),
                    "websocket text message is not UTF-8".to_string(),
                ),
                WsEnd::MessageTimeout => {
                    self.shared
                        .metrics
                        .limit_breach(crate::limits::Limit::MessageTimeout.as_str());
                    (
                        ForcedClose,
                        Some(close_code::POLICY),
                        "websocket message not complete within websocket.message_timeout_ms".to_string(),
                    )
                }
                WsEnd::WriteTimeout => {
                    self.shared
                        .metrics
                        .limit_breach(crate::limits::Limit::WriteTimeout.as_str());
                    self.shared.metrics.slow_consumers.inc();
                    self.abort_transport = true;
                    (
                        ForcedClose,
                        None,
                        "slow consumer: the client read nothing within websocket.write_timeout_ms".to_string(),
                    )
                }
                WsEnd::QueueFull => {
                    self.shared.metrics.slow_consumers.inc();
                    self.abort_transport = true;
                    (
                        ForcedClose,
                        None,
                        "slow consumer: websocket write queue full".to_string(),
                    )
                }
                WsEnd::OverBudget => {
                    self.shared
                        .metrics
                        .limit_breach(crate::limits::Limit::InputBudget.as_str());
                    (
                        ForcedClose,
                        Some(close_code::TRY_AGAIN_LATER),
                        format!(
                            "websocket message refused: the node holds limits.input_budget_bytes ({}) of incomplete input",
                            self.shared.guards.settings().input_budget_bytes
                        ),
                    )
                }
                WsEnd::Error(e) => (TransportError, None, format!("websocket error: {e}")),
            };
            self.close_with_code(CloseCause::new(reason, detail), None, code, ctx);
        }
        self.after(ctx);
    }
}

impl Handler<CloseSession> for Connection {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        let _enter = self.span.clone().entered();
        self.close(msg.0, None, ctx);
        self.after(ctx);
    }
}
