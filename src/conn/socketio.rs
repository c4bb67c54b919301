//! The Socket.IO layer of a connection: namespaces multiplexed over the
//! Engine.IO session, CONNECT with its hook, events, acks both ways, binary
//! attachments, the connect timeout, and namespace-level disconnects.
//!
//! The packet rules live in [`crate::socketio`] (pure); this module applies
//! them to one connection's state and writes through [`Connection::send`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::events::SocketEvent;
use super::service::{Admitted, ServerNamespace, SocketDetails, SocketObserver};
use super::Connection;
use crate::audit::{excerpt, AuditEvent, AuditKind, AuditReason};
use crate::auth::{Identity, Verifier};
use crate::broker::{Deliver, Evict, JoinError, Leave, Publish, Recoverable, Register, Resume, Subscribe, Unregister};
use crate::cluster::{Cluster, Published};
use crate::engineio::{CloseCause, Frame, Payload};
use crate::reason::DisconnectReason;
use crate::socketio::packet::{encode, encode_event, encode_raw};
use crate::socketio::{Data, DecodeLimits, Decoder, Message, PacketType};
use futures_util::future::{FutureExt as _, LocalBoxFuture};

/// What a connection does with the broker's answer to one of its publishes.
pub(super) type PublishAnswer = Box<dyn FnOnce(PublishResult, &mut Connection, &mut Context<Connection>)>;

/// What became of a publish.
pub(super) type PublishResult = Result<Published, crate::cluster::Unavailable>;

/// A publish sent to the broker, and what to do with its answer.
pub(super) type PendingPublish = (LocalBoxFuture<'static, PublishResult>, PublishAnswer);

/// The answer to a publish, in the order the connection sent them.
pub(super) struct PublishAnswered(PublishResult, PublishAnswer);

impl StreamHandler<PublishAnswered> for Connection {
    fn handle(&mut self, PublishAnswered(result, answer): PublishAnswered, ctx: &mut Context<Self>) {
        answer(result, self, ctx);
    }

    /// The stream ends only with the connection (which holds its sender).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// Socket.IO settings of an endpoint.
#[derive(Clone)]
pub struct SioConfig {
    /// Namespaces clients may join.
    pub namespaces: Vec<String>,
    /// Time to join a first namespace.
    pub connect_timeout: Duration,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// Time a client has to ack a server event.
    pub ack_timeout: Duration,
    /// The `[testing]` hooks.
    pub hooks: bool,
    /// Checks CONNECT payloads.
    pub verifier: Verifier,
    /// This node's broker and the other nodes.
    pub cluster: Cluster,
    /// Longest room name.
    pub max_room_len: usize,
    /// Members listed by presence.
    pub presence_limit: usize,
    /// How long a broadcast may wait for more to write with it.
    pub coalesce: Duration,
    /// Namespaces one connection may be in at once.
    pub max_namespaces: usize,
    /// Connection state recovery.
    pub recovery: RecoveryPolicy,
    /// A namespace served by someone else (the Admin UI's), on this
    /// endpoint only (see [`super::service`]).
    pub server_namespace: Option<Arc<dyn ServerNamespace>>,
    /// Watches sockets connecting, disconnecting and sending events.
    pub observer: Option<Arc<dyn SocketObserver>>,
    /// Publishes one connection may have waiting on the broker at once, and
    /// their encoded bytes (`limits.publish_window`, `_bytes`). Past either
    /// bound the connection stops taking packets until the broker answers,
    /// so TCP pushes back on a publisher the broker cannot keep up with.
    /// The answer comes back through two event loops, which can take tens
    /// of milliseconds on a busy machine: the window must cover that round
    /// trip at a publisher's rate without letting a backlog build
    /// (docs/benchmarks.md has the measurements behind the default 256).
    pub publish_window: PublishBounds,
}

/// The bounds of a connection's publish window.
#[derive(Debug, Clone, Copy)]
pub struct PublishBounds {
    /// Publishes.
    pub count: usize,
    /// Their encoded bytes (the publish that crosses it still goes).
    pub bytes: usize,
}

/// A namespace socket on this connection.
struct NsSocket {
    id: Arc<str>,
    identity: Identity,
}

/// A connection's namespace sockets by namespace: a short list (at most
/// `socketio.max_namespaces`, most often one) searched in order. A hash map
/// held room for four of them on every connection, 0.3 KiB per idle
/// session more than the one it has.
#[derive(Default)]
struct Sockets(Vec<(Arc<str>, NsSocket)>);

impl Sockets {
    fn position(&self, nsp: &str) -> Option<usize> {
        self.0.iter().position(|(n, _)| &**n == nsp)
    }

    fn get(&self, nsp: &str) -> Option<&NsSocket> {
        self.get_key_value(nsp).map(|(_, s)| s)
    }

    fn get_key_value(&self, nsp: &str) -> Option<(&Arc<str>, &NsSocket)> {
        self.position(nsp).map(|i| (&self.0[i].0, &self.0[i].1))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &NsSocket)> {
        self.0.iter().map(|(n, s)| (n, s))
    }

    /// Adds or replaces the socket of `nsp`.
    fn insert(&mut self, nsp: Arc<str>, socket: NsSocket) {
        match self.position(&nsp) {
            Some(i) => self.0[i].1 = socket,
            None => {
                // One more, not the four a first push reserves.
                self.0.reserve_exact(1);
                self.0.push((nsp, socket));
            }
        }
    }

    fn remove_entry(&mut self, nsp: &str) -> Option<(Arc<str>, NsSocket)> {
        let i = self.position(nsp)?;
        Some(self.0.swap_remove(i))
    }

    fn drain(&mut self) -> impl Iterator<Item = (Arc<str>, NsSocket)> + '_ {
        self.0.drain(..)
    }
}

/// What a client coming back asks for: its `pid`, and the `offset` of the
/// last event it got (`Err`: one that is not an offset).
struct Comeback {
    pid: Arc<str>,
    offset: Result<Option<crate::adapter::Offset>, ()>,
}

/// Members of a CONNECT payload the audit log never shows: a recovery's
/// private session id (which lets whoever holds it take the socket's
/// place), and the Admin UI's password and session id (which let whoever
/// holds them in).
const SECRET_MEMBERS: [&str; 3] = ["pid", "password", "sessionId"];

/// A CONNECT payload as the audit log keeps it: its [`SECRET_MEMBERS`]
/// replaced by `"[redacted]"`. A payload that mentions one and does not
/// parse as an object is not kept at all.
fn without_secrets(auth: &str) -> std::borrow::Cow<'_, str> {
    if !SECRET_MEMBERS.iter().any(|m| auth.contains(&format!("\"{m}\""))) {
        return auth.into();
    }
    match serde_json::from_str::<serde_json::Map<String, Value>>(auth) {
        Ok(mut map) => {
            for member in SECRET_MEMBERS {
                if let Some(v) = map.get_mut(member) {
                    *v = json!("[redacted]");
                }
            }
            Value::Object(map).to_string().into()
        }
        _ => "[not kept: it names a secret]".into(),
    }
}

