//! The WebSocket transport: the handshake response, the read side the
//! connection actor reads, and the sink the actor writes through.
//!
//! A new WebSocket session's actor reads its socket itself, as a stream of
//! its context ([`WsReader`], which parses the frames; the socket it reads
//! is the worker's, `!Send`, and the actor runs on that worker). A probe
//! (an upgrade of a polling session, whose actor already runs) gets a read
//! pump that queues into the actor's bounded mailbox and waits when it is
//! full. Either way a client that floods is read no faster than its actor
//! keeps up, and a session's publishes past its publish window stop the
//! reading until the broker answers. The reader holds no writer: when the
//! actor lets go of the socket the writer ends and the connection closes,
//! read side included. (The echo endpoint reads through the same reader.)
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
use actix_ws::ProtocolError;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;

use crate::broker::DirectSink;
use crate::conn::messages::{FrameSink, SinkError, WsEnd, WsEnded, WsInbound, WsMessage, WsRead, WsWriter};
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
    /// The read side, until [`Accepted::reader`] takes it.
    reader: Option<WsReader>,
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
    actix_http::ws::verify_handshake(req.head()).ok()?;
    let (source, handover) = guarded(req, body, limits, Some(held.clone()));
    let response: HttpResponse = actix_http::ws::handshake_response(req.head())
        .message_body(actix_web::body::BoxBody::new(()))
        .ok()?
        .into();
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
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Some(Accepted {
        response,
        sink: Some(Box::new(OutboxSink {
            outbox: outbox.clone(),
            socket,
        })),
        outbox,
        reader: Some(WsReader::new(id, source, max_payload)),
        id,
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
) -> Option<(HttpResponse, actix_ws::Session, WsReader)> {
    use actix_web::FromRequest as _;
    actix_http::ws::verify_handshake(req.head()).ok()?;
    let (guarded, _) = guarded(req, body, limits, None);
    // actix-ws only writes here: its read side gets no bytes.
    let mut none = actix_web::dev::Payload::None;
    let unread = web::Payload::from_request(req, &mut none).now_or_never()?.ok()?;
    let (response, session, _) = actix_ws::handle(req, unread).ok()?;
    Some((response, session, WsReader::new(0, guarded, limits.max_payload)))
}

/// The socket's bytes through a [`FrameGuard`] (with `held`, counted in
/// the node's input budget), and the socket's handover if the request came
/// through the upgrade hook (the socket is then read directly; see
/// [`super::handover`]).
fn guarded(
    req: &HttpRequest,
    body: web::Payload,
    limits: ReadLimits,
    held: Option<Arc<crate::limits::Held>>,
) -> (actix_http::BoxedPayloadStream, Option<Handover>) {
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
    (guarded, handover)
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

    /// The read side, for a new session's actor to read itself
    /// ([`crate::conn::Connection::start`]). Taken once.
    pub fn reader(&mut self) -> Option<WsReader> {
        self.reader.take()
    }

    /// Ties the socket to its session's actor `addr` and returns the 101
    /// response. A read side still here (a probe's, for a session whose
    /// actor runs already) gets a read pump of its own, towards `addr`.
    pub fn run(mut self, addr: Addr<Connection>) -> HttpResponse {
        let (owner, id) = (addr.clone(), self.id);
        self.outbox.on_stall(Box::new(move |stall| {
            let end = match stall {
                Stall::QueueFull => WsEnd::QueueFull,
                Stall::WriteTimeout => WsEnd::WriteTimeout,
            };
            owner.do_send(WsEnded { id, end });
        }));
        if let Some(reader) = self.reader() {
            actix_web::rt::spawn(read_loop(addr, reader));
        }
        self.response
    }
}

/// A WebSocket's read side as a stream of [`WsRead`]. A new session's
/// actor reads it as a stream of its own (`Context::add_stream`): no task
/// and no mailbox hop between the socket and the session, and the socket
/// is read only as fast as the actor handles what it sent (an actor that
/// waits, say on a full publish window, reads nothing meanwhile).
///
/// Frames are parsed here (actix-http's parser) rather than by actix-ws's
/// stream, which reads whatever the socket has into one growing buffer and
/// keeps that buffer's capacity for the socket's life: a client that sent
/// a few large messages once pinned megabytes its input budget no longer
/// counted. This reader reads only while it has no whole frame, reserves
/// each frame's exact size, and lets go of its buffer whenever it is
/// empty, so what it holds is what the frame guard counts.
pub struct WsReader {
    id: u64,
    /// The socket's bytes through the frame guard; `None` once the end
    /// was told.
    source: Option<actix_http::BoxedPayloadStream>,
    /// Bytes read and not yet parsed.
    buf: BytesMut,
    /// Largest frame and message.
    max: usize,
    /// A message in several frames under way: whether it is text, and its
    /// data so far.
    partial: Option<Box<(bool, BytesMut)>>,
    /// The client's close frame, once read: its code, if it had one.
    close: Option<Option<actix_http::ws::CloseCode>>,
}

/// Frames above this size leave the reader's buffer to a copy of what
/// follows them (see [`WsReader::parse`]).
const READ_KEEP: usize = 4 * 1024;

impl WsReader {
    fn new(id: u64, source: actix_http::BoxedPayloadStream, max: usize) -> Self {
        Self {
            id,
            source: Some(source),
            buf: BytesMut::new(),
            max,
            partial: None,
            close: None,
        }
    }

    /// The close frame that ended the reading, if one did: `Some(None)`
    /// for one without a code.
    pub fn close_frame(&self) -> Option<Option<actix_http::ws::CloseCode>> {
        self.close
    }

    /// The next message from the frames in `buf`: `Ok(None)` when a whole
    /// one is not there yet.
    fn parse(&mut self) -> Result<Option<WsMessage>, WsEnd> {
        use actix_http::ws::{OpCode, Parser};
        loop {
            // Parsed only once whole: the parser reserves a frame's whole
            // declared size as soon as it sees the header, before the data
            // (which the frame guard counts as it arrives) is there.
            if !frame_complete(&self.buf) {
                return Ok(None);
            }
            let Some((fin, op, data)) = Parser::parse(&mut self.buf, true, self.max).map_err(|e| classify(&e))? else {
                return Ok(None);
            };
            // The frame's data shares the buffer's allocation: the buffer
            // lets go of it, keeping a copy of what follows the frame (at
            // most what came in the same reads), so that a message taken
            // and dropped frees its memory and an idle socket holds none.
            if self.buf.is_empty() {
                self.buf = BytesMut::new();
            } else if data.as_ref().is_some_and(|d| d.len() > READ_KEEP) {
                self.buf = BytesMut::from(&self.buf[..]);
            }
            let data = data.unwrap_or_default();
            let whole = match op {
                // RFC 6455 §5.5: control frames are never fragmented.
                OpCode::Ping | OpCode::Pong | OpCode::Close if !fin => {
                    return Err(classify(&ProtocolError::ContinuationFragment(op)));
                }
                OpCode::Ping => return Ok(Some(WsMessage::Ping(data.freeze()))),
                OpCode::Pong => continue,
                OpCode::Close => {
                    // RFC 6455 §5.5.1, §7.4: a code the protocol allows and a
                    // UTF-8 reason, or no payload at all.
                    let reason = Parser::try_parse_close_payload(&data).map_err(|e| classify(&e))?;
                    self.close = Some(reason.map(|r| r.code));
                    return Err(WsEnd::Closed);
                }
                OpCode::Text | OpCode::Binary if self.partial.is_some() => {
                    return Err(classify(&ProtocolError::ContinuationStarted));
                }
                OpCode::Text | OpCode::Binary if !fin => {
                    self.partial = Some(Box::new((op == OpCode::Text, data)));
                    continue;
                }
                OpCode::Text | OpCode::Binary => (op == OpCode::Text, data),
                OpCode::Continue => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(classify(&ProtocolError::ContinuationNotStarted));
                    };
                    if partial.1.len() + data.len() > self.max {
                        return Err(WsEnd::TooLarge);
                    }
                    partial.1.extend_from_slice(&data);
                    if !fin {
                        continue;
                    }
                    // unwrap: matched just above.
                    *self.partial.take().unwrap()
                }
                OpCode::Bad => return Err(classify(&ProtocolError::BadOpCode)),
            };
            return Ok(Some(match whole {
                (true, data) => {
                    WsMessage::Text(bytestring::ByteString::try_from(data.freeze()).map_err(|_| WsEnd::InvalidUtf8)?)
                }
                (false, data) => WsMessage::Binary(data.freeze()),
            }));
        }
    }
}

