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
use serde_json::{json, Value};

use super::events::SocketEvent;
use super::Connection;
use crate::engineio::{CloseCause, Frame, Payload};
use crate::reason::DisconnectReason;
use crate::socketio::packet::encode;
use crate::socketio::{DecodeLimits, Decoder, Message, PacketType};

/// Socket.IO settings of an endpoint.
#[derive(Debug, Clone)]
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
}

/// A namespace socket on this connection.
#[derive(Debug)]
struct NsSocket {
    id: Arc<str>,
}

/// What to do when the client acks (or does not ack) a server event.
type AckHandler = Box<dyn FnOnce(&mut Connection, &mut Context<Connection>, Option<Message>)>;

/// A server event waiting for the client's ack.
struct PendingAck {
    nsp: Arc<str>,
    timer: SpawnHandle,
    handler: AckHandler,
}

/// The Socket.IO state of one connection.
pub struct SioState {
    decoder: Decoder,
    sockets: HashMap<Arc<str>, NsSocket>,
    /// A namespace was joined at least once (the connect timeout is over).
    joined: bool,
    next_ack_id: u64,
    acks: HashMap<u64, PendingAck>,
}

impl SioState {
    /// Fresh state for a new connection.
    pub fn new(config: &SioConfig) -> Self {
        Self {
            decoder: Decoder::new(config.limits),
            sockets: HashMap::new(),
            joined: false,
            next_ack_id: 0,
            acks: HashMap::new(),
        }
    }
}