/// Connection state recovery as a connection sees it.
#[derive(Debug, Clone, Default)]
pub struct RecoveryPolicy {
    /// Recovering namespaces (none: recovery is off).
    pub namespaces: Vec<String>,
    /// A recovering client's token is verified again.
    pub verify_token: bool,
    /// Most frames a replay may hold: what the connection may buffer,
    /// less room for what it writes itself.
    pub max_frames: usize,
}

/// What to do when the client acks (or does not ack) a server event.
type AckHandler = Box<dyn FnOnce(&mut Connection, &mut Context<Connection>, Option<Message>)>;

/// A server event waiting for the client's ack.
struct PendingAck {
    nsp: Arc<str>,
    timer: SpawnHandle,
    handler: AckHandler,
}

/// The Socket.IO state of one connection (the Engine.IO state is the
/// [`Connection`]'s own).
pub struct SioState {
    decoder: Decoder,
    sockets: Sockets,
    /// A namespace was joined at least once (the connect timeout is over).
    joined: bool,
    next_ack_id: u64,
    acks: HashMap<u64, PendingAck>,
    /// The limit the message under way (a packet and its attachments) went
    /// over: it is refused when it completes.
    pub(super) refused_by: Option<crate::limits::Limit>,
    /// The attachments of the packet under way, in the node's input budget.
    attachments_held: crate::limits::Held,
    /// Ends the connection if the packet under way is not complete within
    /// `limits.attachment_timeout_ms`.
    attachment_timer: Option<SpawnHandle>,
    /// Publishes waiting on the broker.
    window: PublishWindow,
}

/// The publishes a connection has sent to the broker whose answer has not
/// come back (bounded by [`SioConfig::publish_window`]).
#[derive(Default)]
struct PublishWindow {
    count: usize,
    bytes: usize,
    /// Their answers' queue, awaited in order (made by the first publish).
    answers: Option<tokio::sync::mpsc::UnboundedSender<PendingPublish>>,
}

impl PublishWindow {
    /// Counts a publish of `size` bytes in; whether the window still has
    /// room with it.
    fn open(&mut self, size: usize, bounds: PublishBounds) -> bool {
        self.count += 1;
        self.bytes += size;
        self.count <= bounds.count && self.bytes <= bounds.bytes
    }

    /// The answer to a publish of `size` bytes came back.
    fn close(&mut self, size: usize) {
        self.count -= 1;
        self.bytes -= size;
    }
}

impl SioState {
    /// Fresh state for a new connection, holding its attachments in `input`.
    pub fn new(config: &SioConfig, input: &Arc<crate::limits::InputBudget>) -> Self {
        Self {
            decoder: Decoder::new(config.limits),
            sockets: Sockets::default(),
            joined: false,
            next_ack_id: 0,
            acks: HashMap::new(),
            refused_by: None,
            attachments_held: crate::limits::Held::new(input.clone()),
            attachment_timer: None,
            window: PublishWindow::default(),
        }
    }
}

/// One `subscribe`, `unsubscribe`, `presence` or `publish` of a namespace
/// socket, its room checked.
struct AppRequest {
    nsp: Arc<str>,
    ack: Option<u64>,
    socket_id: Arc<str>,
    room: Arc<str>,
}

/// The object argument of `subscribe`, `unsubscribe`, `presence` and
/// `publish`, read from its text: `room` and `event` when they are strings,
/// `data` as written (`null` included), other members skipped unread (a
/// repeated member: the last one, as `JSON.parse`).
struct AppArg<'a> {
    room: Option<String>,
    event: Option<String>,
    data: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for AppArg<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::socketio::packet::{KeySeed, MemberKey};
        use serde::de::{IgnoredAny, MapAccess, Visitor};

        /// A member's name (read as bytes, so that any key is taken).
        enum Field {
            Room,
            Event,
            Data,
            Other,
        }
        impl MemberKey for Field {
            fn of(key: &[u8]) -> Self {
                match key {
                    b"room" => Field::Room,
                    b"event" => Field::Event,
                    b"data" => Field::Data,
                    _ => Field::Other,
                }
            }
        }

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AppArg<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let string = |raw: &RawValue| serde_json::from_str::<String>(raw.get()).ok();
                let mut arg = AppArg {
                    room: None,
                    event: None,
                    data: None,
                };
                while let Some(field) = map.next_key_seed(KeySeed::<Field>::new())? {
                    match field {
                        Field::Room => arg.room = string(map.next_value()?),
                        Field::Event => arg.event = string(map.next_value()?),
                        Field::Data => arg.data = Some(map.next_value()?),
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(arg)
            }
        }
        d.deserialize_map(V)
    }
}

/// Why a CONNECT was refused.
struct Refusal {
    /// Stable code (`CONNECT_ERROR.data.code`).
    code: &'static str,
    message: String,
    data: Option<Value>,
}

impl Connection {
    fn sio_config(&self) -> &SioConfig {
        // unwrap: only called on connections of a Socket.IO endpoint.
        self.shared.sio.as_ref().unwrap()
    }

    /// Arms the connect timeout.
    pub(super) fn sio_started(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.sio_config().connect_timeout;
        ctx.run_later(timeout, move |act, ctx| {
            if act.sio.as_ref().is_some_and(|s| !s.joined) {
                let cause = CloseCause::new(
                    DisconnectReason::ForcedClose,
                    format!("no namespace joined within connectTimeout ({} ms)", timeout.as_millis()),
                );
                act.close(cause, None, ctx);
                act.after(ctx);
            }
        });
    }

    /// An Engine.IO message for the Socket.IO layer.
    pub(super) fn sio_message(&mut self, payload: Payload, ctx: &mut Context<Self>) {
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        // A packet a rate limit refused is still decoded, so that its
        // attachments stay in step, but none of its bytes are held.
        let refused = state.refused_by.is_some();
        let result = match &payload {
            Payload::Text(text) => state.decoder.text(text),
            Payload::Binary(_) if refused => state.decoder.binary(Bytes::new()),
            Payload::Binary(bytes) => state.decoder.binary(bytes.clone()),
        };
        if refused {
            state.decoder.strip();
        }
        let (waiting, held) = (state.decoder.is_waiting(), state.decoder.held_bytes());
        if !self.hold_attachments(waiting, held, ctx) {
            return;
        }
        match result {
            Ok(Some(message)) => self.sio_packet(message, ctx),
            Ok(None) => {}
            Err(err) => {
                use crate::socketio::ParseError;
                if matches!(
                    err,
                    ParseError::TooManyAttachments(..) | ParseError::AttachmentsTooLarge(_)
                ) {
                    let limit = crate::limits::Limit::Attachments;
                    self.shared.metrics.limit_breach(limit.as_str());
                }
                let input = match &payload {
                    Payload::Text(text) => text.as_bytes().clone(),
                    Payload::Binary(bytes) => bytes.clone(),
                };
                self.close(
                    CloseCause::new(DisconnectReason::ParseError, err.to_string()),
                    Some(&input),
                    ctx,
                );
            }
        }
    }

