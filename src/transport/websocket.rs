//! The WebSocket transport: the handshake response, a read pump that forwards
//! messages to the connection actor, and a writer task that drains the
//! actor's bounded queue into the socket.
//!
//! `actix_ws::MessageStream` is `!Send`, so the read pump runs on the worker
//! that accepted the request. It `send`s to the actor and awaits the mailbox,
//! so a client that floods is read no faster than its actor keeps up.
//! The writer awaits `actix_ws::Session`, whose response body encodes every
//! frame queued at the time of a poll into one buffer, so frames waiting for
//! one socket go out in one write.

use std::sync::atomic::{AtomicU64, Ordering};

use actix::Addr;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use tokio::sync::mpsc;

use crate::conn::messages::{Outgoing, WsEnd, WsEnded, WsInbound, WsMessage, WsWriter};
use crate::conn::Connection;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A WebSocket accepted at the HTTP level, not yet tied to a session.
pub struct Accepted {
    /// The `101 Switching Protocols` response.
    pub response: HttpResponse,
    /// The handle the actor writes through.
    pub writer: WsWriter,
    stream: actix_ws::AggregatedMessageStream,
    session: actix_ws::Session,
}

/// Verifies the handshake headers (RFC 6455 §4.2.1: GET, `Upgrade:
/// websocket`, `Connection: Upgrade`, version 13, a 16-byte base64 key) and
/// builds the `101` response with `Sec-WebSocket-Accept`, the negotiated
/// subprotocol if any, and no extension (none is implemented).
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    subprotocols: &[String],
    max_payload: usize,
    queue: usize,
) -> Option<Accepted> {
    actix_http::ws::verify_handshake(req.head()).ok()?;
    let (mut response, session, stream) = actix_ws::handle(req, body).ok()?;
    if let Some(protocol) = negotiate(req, subprotocols) {
        // unwrap: the value was a valid header value in the request.
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol).unwrap());
    }
    let stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    let (tx, rx) = mpsc::channel(queue);
    actix_web::rt::spawn(write_loop(rx, session.clone()));
    let writer = WsWriter {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        tx,
    };
    Some(Accepted {
        response,
        writer,
        stream,
        session,
    })
}

/// The first protocol the client offers that the server accepts. The offer
/// is split lazily and each token trimmed, so a long header stays linear.
fn negotiate<'a>(req: &HttpRequest, accepted: &'a [String]) -> Option<&'a str> {
    if accepted.is_empty() {
        return None;
    }
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| accepted.iter().find(|a| *a == offered).map(String::as_str))
}

impl Accepted {
    /// Starts the read pump towards `addr` and returns the 101 response.
    pub fn run(self, addr: Addr<Connection>) -> HttpResponse {
        actix_web::rt::spawn(read_loop(addr, self.writer.id, self.stream, self.session));
        self.response
    }
}

async fn read_loop(
    addr: Addr<Connection>,
    id: u64,
    mut stream: actix_ws::AggregatedMessageStream,
    mut session: actix_ws::Session,
) {
    let end = loop {
        let message = match stream.recv().await {
            None => break WsEnd::Closed,
            Some(Ok(m)) => m,
            Some(Err(err)) => break classify(err),
        };
        let message = match message {
            AggregatedMessage::Text(text) => WsMessage::Text(text),
            AggregatedMessage::Binary(bytes) => WsMessage::Binary(bytes),
            AggregatedMessage::Ping(bytes) => {
                let _ = session.pong(&bytes).await;
                continue;
            }
            AggregatedMessage::Pong(_) => continue,
            AggregatedMessage::Close(_) => break WsEnd::Closed,
        };
        if addr.send(WsInbound { id, message }).await.is_err() {
            return; // the session is gone
        }
    };
    addr.do_send(WsEnded { id, end });
}

fn classify(err: ProtocolError) -> WsEnd {
    match err {
        ProtocolError::Overflow => WsEnd::TooLarge,
        ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => WsEnd::InvalidUtf8,
        other => WsEnd::Error(other.to_string()),
    }
}

async fn write_loop(mut rx: mpsc::Receiver<Outgoing>, mut session: actix_ws::Session) {
    use crate::engineio::Frame;
    while let Some(out) = rx.recv().await {
        let written = match out {
            Outgoing::Frame(Frame::Text(text)) => session.text(text).await,
            Outgoing::Frame(Frame::Binary(bytes)) => session.binary(bytes).await,
            Outgoing::Close(code) => {
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: None,
                };
                let _ = session.close(Some(reason)).await;
                return;
            }
        };
        if written.is_err() {
            return;
        }
    }
    // The actor let go of the socket without a close frame.
    let _ = session.close(Some(CloseCode::Normal.into())).await;
}
