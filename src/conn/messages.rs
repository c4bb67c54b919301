//! Messages the transports send to a [`super::Connection`], and the writer
//! handle a WebSocket transport gives it.
//!
//! The types a transport needs to talk to the actor are defined here, in the
//! downstream module, so that imports point one way: transport → conn.

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::oneshot;

use crate::engineio::{CloseCause, ErrorCode, Frame};

/// Why a frame could not be queued on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkError {
    /// The socket's bounded queue is full: a slow consumer.
    Full,
    /// The socket is gone.
    Closed,
}

/// The write side of a WebSocket as the actor sees it. Implemented by the
/// transport; never waits: a frame is queued or refused.
pub trait FrameSink: Send {
    /// Queues a frame, in order after every frame queued before.
    fn write(&mut self, frame: Frame) -> Result<(), SinkError>;
    /// Answers a WebSocket-level ping (best effort).
    fn pong(&mut self, payload: Bytes);
    /// Writes a close frame after what is queued, then lets go of the socket.
    fn close(self: Box<Self>, code: u16);
    /// Drops the connection at once, discarding what is queued (a client
    /// that stopped reading would otherwise hold it forever).
    fn abort(self: Box<Self>);
    /// Where the broker may write broadcasts itself, in order with what
    /// was written here (`None`: everything goes through the actor).
    fn direct(&self) -> Option<std::sync::Arc<dyn crate::broker::DirectSink>> {
        None
    }
}

/// A WebSocket's write side, with the id that tells the active socket from
/// one being probed.
pub struct WsWriter {
    /// Distinguishes the active WebSocket from one being probed.
    pub id: u64,
    /// Where frames go.
    pub sink: Box<dyn FrameSink>,
    /// The bytes the socket's reader took from the node's input budget for
    /// messages not yet handled: the connection gives each message's share
    /// back as it takes it.
    pub held: Option<std::sync::Arc<crate::limits::Held>>,
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The body of a polling GET response, or the error to answer with.
pub type PollResult = Result<String, ErrorCode>;

/// A polling GET: the actor answers through `reply` when it has data (or
/// must answer: a ping, an upgrade, a close).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PollGet {
    /// Where the response body goes; dropped by the HTTP side if the client
    /// went away, in which case the frames stay buffered.
    pub reply: oneshot::Sender<PollResult>,
}

/// A polling POST body, already bounded by `maxPayload`.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorCode>")]
pub struct PollPost {
    /// The raw body.
    pub body: Bytes,
}

/// A WebSocket with this session's sid asks to take over (upgrade).
#[derive(Message)]
#[rtype(result = "Result<(), ErrorCode>")]
pub struct AttachProbe {
    /// Its writer.
    pub writer: WsWriter,
}

/// A message read from a WebSocket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WsInbound {
    /// Which WebSocket ([`WsWriter::id`]).
    pub id: u64,
    /// What it carried.
    pub message: WsMessage,
}

/// The data of a WebSocket message.
#[derive(Debug)]
pub enum WsMessage {
    /// A text message.
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
    /// A WebSocket-level ping, answered by the actor through its sink.
    Ping(Bytes),
}

/// A WebSocket's read side ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WsEnded {
    /// Which WebSocket.
    pub id: u64,
    /// How.
    pub end: WsEnd,
}

/// What a WebSocket's read side gives the session that reads it itself (a
/// stream of its context; see `Connection::start`): a message, then at the
/// end how it ended.
pub enum WsRead {
    /// A message read.
    Message(WsInbound),
    /// The read side ended (the last item).
    End(WsEnded),
}

/// How a WebSocket's read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame or the end of the stream.
    Closed,
    /// A message above `maxPayload` (close 1009).
    TooLarge,
    /// A text message that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// A message that took longer than `websocket.message_timeout_ms` to
    /// arrive (close 1008).
    MessageTimeout,
    /// A frame waited longer than `websocket.write_timeout_ms` for the
    /// client to read (the write side gave up).
    WriteTimeout,
    /// The write queue filled up while the client read nothing.
    QueueFull,
    /// The node's input budget (`limits.input_budget_bytes`) could not hold
    /// the message under way (close 1013, try again later).
    OverBudget,
    /// Any other protocol or I/O error.
    Error(String),
}

/// The server closes the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession(pub CloseCause);
