//! The WebSocket transport: the handshake response, a read pump that forwards
//! messages to the connection actor, and the sink the actor writes through.
//!
//! `actix_ws::MessageStream` is `!Send`, so the read pump runs on the worker
//! that accepted the request. It queues into the actor's bounded mailbox and
//! waits when it is full, so a client that floods is read no faster than its
//! actor keeps up. It holds no writer: when the actor lets go of the socket
//! the response body ends and the connection closes, read side included.
//!
//! Writes: the actor queues frames straight into the `actix_ws::Session`
//! channel, whose response body encodes every frame waiting at the time of a
//! poll into one buffer (one write for many frames). When that channel is
//! full, frames wait in an ordered backlog (bounded: beyond it the client is
//! a slow consumer) that a task drains; everything after them waits behind
//! them, so order is kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::SendError;
use actix::Addr;
use actix_http::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use futures_util::FutureExt as _;

use crate::conn::messages::{FrameSink, SinkError, WsEnd, WsEnded, WsInbound, WsMessage, WsWriter};
use crate::conn::Connection;
use crate::engineio::Frame;
use crate::transport::frame_guard::FrameGuard;
use crate::transport::handover::Handover;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A WebSocket accepted at the HTTP level, not yet tied to a session.
pub struct Accepted {
    response: HttpResponse,
    id: u64,
    /// The sink's backlog, to tell its drain task whom to report to.
    backlog: Arc<Mutex<Backlog>>,
    sink: Option<Box<ActixSink>>,
    stream: actix_ws::AggregatedMessageStream,
}

