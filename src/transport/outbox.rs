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
//! [`super::handover`]), started only once the socket is full or the
//! outbox closes ([`Outbox::park`]; until then the connection and the
//! flusher write the socket themselves), or [`OutboxBody`] as the response
//! body of a WebSocket that stays with actix-http's dispatcher.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future as _;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Buf as _, Bytes, BytesMut};

use crate::broker::{DirectSink, Outgoing, Pushed};
use crate::engineio::Frame;
use crate::metrics::Metrics;

/// Most buffers one `writev` takes.
const IOV_MAX: usize = 64;

/// Frames up to this size are copied into the queue's buffer; larger ones
/// are queued as the shared bytes they are.
const COPY_MAX: usize = 1024;

/// Buffer capacity a queue keeps while its socket is idle.
const IDLE_KEEP: usize = 4 * 1024;

/// Encoded frames in order: shared segments (large frames, and small ones
/// queued before a large one), then small frames copied into one buffer.
/// One write of a few thousand frames is then a handful of buffers, and a
/// queued frame costs a copy of its bytes, not a reference count.
#[derive(Default)]
struct Queue {
    segments: VecDeque<Bytes>,
    tail: BytesMut,
    /// Bytes at the start of `tail` already written (the writer's queue).
    written: usize,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.tail.len() == self.written
    }

    /// Appends frames already encoded (a broadcast's, shared).
    fn push_shared(&mut self, wire: &Bytes) {
        if wire.len() <= COPY_MAX {
            self.tail.extend_from_slice(wire);
        } else {
            self.seal_tail();
            self.segments.push_back(wire.clone());
        }
    }

    /// Encodes one unmasked server frame at the end (small ones straight
    /// into the buffer).
    fn push_message(&mut self, payload: &[u8], op: OpCode) {
        if payload.len() <= COPY_MAX {
            Parser::write_message(&mut self.tail, payload, op, true, false);
        } else {
            self.seal_tail();
            let mut wire = BytesMut::with_capacity(payload.len() + 10);
            Parser::write_message(&mut wire, payload, op, true, false);
            self.segments.push_back(wire.freeze());
        }
    }

    /// Moves the small frames copied so far behind the shared segments, so
    /// that a segment queued next keeps its place.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.segments.push_back(std::mem::take(&mut self.tail).freeze());
        }
    }

    /// Empties the queue, keeping the buffer's capacity up to `keep`.
    fn clear(&mut self, keep: usize) {
        self.segments.clear();
        self.tail.clear();
        self.written = 0;
        if self.tail.capacity() > keep {
            self.tail = BytesMut::new();
        }
        if self.segments.capacity() > 64 {
            self.segments = VecDeque::new();
        }
    }

    /// Everything, as one buffer.
    fn concat(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.segments.iter().map(Bytes::len).sum::<usize>() + self.tail.len());
        for segment in self.segments.drain(..) {
            out.extend_from_slice(&segment);
        }
        out.extend_from_slice(&self.tail[self.written..]);
        self.clear(IDLE_KEEP);
        out.freeze()
    }

    /// Everything, as one buffer, without a copy when it is one already.
    fn into_bytes(mut self) -> Bytes {
        if self.segments.is_empty() {
            let mut tail = self.tail;
            tail.advance(self.written);
            return tail.freeze();
        }
        self.concat()
    }

    /// One write of the front of the queue (`writev` for several slices);
    /// drops what it wrote.
    fn write_to(&mut self, socket: &actix_web::rt::net::TcpStream) -> std::io::Result<()> {
        self.write_with(|iov| match iov {
            [one] => socket.try_write(one),
            _ => socket.try_write_vectored(iov),
        })
    }

    /// One vectored write of the front of the queue with `write`; drops
    /// what it wrote.
    fn write_with(&mut self, write: impl FnOnce(&[IoSlice<'_>]) -> std::io::Result<usize>) -> std::io::Result<()> {
        let mut iov = [IoSlice::new(&[]); IOV_MAX];
        let mut count = 0;
        for (segment, slot) in self.segments.iter().zip(iov[..IOV_MAX - 1].iter_mut()) {
            *slot = IoSlice::new(segment);
            count += 1;
        }
        if count == self.segments.len() && self.tail.len() > self.written {
            iov[count] = IoSlice::new(&self.tail[self.written..]);
            count += 1;
        }
        let mut written = write(&iov[..count])?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while let Some(front) = self.segments.front_mut() {
            if written >= front.len() {
                written -= front.len();
                self.segments.pop_front();
            } else {
                front.advance(written);
                return Ok(());
            }
        }
        self.written += written;
        Ok(())
    }
}

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
    queue: Queue,
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
    /// While a [`pump`] writes the socket (or is parked, see
    /// [`Outbox::park`]): its thread and the socket, for
    /// [`Outbox::push_frame`]'s express write and the flusher's.
    express: Option<(std::thread::ThreadId, std::os::fd::RawFd)>,
    /// The writer not started yet: its thread and its key in that thread's
    /// [`PARKED`].
    parked: Option<(std::thread::ThreadId, usize)>,
}

