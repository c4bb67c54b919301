//! Taking a WebSocket's socket over from actix-http once the handshake is
//! answered.
//!
//! actix-http's HTTP/1 dispatcher holds an 8 KiB read buffer and an 8 KiB
//! write buffer for as long as its connection lives; on an idle WebSocket
//! they were half of the server's memory per session. Requests that ask for
//! a connection upgrade go instead to actix-http's upgrade hook
//! ([`serve`]), which gets the request with the socket. It runs the same
//! App on the request, with a [`Handover`] in the request's extensions:
//! - the WebSocket handshake claims it ([`Handover::claim`]) and reads the
//!   socket through [`SocketReader`] instead of a request body;
//! - once the App has answered 101 and the socket was claimed, the 101 is
//!   written (in one write with the frames the session queued meanwhile:
//!   its open packet), the dispatcher's buffers are dropped (bytes the client sent
//!   after its request are kept for the reader), and the frames go
//!   straight to the socket: from the session's [`Outbox`] (see
//!   [`Outbox::park`]), or for other WebSockets (the echo endpoint)
//!   the encoded chunks of the response body (actix-ws's);
//! - any other answer is written with `Connection: close` and the
//!   connection ends, as a refused upgrade should.
//!
//! The reader and the writer share the socket on the worker that accepted
//! it; reads go through one scratch buffer per worker, so an idle socket
//! holds no read buffer at all.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::{h1, ConnectionType, HttpMessage as _, Request, Response, StatusCode};
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceResponse};
use actix_web::rt::net::TcpStream;
use bytes::Bytes;
use futures_util::{SinkExt as _, Stream};

use super::outbox::Outbox;
use super::relay::{self, Relay};

/// Largest read from a socket at once (the per-worker scratch buffer).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Put in the extensions of a request that came through the upgrade hook:
/// the socket is there to be taken.
#[derive(Clone)]
pub struct Handover(Rc<Shared>);

#[derive(Default)]
struct Shared {
    /// The App took the socket (it answers 101 and reads it).
    claimed: Cell<bool>,
    /// The socket, once the 101 is written.
    socket: RefCell<Option<Rc<TcpStream>>>,
    /// What the client sent after its request, read first (boxed, like
    /// `relay`: rare, and this state lives as long as every socket).
    leftover: RefCell<Option<Box<Bytes>>>,
    /// The upgrade is over without a socket (refused, or the server failed
    /// to write the 101): the reader ends.
    ended: Cell<bool>,
    /// The reader, waiting for the socket.
    waker: RefCell<Option<Waker>>,
    /// Where the frames to write come from, when not from the response
    /// body.
    outbox: RefCell<Option<Arc<Outbox>>>,
    /// The other node the socket is spliced to, for a relayed WebSocket.
    relay: RefCell<Option<Box<Relay>>>,
}

impl Shared {
    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Handover {
    /// The handover of the request, if it came through the upgrade hook.
    pub fn of(req: &actix_web::HttpRequest) -> Option<Self> {
        use actix_web::HttpMessage as _;
        req.extensions().get::<Self>().cloned()
    }

    /// Takes the socket: the App answers 101 and reads it through the
    /// returned reader.
    pub fn claim(&self) -> SocketReader {
        self.0.claimed.set(true);
        SocketReader(self.0.clone())
    }

    /// After the 101, write `outbox` to the socket instead of the response
    /// body.
    pub fn write_from(&self, outbox: Arc<Outbox>) {
        *self.0.outbox.borrow_mut() = Some(outbox);
    }

    /// Takes the socket to splice it to `relay` once the 101 (the
    /// session's node's, passed on) is written: nothing here reads it.
    pub fn relay_to(&self, relay: Relay) {
        self.0.claimed.set(true);
        *self.0.relay.borrow_mut() = Some(Box::new(relay));
    }
}

/// The read side of a handed-over socket, as a request body stream. Ends
/// when the client ends its side (or the socket is shut down).
pub struct SocketReader(Rc<Shared>);

impl Stream for SocketReader {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.0;
        if let Some(bytes) = shared.leftover.borrow_mut().take() {
            return Poll::Ready(Some(Ok(*bytes)));
        }
        let Some(socket) = shared.socket.borrow().clone() else {
            if shared.ended.get() {
                return Poll::Ready(None);
            }
            *shared.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        };
        loop {
            match socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
                Poll::Ready(Ok(())) => {}
            }
            let read = SCRATCH.with_borrow_mut(|buf| socket.try_read(buf).map(|n| Bytes::copy_from_slice(&buf[..n])));
            match read {
                Ok(bytes) if bytes.is_empty() => return Poll::Ready(None),
                Ok(bytes) => return Poll::Ready(Some(Ok(bytes))),
                // Readiness was stale: poll again, which registers the waker.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
            }
        }
    }
}

/// Ends the reader of an upgrade that never got its socket.
struct EndOnDrop(Rc<Shared>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.ended.set(true);
        self.0.wake();
    }
}