    /// Accounts for the attachments the decoder holds (`held` bytes, for a
    /// packet still `waiting` for more) in the node's input budget, and
    /// times the packet: its attachments must all arrive within
    /// `limits.attachment_timeout_ms`. False: the connection was closed
    /// (over the budget).
    fn hold_attachments(&mut self, waiting: bool, held: usize, ctx: &mut Context<Self>) -> bool {
        let Some(state) = self.sio.as_mut() else { return true };
        if !waiting {
            let _ = state.attachments_held.set(0);
            if let Some(timer) = state.attachment_timer.take() {
                ctx.cancel_future(timer);
            }
            return true;
        }
        let timing = state.attachment_timer.is_some();
        if let Err(over) = state.attachments_held.set(held) {
            self.shared
                .metrics
                .limit_breach(crate::limits::Limit::InputBudget.as_str());
            let cause = CloseCause::new(
                DisconnectReason::ForcedClose,
                format!("binary attachments refused: {over} ({held} bytes held by this packet)"),
            );
            self.close(cause, None, ctx);
            return false;
        }
        let timeout = self.shared.guards.settings().attachment_timeout_ms;
        if !timing && timeout > 0 {
            let timer = ctx.run_later(Duration::from_millis(timeout), move |act, ctx| {
                if let Some(state) = act.sio.as_mut() {
                    state.attachment_timer = None;
                }
                act.shared
                    .metrics
                    .limit_breach(crate::limits::Limit::AttachmentTimeout.as_str());
                let cause = CloseCause::new(
                    DisconnectReason::ForcedClose,
                    format!("binary attachments not complete within limits.attachment_timeout_ms ({timeout} ms)"),
                );
                act.close(cause, None, ctx);
                act.after(ctx);
            });
            if let Some(state) = self.sio.as_mut() {
                state.attachment_timer = Some(timer);
            }
        }
        true
    }

    fn sio_packet(&mut self, message: Message, ctx: &mut Context<Self>) {
        let nsp = message.packet.nsp.as_str();
        if let Some(limit) = self.sio.as_mut().and_then(|s| s.refused_by.take()) {
            match message.packet.kind {
                PacketType::Event | PacketType::BinaryEvent => {
                    let why = format!("too many messages ({})", limit.as_str());
                    return self.ack_error(nsp, message.packet.id, "rate_limited", &why, ctx);
                }
                PacketType::Connect => {
                    let data = json!({"message": "Too many requests", "data": {"code": "rate_limited"}});
                    return self.emit_packet(PacketType::ConnectError, nsp, None, &data, &[], ctx);
                }
                // Acks and disconnects free state: they go through.
                _ => {}
            }
        }
        match message.packet.kind {
            PacketType::Connect => self.sio_connect(message, ctx),
            PacketType::Disconnect => {
                self.remove_socket(nsp, DisconnectReason::ClientNamespaceDisconnect);
            }
            PacketType::Event | PacketType::BinaryEvent => {
                // As the reference server: events for a namespace this
                // connection is not in (any more) are dropped.
                if self.socket_id(nsp).is_some() {
                    self.sio_event(message, ctx);
                }
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let id = message.packet.id.unwrap_or_default();
                let pending = self.sio.as_mut().and_then(|s| s.acks.remove(&id));
                match pending {
                    Some(p) if *p.nsp == *nsp => {
                        ctx.cancel_future(p.timer);
                        (p.handler)(self, ctx, Some(message));
                    }
                    Some(p) => {
                        // Not this namespace's ack: put it back.
                        if let Some(s) = self.sio.as_mut() {
                            s.acks.insert(id, p);
                        }
                    }
                    None => {} // late (timed out) or unknown: dropped
                }
            }
            // Refused by the decoder.
            PacketType::ConnectError => {}
        }
    }

    fn socket_id(&self, nsp: &str) -> Option<Arc<str>> {
        self.sio.as_ref()?.sockets.get(nsp).map(|s| s.id.clone())
    }

    fn sio_connect(&mut self, message: Message, ctx: &mut Context<Self>) {
        let nsp = message.packet.nsp;
        let served = self.served(&nsp).is_some();
        if !served && !self.sio_config().namespaces.contains(&nsp) {
            self.connect_refused(
                &nsp,
                "invalid_namespace",
                "Invalid namespace",
                message.packet.data.as_ref().map(Data::text),
            );
            self.emit_packet(
                PacketType::ConnectError,
                &nsp,
                None,
                &json!({"message": "Invalid namespace"}),
                &[],
                ctx,
            );
            return;
        }
        let joined = self.sio.as_ref().map_or(0, |s| s.sockets.len());
        if joined >= self.sio_config().max_namespaces && self.socket_id(&nsp).is_none() {
            let max = self.sio_config().max_namespaces;
            let limit = crate::limits::Limit::Namespaces;
            let guards = self.shared.guards.clone();
            let mut rows = self.audit_rows;
            guards.connection_breach(limit, &mut rows, || {
                let detail = format!("CONNECT to {nsp} refused: already in {max} namespaces");
                let mut event = self.audit_event(AuditKind::LimitExceeded, limit.reason(), detail, None);
                event.namespace = Some(nsp.clone());
                event
            });
            self.audit_rows = rows;
            let data = json!({"message": "Too many namespaces", "data": {"code": "too_many_namespaces"}});
            self.emit_packet(PacketType::ConnectError, &nsp, None, &data, &[], ctx);
            return;
        }
        // The payload as written (echoed by the testing hook), and as a value
        // for the checks (the decoder made sure it is an object serde_json
        // reads).
        let auth_text = message.packet.data.as_ref().map_or("{}", Data::text);
        let auth: Value = serde_json::from_str(auth_text).unwrap_or_else(|_| json!({}));
        if let Some(service) = self.served(&nsp) {
            return self.connect_served(nsp.into(), service, auth, auth_text.to_owned(), ctx);
        }
        let verified = self.connect_hook(&nsp, &auth);
        let comeback = self.comeback(&nsp, &auth);
        let verify_token = self.sio_config().recovery.verify_token;
        let identity = match (verified, comeback) {
            (Ok(identity), comeback) => Ok((identity, comeback)),
            // Recovery without the token checked again (as Node.js's
            // skipMiddlewares): the session's identity, if it recovers.
            (Err(refusal), Some(comeback)) if !verify_token => Err((refusal, Some(comeback))),
            (Err(refusal), comeback) => {
                if comeback.is_some() {
                    self.recovery_refused(&nsp, crate::broker::recovery::Refused::Token);
                }
                Err((refusal, None))
            }
        };
        match identity {
            Ok((identity, None)) => self.connect_fresh(nsp.into(), identity, auth_text, ctx),
            Ok((identity, Some(comeback))) => {
                self.connect_resume(nsp.into(), Ok(identity), comeback, auth_text.to_owned(), ctx)
            }
            Err((refusal, Some(comeback))) => {
                self.connect_resume(nsp.into(), Err(refusal), comeback, auth_text.to_owned(), ctx)
            }
            Err((refusal, None)) => self.refuse_connect(&nsp, refusal, auth_text, ctx),
        }
    }

    /// Answers a CONNECT with CONNECT_ERROR for `refusal`.
    fn refuse_connect(&mut self, nsp: &str, refusal: Refusal, auth_text: &str, ctx: &mut Context<Self>) {
        self.connect_refused(nsp, refusal.code, &refusal.message, Some(auth_text));
        let mut data = json!({"message": refusal.message});
        if let Some(extra) = refusal.data {
            data["data"] = extra;
        }
        self.emit_packet(PacketType::ConnectError, nsp, None, &data, &[], ctx);
    }