impl Inner {
    /// Runs `write` with the socket, when its writer ([`pump`]) runs on
    /// this thread and holds nothing unwritten (not blocked), and the
    /// outbox is open; `None` otherwise. What `write` sends goes out ahead
    /// of nothing: whatever is queued is the caller's to send first.
    fn with_own_socket<R>(&mut self, write: impl FnOnce(&mut Inner, socket2::SockRef<'_>) -> R) -> Option<R> {
        let (thread, fd) = self.express?;
        if thread != this_thread() || self.phase != Phase::Open || self.blocked {
            return None;
        }
        // SAFETY: `express` is set by the writer while it holds the socket
        // and cleared (under the outbox's lock, held by the caller of this
        // `&mut`) before it lets go of it, so the fd is open and this
        // socket's; the writer runs on this thread, so it is not in the
        // middle of a write; and not blocked, it holds nothing unwritten.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        Some(write(self, socket2::SockRef::from(&socket)))
    }

    /// The queue was handed on whole (to the writer, or to the socket):
    /// its counts start again; when its oldest broadcast reached the
    /// broker, for the publish-to-write metric.
    fn emptied(&mut self) -> Option<Instant> {
        self.frames = 0;
        self.since = None;
        self.oldest_broadcast.take()
    }
}

thread_local! {
    static THREAD: std::thread::ThreadId = std::thread::current().id();
}

/// This thread's id, without the reference count `thread::current()` takes
/// on every call (a write checks it once per socket).
fn this_thread() -> std::thread::ThreadId {
    THREAD.with(|id| *id)
}

/// One write of `iov`: `send(2)` for one slice (a frame or a few
/// coalesced ones, the common case), which spares the kernel copying in a
/// message header; `sendmsg(2)` for several.
fn send_iov(socket: &socket2::SockRef<'_>, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    match iov {
        [one] => socket.send(one),
        _ => socket.send_vectored(iov),
    }
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
    /// `limit` frames. `coalesce`: how long the worker's writers wait for
    /// more frames once one is queued (set by the first outbox of a worker).
    pub fn new(limit: usize, write_timeout: Option<Duration>, coalesce: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            inner: Mutex::new(Inner {
                queue: Queue::default(),
                frames: 0,
                since: None,
                oldest_broadcast: None,
                scheduled: false,
                blocked: false,
                phase: Phase::Open,
                timed_by_writer: false,
                waker: None,
                on_stall: None,
                express: None,
                parked: None,
            }),
            limit: limit.max(1),
            write_timeout,
            flusher: Flusher::current(coalesce),
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
        let (payload, op) = match frame {
            Frame::Text(text) => (text.as_bytes().as_ref(), OpCode::Text),
            Frame::Binary(bytes) => (&bytes[..], OpCode::Binary),
        };
        if self.express(payload, op) {
            return Ok(());
        }
        match self.push(1, None, |queue| queue.push_message(payload, op)) {
            Pushed::Queued => Ok(()),
            Pushed::Dropped | Pushed::Refused if self.lock().phase == Phase::Open => Err(SinkError::Full),
            Pushed::Dropped | Pushed::Refused => Err(SinkError::Closed),
        }
    }