/// The upgrade hook's service factory: `app` (the same App as for every
/// other request) answers each upgrade request, then [`serve`] does the
/// rest.
pub fn factory<F, B>(
    app: F,
    config: AppConfig,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    F: ServiceFactory<Request, Config = AppConfig, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    F::Service: 'static,
    B: MessageBody + 'static,
{
    actix_web::dev::fn_factory(move || {
        let app = app.new_service(config.clone());
        async move {
            let app = Rc::new(
                app.await
                    .map_err(|_| tracing::error!("the upgrade App failed to start"))?,
            );
            Ok(actix_web::dev::fn_service(move |(req, framed)| {
                serve(app.clone(), req, framed)
            }))
        }
    })
}

/// One upgrade request: the App's answer, then either the WebSocket on the
/// bare socket or the refusal and the end of the connection.
async fn serve<S, B>(app: Rc<S>, req: Request, framed: Framed<TcpStream, h1::Codec>) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    // Boxed: the App's future and the dispatcher's buffers are large.
    let (end, socket, body, outbox) = match Box::pin(answer(app, req, framed)).await? {
        None => return Ok(()),
        Some(Upgraded::Here(here)) => here,
        Some(Upgraded::Relayed(client, from_client, to)) => {
            actix_web::rt::spawn(relay::splice(client, from_client, to));
            return Ok(());
        }
    };
    // The WebSocket's writing goes on without this task (in the
    // connection and the flusher, then a task of its own), and this one
    // (actix-server's for the connection, sized for the whole HTTP/1
    // dispatcher: 2.7 KiB) ends now instead of living as long as the
    // socket. (The socket then no longer counts against the worker's
    // connection limit; `server.max_connections` bounds the sessions.)
    match outbox {
        Some(outbox) => {
            // The response body (actix-ws's channel) is not written: it
            // goes now, not when the socket closes, and is no part of the
            // writer's task (every session has one).
            drop(body);
            use std::os::fd::AsRawFd as _;
            let fd = socket.as_raw_fd();
            let writer = outbox.clone();
            // Started only when the socket fills or the session ends (see
            // `Outbox::park`): an idle session holds no writer task.
            outbox.park(
                fd,
                Box::new(move || {
                    actix_web::rt::spawn(async move {
                        let _end = end;
                        super::outbox::pump(&socket, &writer).await;
                        shut_down(&socket);
                    });
                }),
            );
        }
        None => {
            actix_web::rt::spawn(async move {
                let _end = end;
                write_body(&socket, body).await;
                shut_down(&socket);
            });
        }
    }
    Ok(())
}

/// Both directions: the reader sees the end too, and lets go of its share
/// of the socket.
fn shut_down(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
}

/// A handed-over socket and what to write to it: the response body, or an
/// outbox.
type Here = (EndOnDrop, Rc<TcpStream>, BoxBody, Option<Arc<Outbox>>);

/// A 101 written: the WebSocket served here, or spliced to another node
/// (with what the client sent after its request).
enum Upgraded {
    Here(Here),
    Relayed(TcpStream, Bytes, Relay),
}

/// Runs the App on `req`; writes its answer's head (a refusal whole). The
/// socket and body to pump when it was a 101 for a claimed socket.
async fn answer<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<Option<Upgraded>, actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let shared = Rc::new(Shared::default());
    let end = EndOnDrop(shared.clone());
    req.extensions_mut().insert(Handover(shared.clone()));
    let response: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.map_into_boxed_body().into(),
        Err(err) => Response::from(err),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS || !shared.claimed.get() {
        refuse(framed, response).await?;
        return Ok(None);
    }
    let (head, body) = response.into_parts();
    // Encoded, not written yet: the frames already queued go with it.
    framed.feed(h1::Message::Item((head, BodySize::Stream))).await?;
    // The dispatcher's buffers go here (a copy of what the client sent
    // after its request stays for the reader).
    let actix_codec::FramedParts {
        io,
        read_buf,
        mut write_buf,
        ..
    } = framed.into_parts();
    let relay = shared.relay.borrow_mut().take();
    if let Some(relay) = relay {
        write_all(&io, &write_buf).await?;
        return Ok(Some(Upgraded::Relayed(io, read_buf.freeze(), *relay)));
    }
    let outbox = shared.outbox.borrow_mut().take();
    // The session's first frames (its open packet) and the 101 in one
    // write: one trip through the kernel's TCP path (on loopback, the
    // receiver's too) instead of two.
    if let Some(queued) = outbox.as_ref().and_then(|outbox| outbox.take_unsent()) {
        write_buf.extend_from_slice(&queued);
    }
    write_all(&io, &write_buf).await?;
    if !read_buf.is_empty() {
        *shared.leftover.borrow_mut() = Some(Box::new(Bytes::copy_from_slice(&read_buf)));
    }
    let socket = Rc::new(io);
    *shared.socket.borrow_mut() = Some(socket.clone());
    shared.wake();
    Ok(Some(Upgraded::Here((end, socket, body, outbox))))
}

/// Writes the response body's chunks (actix-ws encodes every frame waiting
/// at a poll into one) until it ends or the socket fails.
async fn write_body(socket: &TcpStream, body: BoxBody) {
    let mut body = std::pin::pin!(body);
    while let Some(Ok(chunk)) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        if write_all(socket, &chunk).await.is_err() {
            return;
        }
    }
}

async fn write_all(socket: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match socket.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a refused upgrade's response (any answer but a 101 for a claimed
/// socket), then the connection ends.
async fn refuse(mut framed: Framed<TcpStream, h1::Codec>, response: Response<BoxBody>) -> Result<(), actix_web::Error> {
    let (mut head, body) = response.into_parts();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let size = body.size();
    framed.send(h1::Message::Item((head, size))).await?;
    if size == BodySize::None {
        return Ok(());
    }
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let chunk = chunk.map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
        framed.send(h1::Message::Chunk(Some(chunk))).await?;
    }
    framed.send(h1::Message::Chunk(None)).await?;
    Ok(())
}
