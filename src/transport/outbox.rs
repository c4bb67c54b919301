//! The write side of a WebSocket: a queue of encoded frames that the
//! connection actor and the broker both append to, and that one writer
//! empties into the socket.
//!
//! Why not a message per frame: a broadcast to a thousand sockets was a
//! thousand actor messages, a thousand channel pushes and a thousand
//! writes, and at saturation the writes (the kernel's TCP send path) were
//! half of the server's time. Here the broker encodes a publish once (the
//! WebSocket frame, shared as [`Bytes`]) and appends it to each member's
//! [`Outbox`] itself ([`DirectSink`]); the connection appends its own
//! frames (acks, pings, the close) the same way. Whatever is queued when
//! the writer runs leaves in one `writev`, so frames coalesce by
//! themselves as load grows, without a timer, and a quiet socket still
//! gets each frame at once.
//!
//! Wake-ups: an outbox that gets its first frame is put on its worker's
//! [`Flusher`] list, and the flusher (a task on the worker that owns the
//! socket) wakes the writers on it. A publish from the broker's thread to a
//! thousand sockets of one worker is then one cross-thread wake, not a
//! thousand.
//!
//! Bounds: the queue holds at most `limit` frames. Past that, a socket
//! whose client stopped reading (the kernel's buffer is full) is reported
//! to its connection as a slow consumer and refused; a socket that is only
//! behind because the server is (its client reads) drops broadcasts, which
//! the broker counts. A writer that makes no progress for
//! `websocket.write_timeout_ms` reports a write timeout.
//!
//! Writers: [`pump`] for a socket taken over at the upgrade (see
//! [`super::handover`]), or [`OutboxBody`] as the response body of a
//! WebSocket that stays with actix-http's dispatcher.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Buf as _, Bytes, BytesMut};

use crate::broker::{Broadcast, DirectSink, Pushed};
use crate::engineio::Frame;
use crate::metrics::Metrics;

/// Most buffers one `writev` takes.
const IOV_MAX: usize = 64;

/// Why an outbox gave up on its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// The queue is full and the client reads nothing.
    QueueFull,
    /// Nothing could be written for the whole write timeout.
    WriteTimeout,
}

/// Told once when the outbox gives up on its client (its connection).
pub type OnStall = Box<dyn FnOnce(Stall) + Send>;

/// Where the outbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Frames are accepted.
    Open,
    /// A close frame is queued: nothing more is accepted, and the writer
    /// ends once everything is written.
    Closing,
    /// Dropped at once: the writer ends without writing more.
    Aborted,
}

struct Inner {
    queue: VecDeque<Bytes>,
    /// Frames in `queue`.
    frames: usize,
    /// When the oldest frame in `queue` was queued.
    since: Option<Instant>,
    /// When the oldest broadcast in `queue` reached the broker.
    oldest_broadcast: Option<Instant>,
    /// The writer was asked to run (through the flusher) and has not taken
    /// the queue since.
    scheduled: bool,
    /// The writer found the socket full (the client is not reading).
    blocked: bool,
    phase: Phase,
    /// The writer times its own stalls ([`pump`]); otherwise a push finds
    /// a queue older than the write timeout.
    timed_by_writer: bool,
    /// The writer's waker, while it waits.
    waker: Option<Waker>,
    on_stall: Option<OnStall>,
}

/// A WebSocket's queue of encoded frames. Shared by the connection actor,
/// the broker and the socket's writer.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// This outbox, for the flusher's list.
    me: std::sync::Weak<Outbox>,
    limit: usize,
    write_timeout: Option<Duration>,
    flusher: Arc<Flusher>,
    metrics: Arc<Metrics>,
}

/// What the writer found.
enum Take {
    /// Frames to write (moved into the writer's buffer).
    Frames,
    /// Nothing yet: the waker is registered.
    Idle,
    /// Nothing more will come: the writer ends.
    Done,
}