    /// Writes one frame of the connection's straight to the socket, when
    /// nothing of this socket is queued or being written and its writer
    /// runs on this thread (the connection's: a session that started on
    /// WebSocket). Going through the queue, the frame would wait for the
    /// writer's turn on the worker, behind the writes of every other socket
    /// the worker's writers were woken for: an ack to a publisher came out
    /// after the whole fan-out of the publish it answered. Whatever the
    /// socket does not take at once is queued first, as any frame. `false`:
    /// not written (queue it).
    fn express(&self, payload: &[u8], op: OpCode) -> bool {
        let wake = {
            let mut inner = self.lock();
            if inner.scheduled || !inner.queue.is_empty() {
                return false;
            }
            let written = inner.with_own_socket(|inner, socket| {
                let mut wire = BytesMut::with_capacity(payload.len() + 14);
                Parser::write_message(&mut wire, payload, op, true, false);
                // Non-blocking (a socket of the runtime's): a full one takes 0.
                let sent = socket.send(&wire).unwrap_or(0);
                if sent == wire.len() {
                    return false;
                }
                wire.advance(sent);
                inner.queue.push_shared(&wire.freeze());
                inner.frames += 1;
                !std::mem::replace(&mut inner.scheduled, true)
            });
            match written {
                Some(wake) => wake,
                None => return false,
            }
        };
        if wake {
            self.schedule();
        }
        true
    }

    /// Queues a WebSocket pong (best effort).
    pub fn pong(&self, payload: &[u8]) {
        let _ = self.push(1, None, |queue| queue.push_message(payload, OpCode::Pong));
    }

