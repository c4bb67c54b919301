//! The audit sink: forced closes and parse errors, as typed events.
//!
//! Connections never wait on the audit log: they `try_send` an [`AuditEvent`]
//! to a [`Recipient`] with a bounded mailbox; when it is full the event is
//! counted and logged as dropped rather than blocking the connection. Until
//! the SQL store lands, [`LogSink`] writes each event as a structured log line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;

use crate::reason::DisconnectReason;

/// What kind of record an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// The server ended a healthy connection.
    ForcedClose,
    /// The client sent input that does not parse.
    ParseError,
}

impl AuditKind {
    /// Stable name for logs and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ForcedClose => "forced_close",
            Self::ParseError => "parse_error",
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AuditEvent {
    /// When it happened.
    pub at: SystemTime,
    /// Forced close or parse error.
    pub kind: AuditKind,
    /// The close reason it led to.
    pub reason: DisconnectReason,
    /// Engine.IO session id.
    pub sid: String,
    /// `polling` or `websocket`.
    pub transport: &'static str,
    /// Peer address.
    pub peer: Option<SocketAddr>,
    /// `User-Agent` of the handshake.
    pub user_agent: Option<String>,
    /// What went wrong.
    pub detail: String,
    /// The start of the offending input, escaped.
    pub excerpt: Option<String>,
}

/// Bytes of offending input kept in an excerpt.
pub const EXCERPT_BYTES: usize = 128;

/// The first [`EXCERPT_BYTES`] of `input`, with control characters and
/// non-UTF-8 bytes escaped so the excerpt is safe to log and store.
pub fn excerpt(input: &[u8]) -> String {
    let cut = &input[..input.len().min(EXCERPT_BYTES)];
    let mut out: String = cut.escape_ascii().to_string();
    if input.len() > EXCERPT_BYTES {
        out.push('…');
    }
    out
}

/// Where connections send audit events, and what could not be sent.
#[derive(Clone)]
pub struct AuditHandle {
    recipient: Recipient<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

impl AuditHandle {
    /// A handle on a sink.
    pub fn new(recipient: Recipient<AuditEvent>) -> Self {
        Self {
            recipient,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records an event without waiting.
    pub fn record(&self, event: AuditEvent) {
        if let Err(err) = self.recipient.try_send(event) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped_total = n, "audit sink did not take an event: {err}");
        }
    }

    /// Events that the sink could not take.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// An audit sink that writes each event to the log.
pub struct LogSink {
    /// Mailbox bound: events beyond it are dropped (and counted) by the sender.
    pub capacity: usize,
}

impl Actor for LogSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<AuditEvent> for LogSink {
    type Result = ();

    fn handle(&mut self, e: AuditEvent, _: &mut Self::Context) {
        tracing::warn!(
            target: "roomcast::audit",
            kind = e.kind.as_str(),
            reason = e.reason.as_str(),
            code = e.reason.code(),
            sid = %e.sid,
            transport = e.transport,
            peer = ?e.peer,
            user_agent = e.user_agent.as_deref().unwrap_or(""),
            excerpt = e.excerpt.as_deref().unwrap_or(""),
            "{}",
            e.detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_escaped_and_cut() {
        assert_eq!(excerpt(b"4hi\x1e\xff"), "4hi\\x1e\\xff");
        let long = vec![b'a'; 200];
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), EXCERPT_BYTES + 1);
    }
}