impl Outbox {
    /// An outbox for a socket of the current worker, holding at most
    /// `limit` frames.
    pub fn new(limit: usize, write_timeout: Option<Duration>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                frames: 0,
                since: None,
                oldest_broadcast: None,
                scheduled: false,
                blocked: false,
                phase: Phase::Open,
                timed_by_writer: false,
                waker: None,
                on_stall: None,
            }),
            limit: limit.max(1),
            write_timeout,
            flusher: Flusher::current(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // unwrap: the lock is only held for queue operations, which do not panic.
        self.inner.lock().unwrap()
    }

    /// Who to tell when the client is given up on.
    pub fn on_stall(&self, f: OnStall) {
        self.lock().on_stall = Some(f);
    }

    /// Queues one frame of the connection's.
    pub fn push_frame(&self, frame: &Frame) -> Result<(), crate::conn::messages::SinkError> {
        use crate::conn::messages::SinkError;
        let mut wire = BytesMut::with_capacity(frame.len() + 10);
        encode_frame(frame, &mut wire);
        match self.push(wire.freeze(), 1, None) {
            Pushed::Queued => Ok(()),
            Pushed::Dropped | Pushed::Refused if self.lock().phase == Phase::Open => Err(SinkError::Full),
            Pushed::Dropped | Pushed::Refused => Err(SinkError::Closed),
        }
    }

    /// Queues a WebSocket pong (best effort).
    pub fn pong(&self, payload: &[u8]) {
        let mut wire = BytesMut::with_capacity(payload.len() + 10);
        Parser::write_message(&mut wire, payload, OpCode::Pong, true, false);
        let _ = self.push(wire.freeze(), 1, None);
    }

    /// Queues a close frame after everything queued; the writer ends once
    /// it is written.
    pub fn close(&self, code: u16) {
        let mut wire = BytesMut::with_capacity(4);
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: None,
        };
        Parser::write_close(&mut wire, Some(reason), false);
        let wake = {
            let mut inner = self.lock();
            if inner.phase != Phase::Open {
                return;
            }
            inner.queue.push_back(wire.freeze());
            inner.frames += 1;
            inner.phase = Phase::Closing;
            // Even a blocked writer is woken: it may now end once written.
            !std::mem::replace(&mut inner.scheduled, true)
        };
        if wake {
            self.schedule();
        }
    }

    /// Drops everything queued; the writer ends at once.
    pub fn abort(&self) {
        let waker = {
            let mut inner = self.lock();
            inner.phase = Phase::Aborted;
            inner.queue.clear();
            inner.frames = 0;
            inner.on_stall = None;
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Appends `wire` (`frames` encoded frames) unless the queue is full.
    fn push(&self, wire: Bytes, frames: usize, broadcast_at: Option<Instant>) -> Pushed {
        let (result, wake, stall) = {
            let mut inner = self.lock();
            if inner.phase != Phase::Open {
                return Pushed::Refused;
            }
            let stale = match (inner.since, self.write_timeout) {
                (Some(since), Some(limit)) if !inner.timed_by_writer => since.elapsed() > limit,
                _ => false,
            };
            if stale {
                (Pushed::Refused, false, inner.on_stall.take().map(|f| (f, Stall::WriteTimeout)))
            } else if inner.frames + frames > self.limit {
                if inner.blocked || broadcast_at.is_none() {
                    (Pushed::Refused, false, inner.on_stall.take().map(|f| (f, Stall::QueueFull)))
                } else {
                    (Pushed::Dropped, false, None)
                }
            } else {
                if inner.queue.is_empty() && !inner.timed_by_writer {
                    inner.since = Some(Instant::now());
                }
                if inner.oldest_broadcast.is_none() {
                    inner.oldest_broadcast = broadcast_at;
                }
                inner.queue.push_back(wire);
                inner.frames += frames;
                // A blocked writer takes the queue once the socket has room.
                let wake = !inner.blocked && !std::mem::replace(&mut inner.scheduled, true);
                (Pushed::Queued, wake, None)
            }
        };
        if let Some((tell, why)) = stall {
            tell(why);
        }
        if wake {
            self.schedule();
        }
        result
    }

    /// Puts this outbox on its worker's list of writers to wake.
    fn schedule(&self) {
        if let Some(me) = self.me.upgrade() {
            self.flusher.schedule(me);
        }
    }

    /// Wakes the writer (from the flusher).
    fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves what is queued to the end of `out`, or registers the writer.
    fn take(&self, cx: &mut Context<'_>, out: &mut VecDeque<Bytes>) -> Take {
        let oldest_broadcast = {
            let mut inner = self.lock();
            inner.scheduled = false;
            if inner.phase == Phase::Aborted {
                return Take::Done;
            }
            if inner.queue.is_empty() {
                if inner.phase == Phase::Closing {
                    return Take::Done;
                }
                inner.waker = Some(cx.waker().clone());
                return Take::Idle;
            }
            if out.is_empty() {
                std::mem::swap(&mut inner.queue, out);
            } else {
                out.extend(inner.queue.drain(..));
            }
            inner.frames = 0;
            inner.since = None;
            inner.oldest_broadcast.take()
        };
        if let Some(at) = oldest_broadcast {
            self.metrics.observe_delivery(at.elapsed());
        }
        Take::Frames
    }

    /// The writer found the socket full (`true`) or wrote again (`false`).
    /// While blocked, new frames do not wake it.
    fn set_blocked(&self, cx: Option<&mut Context<'_>>, blocked: bool) {
        let mut inner = self.lock();
        inner.blocked = blocked;
        if let Some(cx) = cx {
            // Woken by an abort (or a close) while it waits for room.
            inner.waker = Some(cx.waker().clone());
        }
    }

    /// The writer gave up: nothing was written for the whole write timeout.
    fn stalled(&self) {
        let tell = self.lock().on_stall.take();
        if let Some(tell) = tell {
            tell(Stall::WriteTimeout);
        }
    }

    fn aborted(&self) -> bool {
        self.lock().phase == Phase::Aborted
    }
}

impl DirectSink for Outbox {
    fn push_broadcast(&self, broadcast: &Broadcast) -> Pushed {
        let wire = broadcast.wire.get_or_init(|| encode_frames(&broadcast.frames)).clone();
        let frames = broadcast.frames.len();
        let pushed = self.push(wire, frames, Some(broadcast.at));
        if pushed == Pushed::Queued {
            let metrics = &self.metrics;
            metrics.deliveries.inc();
            metrics.events_out.inc_by(frames as u64);
            metrics
                .bytes_out
                .inc_by(broadcast.frames.iter().map(Frame::len).sum::<usize>() as u64);
        }
        pushed
    }
}

/// Appends `frame` as an unmasked server frame.
fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Text(text) => Parser::write_message(out, text.as_bytes(), OpCode::Text, true, false),
        Frame::Binary(bytes) => Parser::write_message(out, bytes, OpCode::Binary, true, false),
    }
}