    /// Queues a close frame after everything queued; the writer ends once
    /// it is written.
    pub fn close(&self, code: u16) {
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: None,
        };
        let wake = {
            let mut inner = self.lock();
            if inner.phase != Phase::Open {
                return;
            }
            Parser::write_close(&mut inner.queue.tail, Some(reason), false);
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
        let (waker, parked) = {
            let mut inner = self.lock();
            inner.phase = Phase::Aborted;
            inner.express = None;
            inner.queue.clear(0);
            inner.frames = 0;
            inner.on_stall = None;
            // A parked writer is started by the flusher, which then shuts
            // the socket.
            (inner.waker.take(), inner.parked.is_some())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if parked {
            self.schedule();
        }
    }

    /// Appends `frames` frames (with `append`) unless the queue is full.
    fn push(&self, frames: usize, broadcast_at: Option<Instant>, append: impl FnOnce(&mut Queue)) -> Pushed {
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
                (
                    Pushed::Refused,
                    false,
                    inner.on_stall.take().map(|f| (f, Stall::WriteTimeout)),
                )
            } else if inner.frames + frames > self.limit {
                if inner.blocked || broadcast_at.is_none() {
                    (
                        Pushed::Refused,
                        false,
                        inner.on_stall.take().map(|f| (f, Stall::QueueFull)),
                    )
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
                append(&mut inner.queue);
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

    /// Wakes the writer, or starts it if it is parked (from the flusher,
    /// on the socket's worker).
    fn wake(&self) {
        let (waker, parked) = {
            let mut inner = self.lock();
            let parked = match inner.parked {
                Some((thread, key)) if thread == this_thread() => {
                    inner.parked = None;
                    Some(key)
                }
                _ => None,
            };
            (inner.waker.take(), parked)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(start) = parked.and_then(|key| PARKED.with_borrow_mut(|parked| parked.try_remove(key))) {
            start();
        }
    }

    /// Ties the outbox to the socket `fd` of this worker, taken over at the
    /// upgrade, without starting its writer: the connection's frames and
    /// the flusher's write the socket directly while it takes them all, and
    /// `start` (which spawns a [`pump`]) is called by the flusher only once
    /// something is left over (the socket is full) or the outbox is closed
    /// or aborted. A session that never fills its socket (most idle ones)
    /// then holds no task for its writes, only `start`.
    pub fn park(&self, fd: std::os::fd::RawFd, start: Box<dyn FnOnce()>) {
        let key = PARKED.with_borrow_mut(|parked| parked.insert(start));
        {
            let mut inner = self.lock();
            inner.timed_by_writer = true;
            if inner.phase == Phase::Open {
                inner.express = Some((this_thread(), fd));
            }
            inner.parked = Some((this_thread(), key));
            // What was queued before the socket was here (the open packet),
            // a close or an abort: the flusher writes it, or starts the
            // writer. (A flusher that ran before found no socket and left
            // `scheduled` set.)
            if inner.queue.is_empty() && inner.phase == Phase::Open {
                return;
            }
            inner.scheduled = true;
        }
        self.schedule();
    }

    /// Takes what is queued, as one buffer, for the caller to write ahead
    /// of everything queued after it: the frames a session queued before
    /// its socket was here (its open packet), which then go out with the
    /// 101 ([`super::handover`]). Only before the socket has a writer
    /// ([`Self::park`]), and only while open (a close or an abort is the
    /// writer's); `None` otherwise, or when nothing is queued.
    pub fn take_unsent(&self) -> Option<Bytes> {
        let mut inner = self.lock();
        // (A parked writer has set `express` too, while open.)
        if inner.phase != Phase::Open || inner.express.is_some() || inner.queue.is_empty() {
            return None;
        }
        // The queue's buffers go with it: an idle session keeps none.
        let unsent = std::mem::take(&mut inner.queue);
        inner.emptied();
        // Nothing is left for the flusher: the next frame may be written
        // straight away (`express`), once the socket is parked.
        inner.scheduled = false;
        drop(inner);
        Some(unsent.into_bytes())
    }

    /// Writes what is queued straight to the socket, from the flusher,
    /// when the writer ([`pump`]) runs on this thread and holds nothing
    /// unwritten (it is not blocked). A fan-out then costs the worker one
    /// task that writes a thousand sockets, yielding now and then, instead
    /// of a thousand writer tasks queued ahead of every reader and actor of
    /// the worker (a publisher's next publish, its ack). `Ok`: all written,
    /// with when its oldest broadcast reached the broker (the caller reads
    /// the clock once, for the metric and its own time slice). `Err`: not
    /// all written (the socket is full, the writer is elsewhere, the outbox
    /// is closing): wake the writer, which takes what is left.
    fn write_now(&self) -> Result<Option<Instant>, ()> {
        let mut inner = self.lock();
        let all = inner.with_own_socket(|inner, socket| {
            while !inner.queue.is_empty() {
                // Non-blocking (a socket of the runtime's): a full one
                // says WouldBlock, and what is left stays queued.
                if inner.queue.write_with(|iov| send_iov(&socket, iov)).is_err() {
                    return false;
                }
            }
            true
        });
        if all != Some(true) {
            return Err(());
        }
        inner.scheduled = false;
        inner.queue.clear(IDLE_KEEP);
        Ok(inner.emptied())
    }

    /// Moves what is queued to `out` (whose frames are all written), or
    /// registers the writer.
    fn take(&self, cx: &mut Context<'_>, out: &mut Queue) -> Take {
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
                // A quiet socket keeps no burst's buffers.
                inner.queue.clear(IDLE_KEEP);
                out.clear(IDLE_KEEP);
                return Take::Idle;
            }
            // The writer's emptied buffers come back for the next frames.
            out.clear(usize::MAX);
            std::mem::swap(&mut inner.queue, out);
            inner.emptied()
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
    fn push_broadcast(&self, broadcast: &Outgoing) -> Pushed {
        let wire = broadcast.wire.get_or_init(|| encode_frames(&broadcast.frames));
        let frames = broadcast.frames.len();
        // (The broker counts what it queued, once per publish.)
        self.push(frames, Some(broadcast.at), |queue| queue.push_shared(wire))
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
fn encode_frames(frames: &[Frame]) -> Bytes {
    let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 10).sum());
    for frame in frames {
        encode_frame(frame, &mut out);
    }
    out.freeze()
}

thread_local! {
    /// The writers of this worker's sockets not started yet (see
    /// [`Outbox::park`]).
    static PARKED: RefCell<slab::Slab<Box<dyn FnOnce()>>> = const { RefCell::new(slab::Slab::new()) };
}

/// How long the flusher writes sockets before it lets the worker's other
/// tasks run.
const FLUSH_SLICE: Duration = Duration::from_micros(200);

/// The outboxes of one worker thread that have frames for their writer,
/// and the task that writes them (or wakes their writers).
struct Flusher {
    due: Mutex<(Vec<Arc<Outbox>>, Option<Waker>)>,
    /// How long to wait, once woken, for more outboxes to fill
    /// (`websocket.broadcast_coalesce_us`).
    coalesce: Duration,
}

thread_local! {
    static FLUSHER: RefCell<Option<Arc<Flusher>>> = const { RefCell::new(None) };
}

impl Flusher {
    /// This thread's flusher, started on first use.
    fn current(coalesce: Duration) -> Arc<Flusher> {
        FLUSHER.with_borrow_mut(|slot| {
            slot.get_or_insert_with(|| {
                let flusher = Arc::new(Flusher {
                    due: Mutex::new((Vec::new(), None)),
                    coalesce,
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
                    Poll::Ready(())
                }
            })
            .await;
            if !self.coalesce.is_zero() {
                tokio::time::sleep(self.coalesce).await;
            }
            // unwrap: the lock is only held to push or swap the list.
            std::mem::swap(&mut self.due.lock().unwrap().0, &mut batch);
            let mut slice = Instant::now();
            for outbox in batch.drain(..) {
                let written = outbox.write_now();
                let now = Instant::now();
                match written {
                    Ok(Some(at)) => outbox.metrics.observe_delivery(now.saturating_duration_since(at)),
                    Ok(None) => {}
                    Err(()) => outbox.wake(),
                }
                if now.saturating_duration_since(slice) >= FLUSH_SLICE {
                    // The worker's readers and actors get their turn (the
                    // yield lets the runtime poll its sockets first).
                    tokio::task::yield_now().await;
                    slice = Instant::now();
                }
            }
        }
    }
}

/// Writes an outbox to a socket taken over at the upgrade, until the
/// outbox is closed (everything written) or aborted, or the socket fails.
pub async fn pump(socket: &actix_web::rt::net::TcpStream, outbox: &Outbox) {
    {
        use std::os::fd::AsRawFd as _;
        let mut inner = outbox.lock();
        inner.timed_by_writer = true;
        inner.express = Some((this_thread(), socket.as_raw_fd()));
    }
    let mut pending = Queue::default();
    // While the socket is full: since when, and the write timeout's timer.
    let mut blocked: Option<Option<Pin<Box<tokio::time::Sleep>>>> = None;
    std::future::poll_fn(|cx| loop {
        if pending.is_empty() {
            match outbox.take(cx, &mut pending) {
                Take::Frames => {}
                Take::Idle => return Poll::Pending,
                Take::Done => return Poll::Ready(()),
            }
        } else if outbox.aborted() {
            return Poll::Ready(());
        }
        match pending.write_to(socket) {
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
                let timer =
                    blocked.get_or_insert_with(|| outbox.write_timeout.map(|t| Box::pin(tokio::time::sleep(t))));
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
    // Clears `express` before the socket can go.
    outbox.abort();
}

/// An outbox as a response body, for a WebSocket that stays with
/// actix-http's dispatcher (its writes wait for the dispatcher's buffer,
/// so a stuck client is found by the next push after the write timeout).
pub struct OutboxBody {
    outbox: Arc<Outbox>,
    pending: Queue,
}

impl OutboxBody {
    /// The body that writes `outbox`.
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self {
            outbox,
            pending: Queue::default(),
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
            Take::Frames => Poll::Ready(Some(Ok(this.pending.concat()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::sync::oneshot;

    fn outbox(limit: usize, write_timeout: Option<Duration>) -> Arc<Outbox> {
        Outbox::new(limit, write_timeout, Duration::ZERO, Arc::new(Metrics::new()))
    }

    fn broadcast(text: &str) -> Outgoing {
        Outgoing {
            frames: Arc::new([Frame::Text(text.into())]),
            wire: std::cell::OnceCell::new(),
            at: Instant::now(),
        }
    }

    fn stall_reports(outbox: &Outbox) -> oneshot::Receiver<Stall> {
        let (tx, rx) = oneshot::channel();
        outbox.on_stall(Box::new(move |stall| {
            let _ = tx.send(stall);
        }));
        rx
    }

    /// A connected pair: (the server's side, the client's side).
    async fn pair(client_recv_buffer: Option<u32>) -> (actix_web::rt::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = client_recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let (client, accepted) = tokio::join!(socket.connect(listener.local_addr().unwrap()), listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// Every frame the client reads until the server ends the connection:
    /// (opcode, payload).
    async fn read_frames(mut client: tokio::net::TcpStream) -> Vec<(OpCode, Vec<u8>)> {
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        let mut buf = BytesMut::from(&raw[..]);
        let mut frames = Vec::new();
        while let Some((_, op, payload)) = Parser::parse(&mut buf, false, 1 << 20).unwrap() {
            frames.push((op, payload.map(|p| p.to_vec()).unwrap_or_default()));
        }
        assert!(buf.is_empty(), "a partial frame at the end");
        frames
    }

    /// Fills the server side until a write would block (the client reads
    /// nothing): the writer is then blocked.
    async fn until_blocked(outbox: &Arc<Outbox>) {
        let big = "x".repeat(64 * 1024);
        for _ in 0..1000 {
            if outbox.lock().blocked {
                return;
            }
            outbox.push_frame(&Frame::Text(big.as_str().into())).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the writer never found the socket full");
    }

    #[actix_rt::test]
    async fn frames_of_the_connection_and_the_broker_arrive_in_order_then_the_close() {
        let (server, client) = pair(None).await;
        let outbox = outbox(1024, None);
        let writer = {
            let outbox = outbox.clone();
            actix_rt::spawn(async move { pump(&server, &outbox).await })
        };
        let mut expected = Vec::new();
        for i in 0..300 {
            // Some large (queued shared), most small (copied).
            let text = match i % 7 {
                0 => format!("4frame {i} {}", "l".repeat(3000)),
                _ => format!("4frame {i}"),
            };
            if i % 3 == 0 {
                outbox.push_frame(&Frame::Text(text.as_str().into())).unwrap();
            } else {
                assert_eq!(outbox.push_broadcast(&broadcast(&text)), Pushed::Queued);
            }
            expected.push((OpCode::Text, text.into_bytes()));
            if i % 50 == 0 {
                tokio::task::yield_now().await; // let the writer run between some
            }
        }
        outbox.pong(b"p");
        outbox.close(1000);
        assert_eq!(outbox.push_broadcast(&broadcast("4late")), Pushed::Refused);
        let frames = read_frames(client).await;
        writer.await.unwrap();
        let (close, rest) = frames.split_last().unwrap();
        let (pong, data) = rest.split_last().unwrap();
        assert_eq!(data, &expected[..]);
        assert_eq!(pong, &(OpCode::Pong, b"p".to_vec()));
        assert_eq!(close, &(OpCode::Close, vec![0x03, 0xe8]), "close 1000");
    }

    #[actix_rt::test]
    async fn a_full_queue_drops_broadcasts_while_the_client_reads_and_refuses_them_when_it_does_not() {
        // No writer runs: nothing is taken from the queue.
        let outbox = outbox(4, None);
        let mut stalls = stall_reports(&outbox);
        for i in 0..4 {
            assert_eq!(outbox.push_broadcast(&broadcast(&format!("4m{i}"))), Pushed::Queued);
        }
        // The client is not known to be stuck: the server is behind.
        assert_eq!(outbox.push_broadcast(&broadcast("4over")), Pushed::Dropped);
        assert!(stalls.try_recv().is_err(), "no one is told of a drop");
        // Once the writer found the socket full, the client is the problem.
        outbox.lock().blocked = true;
        assert_eq!(outbox.push_broadcast(&broadcast("4over")), Pushed::Refused);
        assert_eq!(stalls.try_recv().unwrap(), Stall::QueueFull);
        // The connection's own frames are never dropped: refused, a slow consumer.
        assert_eq!(
            outbox.push_frame(&Frame::Text("4ack".into())),
            Err(crate::conn::messages::SinkError::Full)
        );
        outbox.abort();
        assert_eq!(
            outbox.push_frame(&Frame::Text("4ack".into())),
            Err(crate::conn::messages::SinkError::Closed)
        );
    }

    #[actix_rt::test]
    async fn a_client_that_reads_nothing_is_reported_after_the_write_timeout_and_let_go() {
        let (server, client) = pair(Some(4096)).await;
        let outbox = outbox(1_000_000, Some(Duration::from_millis(300)));
        let stalls = stall_reports(&outbox);
        let writer = {
            let outbox = outbox.clone();
            actix_rt::spawn(async move { pump(&server, &outbox).await })
        };
        until_blocked(&outbox).await;
        let blocked_at = Instant::now();
        assert_eq!(stalls.await.unwrap(), Stall::WriteTimeout);
        assert!(blocked_at.elapsed() < Duration::from_secs(5));
        writer.await.unwrap();
        assert!(outbox.aborted(), "the writer let go of the socket");
        drop(client);
    }

    #[actix_rt::test]
    async fn an_abort_ends_a_blocked_writer_at_once() {
        let (server, client) = pair(Some(4096)).await;
        let outbox = outbox(1_000_000, None);
        let writer = {
            let outbox = outbox.clone();
            actix_rt::spawn(async move { pump(&server, &outbox).await })
        };
        until_blocked(&outbox).await;
        outbox.abort();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer ended")
            .unwrap();
        assert!(outbox.lock().queue.is_empty(), "what was queued is freed");
        drop(client);
    }
}