/// Whether `buf` starts with a whole frame (header, mask key and payload),
/// or with a header whose length the parser refuses.
fn frame_complete(buf: &[u8]) -> bool {
    let Some((header, len)) = crate::transport::frame_guard::frame_header(buf) else {
        return false;
    };
    // A length past `usize` goes to the parser at once, to be refused.
    // (One above `engine.max_payload` never gets here: the frame guard
    // refuses its header.)
    usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(header))
        .is_none_or(|whole| buf.len() >= whole)
}

impl futures_util::Stream for WsReader {
    type Item = WsRead;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WsRead>> {
        use std::task::Poll;
        let this = &mut *self;
        let id = this.id;
        if this.source.is_none() {
            return Poll::Ready(None);
        }
        let end = loop {
            match this.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(WsRead::Message(WsInbound { id, message }))),
                Ok(None) => {}
                Err(end) => break end,
            }
            // unwrap: checked above, and set to `None` only on the way out.
            match this.source.as_mut().unwrap().as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // A read into an empty buffer becomes the buffer (the
                // socket's reads are copies of their own, exactly sized).
                Poll::Ready(Some(Ok(chunk))) if this.buf.is_empty() => {
                    this.buf = chunk
                        .try_into_mut()
                        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                }
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => break classify(&ProtocolError::Io(std::io::Error::other(e))),
                Poll::Ready(None) => break WsEnd::Closed,
            }
        };
        this.source = None;
        this.buf = BytesMut::new();
        this.partial = None;
        Poll::Ready(Some(WsRead::End(WsEnded { id, end })))
    }
}

