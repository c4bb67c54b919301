//! The WebSocket transport: the handshake response, a read pump that forwards
//! messages to the connection actor, and the sink the actor writes through.
//!
//! `actix_ws::MessageStream` is `!Send`, so the read pump runs on the worker
//! that accepted the request. It queues into the actor's bounded mailbox and
//! waits when it is full, so a client that floods is read no faster than its
//! actor keeps up. It holds no writer: when the actor lets go of the socket
//! the writer ends and the connection closes, read side included.
//!
//! Writes go to the socket's [`Outbox`]: the actor's frames through
//! [`OutboxSink`], and broadcasts from the broker directly (see
//! [`super::outbox`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::SendError;
use actix::Addr;
use actix_http::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, ProtocolError};
use bytes::Bytes;
use futures_util::FutureExt as _;

use crate::broker::DirectSink;
use crate::conn::messages::{FrameSink, SinkError, WsEnd, WsEnded, WsInbound, WsMessage, WsWriter};
use crate::conn::Connection;
use crate::engineio::Frame;
use crate::transport::frame_guard::FrameGuard;
use crate::transport::handover::Handover;
use crate::transport::outbox::{Outbox, OutboxBody, Stall};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A WebSocket accepted at the HTTP level, not yet tied to a session.
pub struct Accepted {
    response: HttpResponse,
    id: u64,
    outbox: Arc<Outbox>,
    sink: Option<Box<OutboxSink>>,
    stream: actix_ws::AggregatedMessageStream,
    /// What the socket's reader holds of the node's input budget.
    held: Arc<crate::limits::Held>,
}

/// Verifies the handshake headers (RFC 6455 §4.2.1: GET, `Upgrade:
/// websocket`, `Connection: Upgrade`, version 13, a 16-byte base64 key) and
/// builds the `101` response with `Sec-WebSocket-Accept`, the negotiated
/// subprotocol if any, and no extension (none is implemented). Frames for
/// the client go through an outbox of at most `backlog` frames.
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    websocket: &crate::config::WebSocketSettings,
    max_payload: usize,
    backlog: usize,
    metrics: Arc<crate::metrics::Metrics>,
    budget: Arc<crate::limits::InputBudget>,
) -> Option<Accepted> {
    let limits = ReadLimits::of(websocket, max_payload);
    let held = Arc::new(crate::limits::Held::new(budget));
    let (response, _actix_writer, stream, handover) = open(req, body, limits, Some(held.clone()))?;
    let write_timeout =
        (websocket.write_timeout_ms > 0).then(|| std::time::Duration::from_millis(websocket.write_timeout_ms));
    let coalesce = std::time::Duration::from_micros(websocket.broadcast_coalesce_us);
    let outbox = Outbox::new(backlog, write_timeout, coalesce, metrics);
    let (mut response, socket) = match handover {
        // The socket is written by the handover's pump.
        Some(handover) => {
            handover.write_from(outbox.clone());
            (response, None)
        }
        // The dispatcher writes the outbox as the response body; its
        // socket is shut down directly to drop a client that stopped
        // reading (the dispatcher polls no body while its buffer is full).
        None => (
            response.set_body(OutboxBody::new(outbox.clone())).map_into_boxed_body(),
            SocketRef::of(req),
        ),
    };
    if let Some(protocol) = negotiate(req, &websocket.subprotocols) {
        // unwrap: the value was a valid header value in the request.
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol).unwrap());
    }
    Some(Accepted {
        response,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        sink: Some(Box::new(OutboxSink {
            outbox: outbox.clone(),
            socket,
        })),
        outbox,
        stream,
        held,
    })
}

/// What the read side of a WebSocket refuses.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest frame and message (`engine.max_payload`).
    pub max_payload: usize,
    /// Most frames per message, 0 = any number (`websocket.max_fragments`).
    pub max_fragments: u32,
    /// Longest a message may take to arrive (`websocket.message_timeout_ms`).
    pub message_timeout: Option<std::time::Duration>,
}

impl ReadLimits {
    /// The limits `websocket` and `max_payload` describe.
    pub fn of(websocket: &crate::config::WebSocketSettings, max_payload: usize) -> Self {
        Self {
            max_payload,
            max_fragments: websocket.max_fragments,
            message_timeout: (websocket.message_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(websocket.message_timeout_ms)),
        }
    }
}