    /// A CONNECT of a client that had a socket in a recovering namespace
    /// (`{pid, offset?}` in its payload, as socket.io-client 4.6+ sends):
    /// what it asks to get back.
    fn comeback(&self, nsp: &str, auth: &Value) -> Option<Comeback> {
        if !self.recovers(nsp) {
            return None;
        }
        let pid = auth.get("pid")?.as_str()?;
        // An offset that is not one (socket.io-client keeps the last string
        // argument of any event) can name no place in the log.
        let offset = match auth.get("offset") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(o)) => o.parse().map(Some).map_err(drop),
            Some(_) => Err(()),
        };
        Some(Comeback {
            pid: pid.into(),
            offset,
        })
    }

    /// Counts a refused recovery, and records it with the refused CONNECTs
    /// (`audit.record_handshake_refusals`): the client gets a fresh socket
    /// (or CONNECT_ERROR, when its token no longer verifies).
    fn recovery_refused(&self, nsp: &str, why: crate::broker::recovery::Refused) {
        let label = crate::metrics::CodeLabel { code: why.code() };
        self.shared.metrics.recoveries_refused.get_or_create(&label).inc();
        tracing::debug!(parent: &self.span, nsp, reason = why.code(), "recovery refused: {why}");
        if !self.shared.audit.records(AuditKind::HandshakeRefused) {
            return;
        }
        let detail = format!("recovery in {nsp} refused: {why}");
        let reason = AuditReason::recovery(why.code());
        let mut event = self.audit_event(AuditKind::HandshakeRefused, reason, detail, None);
        event.namespace = Some(nsp.to_owned());
        event.socket_id = None;
        self.shared.audit.record(event);
    }

    /// Tries to give a client its socket back (see [`Comeback`]): the
    /// session from the cluster's store (or the broker's), then the broker
    /// registers it with what it missed, in one step. The connection waits
    /// for both (a Redis round trip at most, bounded by its command
    /// timeout), so nothing it receives meanwhile is handled out of order.
    /// Refused: a fresh socket, as for any CONNECT, or, when the token did
    /// not verify and recovery was its only way in, CONNECT_ERROR.
    fn connect_resume(
        &mut self,
        nsp: Arc<str>,
        identity: Result<Identity, Refusal>,
        comeback: Comeback,
        auth_text: String,
        ctx: &mut Context<Self>,
    ) {
        let Ok(offset) = comeback.offset else {
            self.recovery_refused(&nsp, crate::broker::recovery::Refused::Unknown);
            return self.after_refused_recovery(nsp, identity, &auth_text, ctx);
        };
        let data = identity.as_ref().map(Identity::to_data).unwrap_or_default();
        let recoverable = Recoverable {
            pid: comeback.pid.clone(),
            data,
        };
        let register = self.registration(nsp.clone(), None, identity.as_ref().ok(), Some(recoverable), ctx);
        let cluster = self.sio_config().cluster.clone();
        let max_frames = self.sio_config().recovery.max_frames;
        let pid = comeback.pid;
        let kept_pid = pid.clone();
        let resume = async move {
            let session = cluster
                .take_session(&pid)
                .await
                .map_err(|_| crate::broker::recovery::Refused::Unavailable)?;
            if cluster.stores_sessions() && session.is_none() {
                return Err(crate::broker::recovery::Refused::Unknown);
            }
            let resume = Resume {
                register,
                offset,
                session,
                max_frames,
            };
            cluster
                .broker()
                .send(resume)
                .await
                .unwrap_or(Err(crate::broker::recovery::Refused::Unavailable))
        };
        ctx.wait(resume.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(resumed) => act.resumed(nsp, identity, (resumed, kept_pid), &auth_text, ctx),
                Err(why) => {
                    act.recovery_refused(&nsp, why);
                    act.after_refused_recovery(nsp, identity, &auth_text, ctx);
                }
            }
            act.after(ctx);
        }));
    }

    /// A recovery was refused: a fresh socket, or CONNECT_ERROR when only
    /// the recovery could have let it in.
    fn after_refused_recovery(
        &mut self,
        nsp: Arc<str>,
        identity: Result<Identity, Refusal>,
        auth_text: &str,
        ctx: &mut Context<Self>,
    ) {
        match identity {
            Ok(identity) => self.connect_fresh(nsp, identity, auth_text, ctx),
            Err(refusal) => self.refuse_connect(&nsp, refusal, auth_text, ctx),
        }
    }

    /// The broker gave the socket back: CONNECT `{sid, pid}` with its old
    /// id (the missed broadcasts are queued already: socket.io-client
    /// holds events that come before the CONNECT and emits them after it,
    /// in order, as with Node.js, which writes them first too).
    fn resumed(
        &mut self,
        nsp: Arc<str>,
        identity: Result<Identity, Refusal>,
        (resumed, pid): (crate::broker::Resumed, Arc<str>),
        auth_text: &str,
        ctx: &mut Context<Self>,
    ) {
        if self.sio.is_none() || self.closed_by.is_some() || !self.session.is_live() {
            // The connection ended while the broker worked: the socket
            // leaves again, its session kept.
            self.sio_config().cluster.broker().do_send(Unregister {
                socket_id: resumed.socket_id,
                keep: true,
                owner: self.sid.clone(),
            });
            return;
        }
        let identity = identity.unwrap_or_else(|_| Identity::from_data(&resumed.data));
        // A second CONNECT for a namespace replaces the first socket.
        self.remove_socket(&nsp, DisconnectReason::ClientNamespaceDisconnect);
        let id = resumed.socket_id.clone();
        let expires = identity.expires;
        self.joined(nsp.clone(), id.clone(), identity);
        self.emit_packet(
            PacketType::Connect,
            &nsp,
            None,
            &json!({"sid": &*id, "pid": &*pid}),
            &[],
            ctx,
        );
        tracing::debug!(
            parent: &self.span,
            nsp = &*nsp,
            socket_id = &*id,
            rooms = resumed.rooms,
            replayed = resumed.replayed,
            "namespace socket recovered"
        );
        self.connected(nsp, id, (expires, true), auth_text, ctx);
    }

    /// What follows a socket's CONNECT answer, fresh or recovered: it is
    /// counted and watched, its token's expiry armed, and the testing hook
    /// echoes its payload.
    fn connected(
        &mut self,
        nsp: Arc<str>,
        id: Arc<str>,
        (expires, recovered): (Option<std::time::SystemTime>, bool),
        auth_text: &str,
        ctx: &mut Context<Self>,
    ) {
        self.shared.metrics.socket(&nsp, 1);
        if let Some(observer) = &self.sio_config().observer {
            observer.socket_connected(&SocketDetails {
                nsp: &nsp,
                id: &id,
                sid: &self.sid,
                transport: self.session.transport().as_str(),
                address: self.peer.client.as_deref(),
                user_agent: self.peer.user_agent.as_deref(),
                recovered,
            });
        }
        self.watched(SocketEvent::Connected {
            sid: self.sid.clone(),
            nsp: nsp.clone(),
            socket_id: id.clone(),
            recovered,
        });
        if let Some(expires) = expires {
            self.expire_at(nsp.clone(), id, expires, ctx);
        }
        if self.sio_config().hooks {
            self.emit_event(&nsp, "auth", auth_text, &[], ctx);
        }
    }

    /// The service of `nsp`, when someone else serves it on this endpoint.
    fn served(&self, nsp: &str) -> Option<Arc<dyn ServerNamespace>> {
        self.sio_config()
            .server_namespace
            .as_ref()
            .filter(|s| s.name() == nsp)
            .cloned()
    }

    /// A CONNECT to a namespace a [`ServerNamespace`] serves: it checks the
    /// payload (the connection waits: a login is rare, and nothing this
    /// connection gets meanwhile may overtake its answer); admitted, the
    /// socket is made as any other, with no room permissions, then told
    /// what the service says, first what came with the login.
    fn connect_served(
        &mut self,
        nsp: Arc<str>,
        service: Arc<dyn ServerNamespace>,
        auth: Value,
        auth_text: String,
        ctx: &mut Context<Self>,
    ) {
        let admit = service.admit(auth);
        ctx.wait(admit.into_actor(self).map(move |result, act, ctx| {
            if act.sio.is_none() || act.closed_by.is_some() || !act.session.is_live() {
                return;
            }
            match result {
                Ok(Admitted { first }) => {
                    let identity = Identity {
                        user: None,
                        subscribe: Default::default(),
                        publish: Default::default(),
                        expires: None,
                    };
                    act.connect_fresh(nsp.clone(), identity, &auth_text, ctx);
                    for (name, rest) in &first {
                        act.emit_event(&nsp, name, rest, &[], ctx);
                    }
                    let welcome = service.welcome();
                    let id = act.socket_id(&nsp);
                    ctx.spawn(welcome.into_actor(act).map(move |events, act, ctx| {
                        // The same socket still (not one made by a later CONNECT).
                        if act.socket_id(&nsp).is_none() || act.socket_id(&nsp) != id {
                            return;
                        }
                        for (name, rest) in &events {
                            act.emit_event(&nsp, name, rest, &[], ctx);
                        }
                        act.after(ctx);
                    }));
                }
                Err(message) => {
                    let refusal = Refusal {
                        code: "invalid_credentials",
                        message,
                        data: None,
                    };
                    act.refuse_connect(&nsp, refusal, &auth_text, ctx);
                }
            }
            act.after(ctx);
        }));
    }

    /// Tells the observer that this connection's sockets now use
    /// `transport`.
    pub(super) fn sio_transport_changed(&self, transport: &'static str) {
        let observer = self.shared.sio.as_ref().and_then(|c| c.observer.as_ref());
        let (Some(observer), Some(state)) = (observer, self.sio.as_ref()) else {
            return;
        };
        for (nsp, socket) in state.sockets.iter() {
            observer.transport_changed(nsp, &socket.id, transport);
        }
    }

    /// Records a joined namespace socket in this connection's state.
    fn joined(&mut self, nsp: Arc<str>, id: Arc<str>, identity: Identity) {
        if let Some(state) = self.sio.as_mut() {
            state.joined = true;
            state.sockets.insert(nsp, NsSocket { id, identity });
        }
    }

    /// What the broker needs to deliver to a namespace socket here.
    fn registration(
        &self,
        nsp: Arc<str>,
        id: Option<Arc<str>>,
        identity: Option<&Identity>,
        recovery: Option<Recoverable>,
        ctx: &mut Context<Self>,
    ) -> Register {
        Register {
            socket_id: id.unwrap_or_else(crate::broker::new_socket_id),
            nsp,
            user: identity.and_then(|i| i.user.as_deref()).map(Into::into),
            deliver: ctx.address().recipient(),
            evict: ctx.address().recipient(),
            direct: self.direct_sink(),
            address: self.peer.ip,
            recovery,
            owner: self.sid.clone(),
        }
    }

    /// Whether `nsp` has connection state recovery.
    fn recovers(&self, nsp: &str) -> bool {
        self.sio_config().recovery.namespaces.iter().any(|n| n == nsp)
    }

    /// A new namespace socket (no recovery, or a refused one).
    fn connect_fresh(&mut self, nsp: Arc<str>, identity: Identity, auth_text: &str, ctx: &mut Context<Self>) {
        // A second CONNECT for a namespace replaces the first socket.
        self.remove_socket(&nsp, DisconnectReason::ClientNamespaceDisconnect);
        let id: Arc<str> = crate::broker::new_socket_id();
        // The private session id: secret, as the Engine.IO sid (a client
        // that has it may take the socket's place after a disconnection).
        let pid: Option<Arc<str>> = self.recovers(&nsp).then(|| crate::engineio::generate_sid().into());
        let recoverable = pid.clone().map(|pid| Recoverable {
            pid,
            data: identity.to_data(),
        });
        let register = self.registration(nsp.clone(), Some(id.clone()), Some(&identity), recoverable, ctx);
        let expires = identity.expires;
        self.joined(nsp.clone(), id.clone(), identity);
        let answer = match &pid {
            Some(pid) => json!({"sid": &*id, "pid": &**pid}),
            None => json!({"sid": &*id}),
        };
        self.emit_packet(PacketType::Connect, &nsp, None, &answer, &[], ctx);
        // The CONNECT goes to the socket before the broker may write there.
        self.flush(ctx);
        self.sio_config().cluster.register(register);
        tracing::debug!(parent: &self.span, nsp = &*nsp, socket_id = &*id, "namespace joined");
        self.connected(nsp, id, (expires, false), auth_text, ctx);
    }

    /// Records a refused CONNECT (`audit.record_handshake_refusals`).
    fn connect_refused(&self, nsp: &str, code: &'static str, message: &str, auth: Option<&str>) {
        if !self.shared.audit.records(AuditKind::HandshakeRefused) {
            return;
        }
        let detail = format!("CONNECT to {nsp} refused: {message}");
        let mut event = self.audit_event(AuditKind::HandshakeRefused, AuditReason::socketio(code), detail, None);
        event.namespace = Some(nsp.to_owned());
        event.socket_id = None;
        event.user = None;
        event.excerpt = auth.map(|a| excerpt(without_secrets(a).as_bytes()));
        self.shared.audit.record(event);
    }

    /// An event that does not validate: answered with an error ack,
    /// counted (`roomcast_invalid_events_total{code}`), and recorded as a
    /// parse error within the connection's and the node's allowance of
    /// client rows (the connection stays).
    fn invalid_event(
        &mut self,
        nsp: &str,
        ack: Option<u64>,
        code: &'static str,
        message: &str,
        args: &str,
        ctx: &mut Context<Self>,
    ) {
        self.shared.metrics.invalid_event(code);
        let guards = self.shared.guards.clone();
        let mut rows = self.audit_rows;
        guards.client_row(&mut rows, || {
            let detail = format!("event validation: {code}: {message}");
            let mut event = self.audit_event(AuditKind::ParseError, DisconnectReason::ParseError, detail, Some(nsp));
            event.excerpt = Some(excerpt(args.as_bytes()));
            event
        });
        self.audit_rows = rows;
        self.ack_error(nsp, ack, code, message, ctx);
    }

    /// A subscribe refused by a room limit: counted, and recorded within
    /// the connection's and the node's allowance of client rows.
    fn room_limit(&mut self, nsp: &str, limit: crate::limits::Limit) {
        let guards = self.shared.guards.clone();
        let mut rows = self.audit_rows;
        guards.connection_breach(limit, &mut rows, || {
            let detail = format!("subscribe refused: {}", limit.as_str());
            self.audit_event(AuditKind::LimitExceeded, limit.reason(), detail, Some(nsp))
        });
        self.audit_rows = rows;
    }

    /// Fills in the namespace sockets an audit event is about (`nsp`, or
    /// all of this connection's, comma separated) and their user.
    pub(super) fn sio_scope(&self, event: &mut AuditEvent, nsp: Option<&str>) {
        let Some(state) = self.sio.as_ref() else { return };
        let mut sockets: Vec<(&Arc<str>, &NsSocket)> = match nsp {
            Some(nsp) => state.sockets.get_key_value(nsp).into_iter().collect(),
            None => state.sockets.iter().collect(),
        };
        if sockets.is_empty() {
            event.namespace = nsp.map(str::to_owned);
            return;
        }
        sockets.sort_by(|a, b| a.0.cmp(b.0));
        let names: Vec<&str> = sockets.iter().map(|(n, _)| &***n).collect();
        let ids: Vec<&str> = sockets.iter().map(|(_, s)| &*s.id).collect();
        event.namespace = Some(names.join(","));
        event.socket_id = Some(ids.join(","));
        event.user = sockets.iter().find_map(|(_, s)| s.identity.user.clone());
    }

    /// Enforces a token's `exp` on a live socket: the client gets
    /// `token_expired`, then the connection is force-closed (audited).
    fn expire_at(&mut self, nsp: Arc<str>, id: Arc<str>, expires: std::time::SystemTime, ctx: &mut Context<Self>) {
        let delay = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        ctx.run_later(delay, move |act, ctx| {
            if act.socket_id(&nsp).as_deref() != Some(&*id) {
                return; // that socket is gone
            }
            act.emit_event(&nsp, "token_expired", r#"{"message":"Token expired"}"#, &[], ctx);
            let cause = CloseCause::new(
                DisconnectReason::ForcedClose,
                format!("token expired (namespace {nsp})"),
            );
            act.close(cause, None, ctx);
            act.after(ctx);
        });
    }

    /// The connect hook: accepts or refuses a CONNECT with its `auth`
    /// payload, and says what the socket may do.
    fn connect_hook(&self, nsp: &str, auth: &Value) -> Result<Identity, Refusal> {
        if self.sio_config().hooks {
            if let Some(why) = auth.get("reject").and_then(Value::as_str) {
                return Err(Refusal {
                    code: "rejected",
                    message: why.to_owned(),
                    data: Some(json!({"code": "rejected"})),
                });
            }
        }
        self.sio_config().verifier.check(nsp, auth).map_err(|e| Refusal {
            code: e.code,
            message: e.message.to_owned(),
            data: Some(json!({"code": e.code})),
        })
    }

    fn sio_event(&mut self, message: Message, ctx: &mut Context<Self>) {
        let Some(name) = message.packet.event.clone() else {
            return;
        };
        let nsp = message.packet.nsp.as_str();
        if let Some(service) = self.served(nsp) {
            let args = message.packet.data.as_ref().map_or("[]", Data::text);
            return service.event(&name, args);
        }
        if let (Some(observer), Some(data), Some(id)) = (
            self.sio_config().observer.as_ref(),
            message.packet.data.as_ref(),
            self.sio.as_ref().and_then(|s| s.sockets.get(nsp)).map(|s| &s.id),
        ) {
            observer.event_received(nsp, id, data.text());
        }
        match name.as_str() {
            "subscribe" | "unsubscribe" | "publish" | "presence" => self.app_event(&name, message, ctx),
            _ if self.sio_config().hooks => self.hook_event(message, ctx),
            // Not a parse error: the packet was well formed, only no
            // handler knows its name. An error ack if it asks for one, and a
            // metric; no audit row, so unknown events cannot flood the log.
            _ => {
                let (nsp, id) = (message.packet.nsp, message.packet.id);
                let code = "unknown_event";
                self.shared.metrics.invalid_event(code);
                let why = format!("unknown event {:?}", crate::audit::sanitize(&name, 128));
                self.ack_error(&nsp, id, code, &why, ctx);
            }
        }
    }

    /// The `[testing]` hooks (see config/default.toml). The arguments are
    /// echoed as written.
    fn hook_event(&mut self, message: Message, ctx: &mut Context<Self>) {
        let Message { packet, attachments } = message;
        let nsp = packet.nsp.as_str();
        let (Some(name), Some(data)) = (packet.event.as_deref(), packet.data.as_ref()) else {
            return;
        };
        let rest = data.rest(1);
        match name {
            "message" => self.emit_event(nsp, "message-back", rest, &attachments, ctx),
            "message-with-ack" => {
                if let Some(id) = packet.id {
                    let kind = if attachments.is_empty() {
                        PacketType::Ack
                    } else {
                        PacketType::BinaryAck
                    };
                    let text = encode_raw(kind, nsp, Some(id), &format!("[{rest}]"), attachments.len());
                    self.emit_frame(text, &attachments, ctx);
                }
            }
            "disconnect-me" => self.disconnect_namespace(nsp, ctx),
            "close-me" => {
                let cause = CloseCause::new(DisconnectReason::ForcedClose, "closed on request (testing hook)");
                self.close(cause, None, ctx);
            }
            "request-ack" => {
                let nsp_owned = nsp.to_owned();
                self.emit_with_ack(
                    nsp,
                    ("ack-request", rest),
                    &attachments,
                    Box::new(move |act, ctx, reply| match reply {
                        Some(Message { packet, attachments }) => {
                            let args = packet.data.as_ref().map_or("", |d| d.rest(0));
                            act.emit_event(&nsp_owned, "ack-response", args, &attachments, ctx);
                        }
                        None => act.emit_event(&nsp_owned, "ack-timeout", "", &[], ctx),
                    }),
                    ctx,
                );
            }
            _ => {}
        }
    }

    /// The pub/sub protocol of docs/protocol.md: `subscribe`, `unsubscribe`,
    /// `publish`, `presence`, each answered through its ack.
    fn app_event(&mut self, name: &str, message: Message, ctx: &mut Context<Self>) {
        let Message { packet, attachments } = message;
        let nsp: Arc<str> = packet.nsp.as_str().into();
        let ack = packet.id;
        let Some(args) = packet.data else { return };
        let Some(socket_id) = self.socket_id(&nsp) else { return };
        let arg = args.arg(1).and_then(|text| serde_json::from_str::<AppArg>(text).ok());
        let Some(AppArg {
            room: Some(room),
            event,
            data,
        }) = arg
        else {
            let message = "expected an object with a \"room\" string";
            return self.invalid_event(&nsp, ack, "bad_request", message, args.text(), ctx);
        };
        if let Err(why) = crate::broker::check_room(&room, self.sio_config().max_room_len) {
            return self.invalid_event(&nsp, ack, "invalid_room", &why.to_string(), args.text(), ctx);
        }
        let room: Arc<str> = room.into();
        // unwrap: socket_id() found the socket.
        let identity = &self.sio.as_ref().unwrap().sockets.get(&nsp).unwrap().identity;
        let (may_subscribe, may_publish) = (identity.may_subscribe(&room), identity.may_publish(&room));
        let request = AppRequest {
            nsp,
            ack,
            socket_id,
            room,
        };
        match name {
            "subscribe" | "presence" if !may_subscribe => {
                let message = "not allowed to subscribe to this room";
                self.ack_error(&request.nsp, ack, "forbidden", message, ctx)
            }
            "subscribe" => self.subscribe(request, ctx),
            "unsubscribe" => {
                let AppRequest {
                    nsp, socket_id, room, ..
                } = request;
                self.sio_config().cluster.broker().do_send(Leave { socket_id, room });
                self.ack_ok(&nsp, ack, json!({"ok": true}), ctx);
            }
            "presence" => self.presence(request, ctx),
            _ if !may_publish => {
                let message = "not allowed to publish to this room";
                self.ack_error(&request.nsp, ack, "forbidden", message, ctx)
            }
            _ => {
                let event = event.as_deref().unwrap_or_default();
                self.publish(request, (event, data), args.text(), attachments, ctx)
            }
        }
    }

    /// `subscribe`: joins the room (room limits and quotas apply).
    fn subscribe(&mut self, request: AppRequest, ctx: &mut Context<Self>) {
        let AppRequest {
            nsp,
            ack,
            socket_id,
            room,
        } = request;
        let joined = self.sio_config().cluster.broker().send(Subscribe { socket_id, room });
        ctx.spawn(joined.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(Ok(())) => act.ack_ok(&nsp, ack, json!({"ok": true}), ctx),
                Ok(Err(JoinError::TooManyRooms)) => {
                    act.room_limit(&nsp, crate::limits::Limit::RoomsPerSocket);
                    act.ack_error(&nsp, ack, "too_many_rooms", "this socket is in too many rooms", ctx)
                }
                Ok(Err(JoinError::TooManyRoomsInTotal)) => {
                    act.room_limit(&nsp, crate::limits::Limit::RoomsTotal);
                    act.ack_error(&nsp, ack, "room_limit", "the namespace has too many rooms", ctx)
                }
                Ok(Err(why @ JoinError::RoomQuota(quota))) => {
                    act.room_limit(&nsp, quota.limit());
                    act.ack_error(&nsp, ack, "room_quota", &why.to_string(), ctx)
                }
                Ok(Err(why @ JoinError::SocketIdRoom)) => {
                    act.ack_error(&nsp, ack, "invalid_room", &why.to_string(), ctx)
                }
                Ok(Err(JoinError::UnknownSocket)) | Err(_) => {}
            }
            act.after(ctx);
        }));
    }

    /// `presence`: the room's members across the cluster.
    fn presence(&mut self, request: AppRequest, ctx: &mut Context<Self>) {
        let AppRequest { nsp, ack, room, .. } = request;
        let limit = self.sio_config().presence_limit;
        let cluster = self.sio_config().cluster.clone();
        let (n, r) = (nsp.clone(), room.clone());
        let members = async move { cluster.room_members(n, r, limit).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(members).map(move |result, act, ctx| {
                if let Ok(m) = result {
                    let mut reply = m.to_json();
                    reply.insert("ok".into(), json!(true));
                    reply.insert("room".into(), json!(&*room));
                    act.ack_ok(&nsp, ack, Value::Object(reply), ctx);
                }
                act.after(ctx);
            }),
        );
    }

    /// `publish`: `arg.event` with `arg.data` (its text as written) to the
    /// room's members but the publisher, acked with this node's recipients.
    /// `args` is the whole event's text, for the audit row of an invalid one.
    fn publish(
        &mut self,
        request: AppRequest,
        (event, data): (&str, Option<&RawValue>),
        args: &str,
        attachments: Vec<Bytes>,
        ctx: &mut Context<Self>,
    ) {
        let AppRequest {
            nsp,
            ack,
            socket_id,
            room,
        } = request;
        let publish = match Publish::event(nsp.clone(), vec![room], vec![socket_id], event, data, attachments) {
            Ok(publish) => publish,
            Err(e) => return self.invalid_event(&nsp, ack, e.code(), &e.to_string(), args, ctx),
        };
        let size = publish.size();
        let answered = self.sio_config().cluster.publish(publish).boxed_local();
        // unwrap: the publisher's socket was found, so this is Socket.IO.
        let bounds = self.sio_config().publish_window;
        let in_window = self.sio.as_mut().unwrap().window.open(size, bounds);
        let ack_answer = move |result: PublishResult, act: &mut Self, ctx: &mut Context<Self>| {
            if let Some(state) = act.sio.as_mut() {
                state.window.close(size);
            }
            let (recipients, stored) = result.map_or((0, None), |p| (p.recipients, p.stored));
            let mut answer = json!({"ok": true, "recipients": recipients});
            if let Some(stored) = stored {
                // Streams mode: false = Redis could not take it, only this
                // node's members got it (docs/protocol.md).
                answer["stored"] = json!(stored);
            }
            act.ack_ok(&nsp, ack, answer, ctx);
            act.after(ctx);
        };
        if in_window {
            self.answer_in_order(answered, Box::new(ack_answer), ctx);
        } else {
            // Past a bound the connection stops taking packets until this
            // publish is answered: its read pump then waits on the full
            // mailbox and TCP pushes back on the publisher, instead of
            // publishes piling up in memory while the broker is behind.
            // (Its ack may then overtake those of earlier publishes: acks
            // are matched by id.)
            self.shared.metrics.publish_backpressure.inc();
            ctx.wait(answered.into_actor(self).map(ack_answer));
        }
    }

    /// Queues what to do with a publish's answer. A connection's publishes
    /// are answered in the order the broker got them, so one stream awaits
    /// the oldest and nothing else is polled: actix polls every future
    /// spawned on a context at each of its wake-ups, and a thousand spawned
    /// answers would cost a thousand polls per publish.
    fn answer_in_order(
        &mut self,
        request: LocalBoxFuture<'static, PublishResult>,
        answer: PublishAnswer,
        ctx: &mut Context<Self>,
    ) {
        let Some(state) = self.sio.as_mut() else { return };
        let queue = state.window.answers.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PendingPublish>();
            ctx.add_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                let (request, answer) = rx.recv().await?;
                Some((PublishAnswered(request.await, answer), rx))
            }));
            tx
        });
        // The receiver lives as long as the actor: sending cannot fail
        // while this runs.
        let _ = queue.send((request, answer));
    }

    fn ack_ok(&mut self, nsp: &str, ack: Option<u64>, value: Value, ctx: &mut Context<Self>) {
        if let Some(id) = ack {
            self.emit_packet(PacketType::Ack, nsp, Some(id), &json!([value]), &[], ctx);
        }
    }

    fn ack_error(&mut self, nsp: &str, ack: Option<u64>, code: &str, message: &str, ctx: &mut Context<Self>) {
        let value = json!({"ok": false, "error": {"code": code, "message": message}});
        self.ack_ok(nsp, ack, value, ctx);
    }

    /// Sends a packet (and its attachments) to the client.
    fn emit_packet(
        &mut self,
        kind: PacketType,
        nsp: &str,
        id: Option<u64>,
        data: &Value,
        attachments: &[Bytes],
        ctx: &mut Context<Self>,
    ) {
        let text = encode(kind, nsp, id, Some(data), attachments.len());
        self.emit_frame(text, attachments, ctx);
    }

    /// Sends an encoded packet, then its attachments.
    fn emit_frame(&mut self, text: String, attachments: &[Bytes], ctx: &mut Context<Self>) {
        self.send(Frame::Text(ByteString::from(text)), ctx);
        for a in attachments {
            self.send(Frame::Binary(a.clone()), ctx);
        }
    }

    /// Emits the event `name` whose further arguments are the JSON text
    /// `rest` (comma separated, as written; empty: none).
    pub fn emit_event(&mut self, nsp: &str, name: &str, rest: &str, attachments: &[Bytes], ctx: &mut Context<Self>) {
        let kind = if attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        let text = encode_event(kind, nsp, None, name, rest, attachments.len());
        self.emit_frame(text, attachments, ctx);
    }

    /// Emits an event (`(name, rest)` as for [`Self::emit_event`]) that
    /// asks for an ack; `handler` runs with the ack, or with `None` after
    /// `socketio.ack_timeout_ms`.
    fn emit_with_ack(
        &mut self,
        nsp: &str,
        (name, rest): (&str, &str),
        attachments: &[Bytes],
        handler: AckHandler,
        ctx: &mut Context<Self>,
    ) {
        let timeout = self.sio_config().ack_timeout;
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        let id = state.next_ack_id;
        state.next_ack_id = (id + 1) % crate::socketio::packet::MAX_ACK_ID;
        let timer = ctx.run_later(timeout, move |act, ctx| {
            if let Some(p) = act.sio.as_mut().and_then(|s| s.acks.remove(&id)) {
                (p.handler)(act, ctx, None);
                act.after(ctx);
            }
        });
        state.acks.insert(
            id,
            PendingAck {
                nsp: nsp.into(),
                timer,
                handler,
            },
        );
        let kind = if attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        let text = encode_event(kind, nsp, Some(id), name, rest, attachments.len());
        self.emit_frame(text, attachments, ctx);
    }

    /// Server-side namespace disconnect: the client gets DISCONNECT and
    /// reports `io server disconnect`; the connection stays.
    pub fn disconnect_namespace(&mut self, nsp: &str, ctx: &mut Context<Self>) {
        if self.socket_id(nsp).is_none() {
            return;
        }
        let text = encode(PacketType::Disconnect, nsp, None, None, 0);
        self.send(Frame::Text(ByteString::from(text)), ctx);
        self.remove_socket(nsp, DisconnectReason::ServerNamespaceDisconnect);
    }

    fn remove_socket(&mut self, nsp: &str, reason: DisconnectReason) {
        let kind = AuditKind::of_close(reason);
        if self.socket_id(nsp).is_some() && self.shared.audit.records(kind) {
            let detail = format!("namespace socket of {nsp} ended: {reason}");
            let event = self.audit_event(kind, reason, detail, Some(nsp));
            self.shared.audit.record(event);
        }
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        let Some((nsp, socket)) = state.sockets.remove_entry(nsp) else {
            return;
        };
        state.acks.retain(|_, p| p.nsp != nsp);
        self.socket_left(nsp, socket.id, reason, false);
    }

    /// Leaves the broker (its session kept for recovery when `keep`) and
    /// tells the watchers.
    fn socket_left(&self, nsp: Arc<str>, socket_id: Arc<str>, reason: DisconnectReason, keep: bool) {
        self.sio_config().cluster.broker().do_send(Unregister {
            socket_id: socket_id.clone(),
            keep,
            owner: self.sid.clone(),
        });
        tracing::debug!(parent: &self.span, nsp = &*nsp, socket_id = &*socket_id, reason = reason.as_str(), "namespace left");
        self.shared.metrics.socket(&nsp, -1);
        if let Some(observer) = &self.sio_config().observer {
            observer.socket_disconnected(&nsp, &socket_id, reason);
        }
        self.watched(SocketEvent::Disconnected {
            sid: self.sid.clone(),
            nsp,
            socket_id,
            reason,
        });
    }

    /// Tells the watchers, if any (a lagging one loses old events).
    fn watched(&self, event: SocketEvent) {
        if let Some(events) = &self.shared.events {
            let _ = events.send(event);
        }
    }

    /// The session ended: every namespace socket ends with its reason.
    pub(super) fn sio_closed(&mut self, reason: DisconnectReason) {
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        state.acks.clear();
        let sockets: Vec<_> = state.sockets.drain().collect();
        for (nsp, socket) in sockets {
            self.socket_left(nsp, socket.id, reason, reason.keeps_session());
        }
    }
}