/// Why a CONNECT was refused.
struct Refusal {
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
                    format!(
                        "no namespace joined within connectTimeout ({} ms)",
                        timeout.as_millis()
                    ),
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
        let result = match &payload {
            Payload::Text(text) => state.decoder.text(text),
            Payload::Binary(bytes) => state.decoder.binary(bytes.clone()),
        };
        match result {
            Ok(Some(message)) => self.sio_packet(message, ctx),
            Ok(None) => {}
            Err(err) => {
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

    fn sio_packet(&mut self, message: Message, ctx: &mut Context<Self>) {
        let nsp = message.packet.nsp.as_str();
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
        if !self.sio_config().namespaces.contains(&nsp) {
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
        let auth = message.packet.data.unwrap_or_else(|| json!({}));
        if let Err(refusal) = self.connect_hook(&nsp, &auth) {
            let mut data = json!({"message": refusal.message});
            if let Some(extra) = refusal.data {
                data["data"] = extra;
            }
            self.emit_packet(PacketType::ConnectError, &nsp, None, &data, &[], ctx);
            return;
        }
        // A second CONNECT for a namespace replaces the first socket.
        self.remove_socket(&nsp, DisconnectReason::ClientNamespaceDisconnect);
        let nsp: Arc<str> = nsp.into();
        let id: Arc<str> = crate::engineio::generate_sid().into();
        if let Some(state) = self.sio.as_mut() {
            state.joined = true;
            state
                .sockets
                .insert(nsp.clone(), NsSocket { id: id.clone() });
        }
        self.emit_packet(
            PacketType::Connect,
            &nsp,
            None,
            &json!({"sid": &*id}),
            &[],
            ctx,
        );
        tracing::debug!(parent: &self.span, nsp = &*nsp, socket_id = &*id, "namespace joined");
        let _ = self.shared.events.send(SocketEvent::Connected {
            sid: self.sid.clone(),
            nsp: nsp.clone(),
            socket_id: id,
        });
        if self.sio_config().hooks {
            self.emit_event(&nsp, &json!(["auth", auth]), &[], ctx);
        }
    }

    /// The connect hook: accepts or refuses a CONNECT with its `auth`
    /// payload. Token verification plugs in here.
    fn connect_hook(&self, _nsp: &str, auth: &Value) -> Result<(), Refusal> {
        if self.sio_config().hooks {
            if let Some(why) = auth.get("reject").and_then(Value::as_str) {
                return Err(Refusal {
                    message: why.to_owned(),
                    data: Some(json!({"code": "rejected"})),
                });
            }
        }
        Ok(())
    }

    fn sio_event(&mut self, message: Message, ctx: &mut Context<Self>) {
        if !self.sio_config().hooks {
            return; // no application events yet
        }
        let Message {
            packet,
            attachments,
        } = message;
        let nsp = packet.nsp.as_str();
        let Some(Value::Array(mut args)) = packet.data else {
            return;
        };
        // unwrap: the decoder guarantees a string event name first.
        let name = args.remove(0);
        match name.as_str().unwrap_or_default() {
            "message" => {
                args.insert(0, json!("message-back"));
                self.emit_event(nsp, &Value::Array(args), &attachments, ctx);
            }
            "message-with-ack" => {
                if let Some(id) = packet.id {
                    let kind = if attachments.is_empty() {
                        PacketType::Ack
                    } else {
                        PacketType::BinaryAck
                    };
                    self.emit_packet(kind, nsp, Some(id), &Value::Array(args), &attachments, ctx);
                }
            }
            "disconnect-me" => self.disconnect_namespace(nsp, ctx),
            "close-me" => {
                let cause = CloseCause::new(
                    DisconnectReason::ForcedClose,
                    "closed on request (testing hook)",
                );
                self.close(cause, None, ctx);
            }
            "request-ack" => {
                args.insert(0, json!("ack-request"));
                let nsp_owned = nsp.to_owned();
                self.emit_with_ack(
                    nsp,
                    &Value::Array(args),
                    Box::new(move |act, ctx, reply| {
                        let out = match reply {
                            Some(Message { packet, .. }) => {
                                let mut args = match packet.data {
                                    Some(Value::Array(a)) => a,
                                    _ => vec![],
                                };
                                args.insert(0, json!("ack-response"));
                                Value::Array(args)
                            }
                            None => json!(["ack-timeout"]),
                        };
                        act.emit_event(&nsp_owned, &out, &[], ctx);
                    }),
                    ctx,
                );
            }
            _ => {}
        }
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
        self.send(Frame::Text(ByteString::from(text)), ctx);
        for a in attachments {
            self.send(Frame::Binary(a.clone()), ctx);
        }
    }

    /// Emits an event (`args` = `[name, ...]`).
    pub fn emit_event(
        &mut self,
        nsp: &str,
        args: &Value,
        attachments: &[Bytes],
        ctx: &mut Context<Self>,
    ) {
        let kind = if attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        self.emit_packet(kind, nsp, None, args, attachments, ctx);
    }

    /// Emits an event that asks for an ack; `handler` runs with the ack, or
    /// with `None` after `socketio.ack_timeout_ms`.
    fn emit_with_ack(
        &mut self,
        nsp: &str,
        args: &Value,
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
        self.emit_packet(PacketType::Event, nsp, Some(id), args, &[], ctx);
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
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        let Some((nsp, socket)) = state.sockets.remove_entry(nsp) else {
            return;
        };
        state.acks.retain(|_, p| p.nsp != nsp);
        self.socket_left(nsp, socket.id, reason);
    }

    fn socket_left(&self, nsp: Arc<str>, socket_id: Arc<str>, reason: DisconnectReason) {
        tracing::debug!(parent: &self.span, nsp = &*nsp, socket_id = &*socket_id, reason = reason.as_str(), "namespace left");
        let _ = self.shared.events.send(SocketEvent::Disconnected {
            sid: self.sid.clone(),
            nsp,
            socket_id,
            reason,
        });
    }

    /// The session ended: every namespace socket ends with its reason.
    pub(super) fn sio_closed(&mut self, reason: DisconnectReason) {
        let Some(state) = self.sio.as_mut() else {
            return;
        };
        state.acks.clear();
        let sockets: Vec<_> = state.sockets.drain().collect();
        for (nsp, socket) in sockets {
            self.socket_left(nsp, socket.id, reason);
        }
    }
}