/// Verifies the handshake headers (RFC 6455 §4.2.1: GET, `Upgrade:
/// websocket`, `Connection: Upgrade`, version 13, a 16-byte base64 key) and
/// builds the `101` response with `Sec-WebSocket-Accept`, the negotiated
/// subprotocol if any, and no extension (none is implemented).
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    websocket: &crate::config::WebSocketSettings,
    max_payload: usize,
    backlog: usize,
) -> Option<Accepted> {
    let (mut response, session, stream) = handshake(req, body, ReadLimits::of(websocket, max_payload))?;
    if let Some(protocol) = negotiate(req, &websocket.subprotocols) {
        // unwrap: the value was a valid header value in the request.
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol).unwrap());
    }
    let write_timeout =
        (websocket.write_timeout_ms > 0).then(|| std::time::Duration::from_millis(websocket.write_timeout_ms));
    let sink = ActixSink::new(session, backlog, SocketRef::of(req), write_timeout);
    Some(Accepted {
        response,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        backlog: sink.backlog.clone(),
        sink: Some(Box::new(sink)),
        stream,
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
/// to arrive. `None`: not a valid handshake.
pub fn handshake(
    req: &HttpRequest,
    body: web::Payload,
    limits: ReadLimits,
) -> Option<(HttpResponse, actix_ws::Session, actix_ws::AggregatedMessageStream)> {
    use actix_web::FromRequest as _;
    actix_http::ws::verify_handshake(req.head()).ok()?;
    let ReadLimits {
        max_payload,
        max_fragments,
        message_timeout,
    } = limits;
    // A request that came through the upgrade hook brings its socket: it is
    // read directly (see `super::handover`). Only an upgrade that actix-http
    // did not route there (one with a chunked body, say) is read through its
    // dispatcher.
    let source: actix_http::BoxedPayloadStream = match Handover::of(req) {
        Some(handover) => Box::pin(handover.claim()),
        None => Box::pin(body.into_inner()),
    };
    let guarded: actix_http::BoxedPayloadStream =
        Box::pin(FrameGuard::new(source, max_payload, max_fragments, message_timeout));
    let mut guarded = actix_web::dev::Payload::from(guarded);
    let body = web::Payload::from_request(req, &mut guarded).now_or_never()?.ok()?;
    let (response, session, stream) = actix_ws::handle(req, body).ok()?;
    let stream = stream
        .max_frame_size(max_payload)
        .aggregate_continuations()
        .max_continuation_size(max_payload);
    Some((response, session, stream))
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
        Some(WsWriter { id: self.id, sink })
    }

    /// The 101 response alone, for a socket whose writer was closed at once.
    pub fn response(self) -> HttpResponse {
        self.response
    }

    /// Starts the read pump towards `addr` and returns the 101 response.
    pub fn run(self, addr: Addr<Connection>) -> HttpResponse {
        // unwrap: the lock is only held for queue operations.
        self.backlog.lock().unwrap().owner = Some((addr.clone(), self.id));
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
                if addr.send(msg).await.is_err() {
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

/// Frames waiting behind a full socket queue, shared with the drain task.
#[derive(Default)]
struct Backlog {
    frames: VecDeque<Frame>,
    /// A drain task is running: new frames go behind the backlog.
    draining: bool,
    /// Close with this code once the backlog is written.
    close: Option<u16>,
    /// The session this socket belongs to and the socket's id, told when a
    /// write times out.
    owner: Option<(Addr<Connection>, u64)>,
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

/// [`FrameSink`] over an `actix_ws::Session`.
pub struct ActixSink {
    session: actix_ws::Session,
    backlog: Arc<Mutex<Backlog>>,
    limit: usize,
    /// The socket, to abort a connection whose client stopped reading:
    /// actix does not poll the response body while its write buffer is
    /// full, so ending the body would not free it.
    socket: Option<SocketRef>,
    /// Longest a frame may wait for room (`websocket.write_timeout_ms`).
    write_timeout: Option<std::time::Duration>,
}

impl ActixSink {
    fn new(
        session: actix_ws::Session,
        limit: usize,
        socket: Option<SocketRef>,
        write_timeout: Option<std::time::Duration>,
    ) -> Self {
        Self {
            session,
            backlog: Arc::default(),
            limit,
            socket,
            write_timeout,
        }
    }

    /// Queues a frame if the socket's channel has room right now. `None`
    /// means full (the frame was not queued). Unconstrained: tokio's
    /// cooperative budget must not make a free channel look full.
    fn try_now(session: &mut actix_ws::Session, frame: &Frame) -> Option<Result<(), actix_ws::Closed>> {
        match frame {
            Frame::Text(text) => tokio::task::unconstrained(session.text(text.clone())).now_or_never(),
            Frame::Binary(bytes) => tokio::task::unconstrained(session.binary(bytes.clone())).now_or_never(),
        }
    }

    /// Starts the task that writes the backlog in order, waiting for room.
    fn spawn_drain(&self, session: actix_ws::Session) {
        let drain = Drain {
            session,
            backlog: self.backlog.clone(),
            socket: self.socket.clone(),
            write_timeout: self.write_timeout,
        };
        actix_web::rt::spawn(drain.run());
    }
}

/// Writes a socket's backlog while its channel is full.
struct Drain {
    session: actix_ws::Session,
    backlog: Arc<Mutex<Backlog>>,
    socket: Option<SocketRef>,
    write_timeout: Option<std::time::Duration>,
}

impl Drain {
    /// `write`, within the write timeout. `false`: the socket is gone, or
    /// the client took nothing for the whole timeout, in which case its
    /// session is told (a slow consumer) or, when closing, the socket is
    /// dropped.
    async fn within<F>(&self, write: F, closing: bool) -> bool
    where
        F: std::future::Future<Output = Result<(), actix_ws::Closed>>,
    {
        let result = match self.write_timeout {
            Some(limit) => tokio::time::timeout(limit, write).await,
            None => Ok(write.await),
        };
        match result {
            Ok(written) => written.is_ok(),
            Err(_) => {
                // unwrap: the lock is only held for queue operations.
                let owner = self.backlog.lock().unwrap().owner.clone();
                match owner {
                    Some((addr, id)) if !closing => addr.do_send(WsEnded {
                        id,
                        end: WsEnd::WriteTimeout,
                    }),
                    _ => {
                        if let Some(socket) = self.socket.clone() {
                            socket.abort();
                        }
                    }
                }
                false
            }
        }
    }

    async fn run(self) {
        loop {
            let next = {
                // unwrap: the lock is only held for queue operations.
                let mut b = self.backlog.lock().unwrap();
                match b.frames.pop_front() {
                    Some(frame) => Ok(frame),
                    None => {
                        b.draining = false;
                        Err(b.close.take())
                    }
                }
            };
            let mut session = self.session.clone();
            let written = match next {
                Ok(Frame::Text(text)) => self.within(session.text(text), false).await,
                Ok(Frame::Binary(bytes)) => self.within(session.binary(bytes), false).await,
                Err(close) => {
                    if let Some(code) = close {
                        self.within(session.close(Some(close_reason(code))), true).await;
                    }
                    return;
                }
            };
            if !written {
                return;
            }
        }
    }
}

fn close_reason(code: u16) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: None,
    }
}

impl FrameSink for ActixSink {
    fn write(&mut self, frame: Frame) -> Result<(), SinkError> {
        // unwrap: the lock is only held for queue operations.
        let mut b = self.backlog.lock().unwrap();
        if !b.draining {
            match Self::try_now(&mut self.session, &frame) {
                Some(Ok(())) => return Ok(()),
                Some(Err(_)) => return Err(SinkError::Closed),
                None => {
                    b.draining = true;
                    self.spawn_drain(self.session.clone());
                }
            }
        }
        if b.frames.len() >= self.limit {
            return Err(SinkError::Full);
        }
        b.frames.push_back(frame);
        Ok(())
    }

    fn pong(&mut self, payload: Bytes) {
        let _ = tokio::task::unconstrained(self.session.pong(&payload)).now_or_never();
    }

    fn abort(self: Box<Self>) {
        if let Some(socket) = self.socket {
            socket.abort();
        }
        // unwrap: the lock is only held for queue operations.
        let mut b = self.backlog.lock().unwrap();
        b.frames.clear();
        b.close = None;
    }

    fn close(self: Box<Self>, code: u16) {
        // `Session::close` marks every clone closed before it waits for room,
        // so it is only called from the drain task, after the backlog.
        // unwrap: the lock is only held for queue operations.
        let backlog = self.backlog.clone();
        let mut b = backlog.lock().unwrap();
        b.close = Some(code);
        if !b.draining {
            b.draining = true;
            self.spawn_drain(self.session.clone());
        }
    }
}