/// The WebSocket handshake (RFC 6455 §4.2.1) and the read side: frames
/// and messages above `max_payload` end the stream (close 1009), a frame
/// header declaring more is refused before its payload is read (see
/// [`super::frame_guard`]), and so is a message in more than
/// `max_fragments` frames or one that takes longer than `message_timeout`
/// to arrive. The response body is actix-ws's, written through its
/// session. `None`: not a valid handshake.
pub fn handshake(
    req: &HttpRequest,
    body: web::Payload,
    limits: ReadLimits,
) -> Option<(HttpResponse, actix_ws::Session, actix_ws::AggregatedMessageStream)> {
    open(req, body, limits, None).map(|(response, session, stream, _)| (response, session, stream))
}

/// [`handshake`], and the socket's handover if the request came through
/// the upgrade hook (the socket is then read directly; see
/// [`super::handover`]).
fn open(
    req: &HttpRequest,
    body: web::Payload,
    limits: ReadLimits,
    held: Option<Arc<crate::limits::Held>>,
) -> Option<(
    HttpResponse,
    actix_ws::Session,
    actix_ws::AggregatedMessageStream,
    Option<Handover>,
)> {
    use actix_web::FromRequest as _;
    actix_http::ws::verify_handshake(req.head()).ok()?;
    let ReadLimits {
        max_payload,
        max_fragments,
        message_timeout,
    } = limits;
    // Only an upgrade that actix-http did not route through the hook (one
    // with a chunked body, say) is read through its dispatcher.
    let handover = Handover::of(req);
    let source: actix_http::BoxedPayloadStream = match &handover {
        Some(handover) => Box::pin(handover.claim()),
        None => Box::pin(body.into_inner()),
    };
    let guarded: actix_http::BoxedPayloadStream = Box::pin(FrameGuard::new(
        source,
        max_payload,
        max_fragments,
        message_timeout,
        held,
    ));
    let mut guarded = actix_web::dev::Payload::from(guarded);
    let body = web::Payload::from_request(req, &mut guarded).now_or_never()?.ok()?;
    let (response, session, stream) = actix_ws::handle(req, body).ok()?;
    let stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    Some((response, session, stream, handover))
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
    /// The write side, for the actor. Taken once.
    pub fn writer(&mut self) -> Option<WsWriter> {
        let sink: Box<dyn FrameSink> = self.sink.take()?;
        Some(WsWriter {
            id: self.id,
            sink,
            held: Some(self.held.clone()),
        })
    }

    /// The 101 response alone, for a socket whose writer was closed at once.
    pub fn response(self) -> HttpResponse {
        self.response
    }

    /// Starts the read pump towards `addr` and returns the 101 response.
    pub fn run(self, addr: Addr<Connection>) -> HttpResponse {
        let (owner, id) = (addr.clone(), self.id);
        self.outbox.on_stall(Box::new(move |stall| {
            let end = match stall {
                Stall::QueueFull => WsEnd::QueueFull,
                Stall::WriteTimeout => WsEnd::WriteTimeout,
            };
            owner.do_send(WsEnded { id, end });
        }));
        actix_web::rt::spawn(read_loop(addr, self.id, self.stream));
        self.response
    }
}

async fn read_loop(addr: Addr<Connection>, id: u64, mut stream: actix_ws::AggregatedMessageStream) {
    let end = loop {
        let message = match stream.recv().await {
            None => break WsEnd::Closed,
            Some(Ok(m)) => m,
            Some(Err(err)) => break classify(&err),
        };
        let message = match message {
            AggregatedMessage::Text(text) => WsMessage::Text(text),
            AggregatedMessage::Binary(bytes) => WsMessage::Binary(bytes),
            AggregatedMessage::Ping(bytes) => WsMessage::Ping(bytes),
            AggregatedMessage::Pong(_) => continue,
            AggregatedMessage::Close(_) => break WsEnd::Closed,
        };
        // Queue without a round trip while the mailbox has room, so frames
        // read together reach the actor together; wait when it is full.
        match addr.try_send(WsInbound { id, message }) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                // Boxed: the request's 200 bytes would otherwise be part of
                // every idle socket's read pump, for a wait few of them do.
                if Box::pin(addr.send(msg)).await.is_err() {
                    return;
                }
            }
            Err(SendError::Closed(_)) => return, // the session is gone
        }
    };
    addr.do_send(WsEnded { id, end });
}