/// `frames` as they go on the wire, one buffer.
pub fn encode_frames(frames: &[Frame]) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 10).sum());
    for frame in frames {
        encode_frame(frame, &mut out);
    }
    out.freeze()
}

/// The outboxes of one worker thread that have frames for their writer,
/// and the task that wakes those writers.
pub struct Flusher {
    due: Mutex<(Vec<Arc<Outbox>>, Option<Waker>)>,
}

thread_local! {
    static FLUSHER: RefCell<Option<Arc<Flusher>>> = const { RefCell::new(None) };
}

impl Flusher {
    /// This thread's flusher, started on first use.
    fn current() -> Arc<Flusher> {
        FLUSHER.with_borrow_mut(|slot| {
            slot.get_or_insert_with(|| {
                let flusher = Arc::new(Flusher {
                    due: Mutex::new((Vec::new(), None)),
                });
                actix_rt::spawn(flusher.clone().run());
                flusher
            })
            .clone()
        })
    }

    fn schedule(&self, outbox: Arc<Outbox>) {
        let waker = {
            // unwrap: the lock is only held to push or swap the list.
            let mut due = self.due.lock().unwrap();
            due.0.push(outbox);
            if due.0.len() == 1 {
                due.1.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                // unwrap: the lock is only held to push or swap the list.
                let mut due = self.due.lock().unwrap();
                if due.0.is_empty() {
                    due.1 = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    std::mem::swap(&mut due.0, &mut batch);
                    Poll::Ready(())
                }
            })
            .await;
            for outbox in batch.drain(..) {
                outbox.wake();
            }
        }
    }
}