/// A read pump of its own, for a probe (the session's actor was started
/// before this socket existed): forwards what `reader` reads to `addr`.
async fn read_loop(addr: Addr<Connection>, mut reader: WsReader) {
    use futures_util::StreamExt as _;
    while let Some(read) = reader.next().await {
        let msg = match read {
            WsRead::Message(msg) => msg,
            WsRead::End(ended) => {
                addr.do_send(ended);
                return;
            }
        };
        // Queue without a round trip while the mailbox has room, so frames
        // read together reach the actor together; wait when it is full.
        match addr.try_send(msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                // Boxed: the request's 200 bytes would otherwise be part of
                // every idle probe's read pump, for a wait few of them do.
                if Box::pin(addr.send(msg)).await.is_err() {
                    return;
                }
            }
            Err(SendError::Closed(_)) => return, // the session is gone
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{OpCode, Parser};
    use futures_util::{Stream as _, StreamExt as _};

    /// A client's (masked) frame.
    fn frame(payload: &[u8], op: OpCode, fin: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        Parser::write_message(&mut out, payload, op, fin, true);
        out.to_vec()
    }

    /// A reader of `bytes`, arriving in chunks of `chunk` bytes.
    fn reader(bytes: Vec<u8>, chunk: usize) -> WsReader {
        let chunks: Vec<Result<Bytes, PayloadError>> =
            bytes.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        WsReader::new(7, Box::pin(futures_util::stream::iter(chunks)), 1 << 20)
    }

    async fn messages(mut reader: WsReader) -> (Vec<WsMessage>, WsEnd) {
        let mut got = Vec::new();
        while let Some(read) = reader.next().await {
            match read {
                WsRead::Message(m) => got.push(m.message),
                WsRead::End(ended) => return (got, ended.end),
            }
        }
        panic!("the reader ended without telling how");
    }

    #[actix_web::test]
    async fn fragments_are_joined_and_control_frames_pass_between_them() {
        let mut bytes = frame(b"hel", OpCode::Text, false);
        bytes.extend(frame(b"p", OpCode::Ping, true));
        bytes.extend(frame(b"lo ", OpCode::Continue, false));
        bytes.extend(frame(b"x", OpCode::Pong, true));
        bytes.extend(frame("wörld".as_bytes(), OpCode::Continue, true));
        bytes.extend(frame(&[1, 2, 3], OpCode::Binary, true));
        let (got, end) = messages(reader(bytes, 3)).await;
        assert!(matches!(&got[0], WsMessage::Ping(p) if &p[..] == b"p"));
        assert!(matches!(&got[1], WsMessage::Text(t) if &**t == "hello wörld"));
        assert!(matches!(&got[2], WsMessage::Binary(b) if b[..] == [1, 2, 3]));
        assert_eq!(got.len(), 3);
        assert_eq!(end, WsEnd::Closed, "the source ended");
    }

    #[actix_web::test]
    async fn a_large_message_taken_leaves_no_buffer_behind() {
        let payload = vec![0x5a; 600_000];
        let mut bytes = frame(&payload, OpCode::Binary, true);
        // The next frame's first bytes come in the same read.
        let next = frame(b"next", OpCode::Text, true);
        bytes.extend_from_slice(&next[..3]);
        let mut reader = reader(bytes, 16 * 1024);
        let Some(WsRead::Message(first)) = reader.next().await else {
            panic!("the large message first");
        };
        assert!(matches!(first.message, WsMessage::Binary(b) if b.len() == payload.len()));
        assert_eq!(reader.buf.len(), 3);
        assert!(
            reader.buf.capacity() < 1024,
            "what follows the frame is kept in a buffer of its own, not the frame's ({} bytes)",
            reader.buf.capacity()
        );
    }

    #[actix_web::test]
    async fn the_buffer_grows_with_what_arrived_not_with_what_a_header_declares() {
        let whole = frame(&vec![1; 900_000], OpCode::Binary, true);
        // 20 kB of the frame, one read of 4 kB at a time, each after the
        // socket had nothing for a while.
        let mut chunks = whole[..20_000]
            .chunks(4096)
            .map(Bytes::copy_from_slice)
            .collect::<Vec<_>>()
            .into_iter();
        let mut waiting = false;
        let trickle = futures_util::stream::poll_fn(move |_| {
            waiting = !waiting;
            if waiting {
                return std::task::Poll::Pending;
            }
            match chunks.next() {
                Some(chunk) => std::task::Poll::Ready(Some(Ok(chunk))),
                // The client stops sending: the socket stays open.
                None => std::task::Poll::Pending,
            }
        });
        let mut reader = WsReader::new(7, Box::pin(trickle), 1 << 20);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..20 {
            assert!(std::pin::Pin::new(&mut reader).poll_next(&mut cx).is_pending());
        }
        assert_eq!(reader.buf.len(), 20_000, "everything that came is read");
        assert!(
            reader.buf.capacity() < 64 * 1024,
            "a 900 kB frame's first 20 kB took a buffer of {} bytes",
            reader.buf.capacity()
        );
    }

    #[actix_web::test]
    async fn bad_frames_end_the_reader_with_their_reason() {
        let (_, end) = messages(reader(frame(&[0xff, 0xfe], OpCode::Text, true), 64)).await;
        assert_eq!(end, WsEnd::InvalidUtf8);
        let (_, end) = messages(reader(frame(b"x", OpCode::Continue, true), 64)).await;
        assert!(matches!(end, WsEnd::Error(_)), "{end:?}");
        let mut bytes = frame(b"a", OpCode::Text, false);
        bytes.extend(frame(b"b", OpCode::Text, true));
        let (_, end) = messages(reader(bytes, 64)).await;
        assert!(matches!(end, WsEnd::Error(_)), "{end:?}");
        let (got, end) = messages(reader(frame(b"p", OpCode::Ping, false), 64)).await;
        assert!(
            got.is_empty() && matches!(end, WsEnd::Error(_)),
            "a fragmented ping: {end:?}"
        );
        let mut unmasked = BytesMut::new();
        Parser::write_message(&mut unmasked, b"hi", OpCode::Text, true, false);
        let (_, end) = messages(reader(unmasked.to_vec(), 64)).await;
        assert!(matches!(end, WsEnd::Error(_)), "{end:?}");
        let mut bytes = frame(b"ok", OpCode::Text, true);
        let mut close = BytesMut::new();
        Parser::write_close(&mut close, None, true);
        bytes.extend(close.to_vec());
        bytes.extend(frame(b"after", OpCode::Text, true));
        let (got, end) = messages(reader(bytes, 64)).await;
        assert_eq!(got.len(), 1, "nothing after the close frame");
        assert_eq!(end, WsEnd::Closed);
    }
}