/// What a read error means for the session (and the close code it gets).
pub(crate) fn classify(err: &ProtocolError) -> WsEnd {
    use std::io::ErrorKind;
    match err {
        ProtocolError::Overflow => WsEnd::TooLarge,
        // The frame guard refused a frame header declaring too much.
        ProtocolError::Io(e) if payload_error(e).is_some_and(|p| matches!(p, PayloadError::Overflow)) => {
            WsEnd::TooLarge
        }
        ProtocolError::Io(e) if payload_error(e).is_some_and(crate::transport::frame_guard::is_message_timeout) => {
            WsEnd::MessageTimeout
        }
        ProtocolError::Io(e) if payload_error(e).is_some_and(crate::transport::frame_guard::is_over_budget) => {
            WsEnd::OverBudget
        }
        ProtocolError::Io(e) if payload_error(e).is_some_and(crate::transport::frame_guard::is_protocol_violation) => {
            WsEnd::Error(e.to_string())
        }
        // actix-ws reports an aggregated message above the limit as an
        // untyped I/O error with this text (actix-ws 0.3
        // `aggregated::size_error`); tests/ws_echo.rs pins it.
        ProtocolError::Io(e) if e.to_string().contains("maximum continuation size") => WsEnd::TooLarge,
        // actix-http reports non-zero reserved bits as InvalidData too
        // (`frame::Parser::parse_metadata`): a protocol error. Every other
        // InvalidData is a text message that is not UTF-8.
        ProtocolError::Io(e) if e.kind() == ErrorKind::InvalidData && e.to_string().contains("reserved bits") => {
            WsEnd::Error(e.to_string())
        }
        ProtocolError::Io(e) if e.kind() == ErrorKind::InvalidData => WsEnd::InvalidUtf8,
        // The peer went away without a close frame (its TCP connection
        // ended or was reset): Node's engine.io reports that as "transport
        // close" too (the ws library's close event, code 1006).
        ProtocolError::Io(e) if peer_gone(e) => WsEnd::Closed,
        other => WsEnd::Error(other.to_string()),
    }
}

/// The request body's error under an I/O error from actix-ws, if that is
/// what it is.
fn payload_error(e: &std::io::Error) -> Option<&PayloadError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<PayloadError>())
}

fn peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    let incomplete = payload_error(e).is_some_and(|p| matches!(p, PayloadError::Incomplete(_)));
    incomplete
        || matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        )
}

/// The file descriptor of a connection's socket, recorded by
/// [`record_fd`] when the connection is accepted.
#[derive(Clone, Copy)]
pub struct ConnFd(pub std::os::fd::RawFd);

/// The on-connect hook: records each connection's socket fd.
pub fn record_fd(tcp: &actix_web::rt::net::TcpStream, ext: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd as _;
    ext.insert(ConnFd(tcp.as_raw_fd()));
}

/// Where a request's socket is, to abort it later without holding a second
/// file descriptor for it (that would halve the sessions an fd limit
/// allows): its fd number, its peer address (to tell it from a later socket
/// that reused the number) and the worker that owns it.
#[derive(Clone)]
pub struct SocketRef {
    fd: std::os::fd::RawFd,
    peer: std::net::SocketAddr,
    worker: actix_rt::ArbiterHandle,
}

impl SocketRef {
    fn of(req: &HttpRequest) -> Option<Self> {
        Some(Self {
            fd: req.conn_data::<ConnFd>()?.0,
            peer: req.peer_addr()?,
            worker: actix_rt::Arbiter::current(),
        })
    }

    /// Shuts the socket down on its worker. There the connection cannot be
    /// dropped meanwhile: either its fd is still open, or it was closed
    /// before and the number, if reused, belongs to a socket with another
    /// peer, which is left alone.
    fn abort(self) {
        let Self { fd, peer, worker } = self;
        worker.spawn_fn(move || {
            // SAFETY: only used while this closure runs on the worker that
            // owns the connection; an fd that is closed or not a socket makes
            // the calls below fail, and a reused one fails the peer check.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&borrowed);
            if socket.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer) {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        });
    }
}

/// [`FrameSink`] over an [`Outbox`].
pub struct OutboxSink {
    outbox: Arc<Outbox>,
    /// The socket, when actix-http's dispatcher writes it (see [`accept`]).
    socket: Option<SocketRef>,
}

/// A sink let go of without a close (its session ended some other way)
/// still ends the socket, after what is queued.
impl Drop for OutboxSink {
    fn drop(&mut self) {
        self.outbox.close(crate::conn::close_code::NORMAL);
    }
}

impl FrameSink for OutboxSink {
    fn write(&mut self, frame: Frame) -> Result<(), SinkError> {
        self.outbox.push_frame(&frame)
    }

    fn pong(&mut self, payload: Bytes) {
        self.outbox.pong(&payload);
    }

    fn abort(self: Box<Self>) {
        self.outbox.abort();
        if let Some(socket) = self.socket.clone() {
            socket.abort();
        }
    }

    fn close(self: Box<Self>, code: u16) {
        self.outbox.close(code);
    }

    fn direct(&self) -> Option<Arc<dyn DirectSink>> {
        Some(self.outbox.clone())
    }
}