impl Handler<Deliver> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        for frame in msg.frames.iter() {
            self.send(frame.clone(), ctx);
        }
        let coalesce = self.sio_config().coalesce;
        if coalesce.is_zero() || self.session.transport() != crate::engineio::TransportKind::WebSocket {
            self.after(ctx);
        } else if !self.flush_scheduled {
            // Anything written before the timer fires (an ack, a ping)
            // takes these frames with it, in order.
            self.flush_scheduled = true;
            ctx.run_later(coalesce, |act, ctx| {
                act.flush_scheduled = false;
                act.after(ctx);
            });
        }
        let metrics = &self.shared.metrics;
        metrics.deliveries.inc();
        metrics.observe_delivery(msg.at.elapsed());
    }
}

impl Handler<Evict> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Evict, ctx: &mut Self::Context) {
        let _enter = self.span.clone().entered();
        if let Some(nsp) = msg.namespace {
            self.disconnect_namespace(&nsp, ctx);
            self.after(ctx);
            return;
        }
        self.close(CloseCause::new(DisconnectReason::ForcedClose, msg.detail), None, ctx);
        self.after(ctx);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn a_refused_connects_audit_excerpt_never_shows_a_recovery_pid() {
        let kept = super::without_secrets(r#"{"token":"t","pid":"secret-pid","offset":"1-0"}"#);
        assert!(!kept.contains("secret-pid"), "{kept}");
        let kept: Value = serde_json::from_str(&kept).unwrap();
        assert_eq!(kept, json!({"token": "t", "pid": "[redacted]", "offset": "1-0"}));
        assert_eq!(super::without_secrets(r#"{"token":"t"}"#), r#"{"token":"t"}"#);
        assert!(!super::without_secrets(r#"not json "pid""#).contains("not json"));
    }

    #[test]
    fn nor_an_admin_password_or_session_id() {
        let kept = super::without_secrets(r#"{"username":"admin","password":"hunter2"}"#);
        assert!(!kept.contains("hunter2"), "{kept}");
        let kept = super::without_secrets(r#"{"sessionId":"abcdef"}"#);
        assert!(!kept.contains("abcdef"), "{kept}");
        let kept = super::without_secrets(r#"{"password":"hunter2","#);
        assert!(!kept.contains("hunter2"), "{kept}");
    }
}