/// Writes an outbox to a socket taken over at the upgrade, until the
/// outbox is closed (everything written) or aborted, or the socket fails.
pub async fn pump(socket: &actix_web::rt::net::TcpStream, outbox: &Outbox) {
    outbox.lock().timed_by_writer = true;
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    // While the socket is full: since when, and the write timeout's timer.
    let mut blocked: Option<Option<Pin<Box<tokio::time::Sleep>>>> = None;
    std::future::poll_fn(|cx| loop {
        if pending.is_empty() {
            if pending.capacity() > 256 {
                pending = VecDeque::new(); // a burst's buffer is not kept
            }
            match outbox.take(cx, &mut pending) {
                Take::Frames => {}
                Take::Idle => return Poll::Pending,
                Take::Done => return Poll::Ready(()),
            }
        } else if outbox.aborted() {
            return Poll::Ready(());
        }
        match write_some(socket, &mut pending) {
            Ok(()) => {
                if blocked.take().is_some() {
                    outbox.set_blocked(None, false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match socket.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
                outbox.set_blocked(Some(cx), true);
                let timer = blocked.get_or_insert_with(|| outbox.write_timeout.map(|t| Box::pin(tokio::time::sleep(t))));
                if let Some(timer) = timer {
                    if timer.as_mut().poll(cx).is_ready() {
                        outbox.stalled();
                        return Poll::Ready(());
                    }
                }
                return Poll::Pending;
            }
            Err(_) => return Poll::Ready(()),
        }
    })
    .await;
    outbox.abort();
}

/// One `writev` of the front of `pending`; drops what it wrote.
fn write_some(socket: &actix_web::rt::net::TcpStream, pending: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    let mut iov = [IoSlice::new(&[]); IOV_MAX];
    let count = pending.iter().zip(iov.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
    let mut written = socket.try_write_vectored(&iov[..count])?;
    if written == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    while written > 0 {
        // unwrap: the kernel wrote no more than it was given.
        let front = pending.front_mut().unwrap();
        if written >= front.len() {
            written -= front.len();
            pending.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
    Ok(())
}

/// An outbox as a response body, for a WebSocket that stays with
/// actix-http's dispatcher (its writes wait for the dispatcher's buffer,
/// so a stuck client is found by the next push after the write timeout).
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    pending: VecDeque<Bytes>,
}

impl OutboxBody {
    /// The body that writes `outbox`.
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self {
            outbox,
            pending: VecDeque::new(),
        }
    }
}

impl Drop for OutboxBody {
    fn drop(&mut self) {
        self.outbox.abort();
    }
}

impl actix_http::body::MessageBody for OutboxBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_http::body::BodySize {
        actix_http::body::BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        match this.outbox.take(cx, &mut this.pending) {
            Take::Idle => Poll::Pending,
            Take::Done => Poll::Ready(None),
            Take::Frames => {
                let total = this.pending.iter().map(Bytes::len).sum();
                let mut out = BytesMut::with_capacity(total);
                for chunk in this.pending.drain(..) {
                    out.extend_from_slice(&chunk);
                }
                Poll::Ready(Some(Ok(out.freeze())))
            }
        }
    }
}
