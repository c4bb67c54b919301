//! The room broker: one actor that owns every room of every namespace and
//! routes publishes to their members.
//!
//! Connections register each namespace socket with the broker and join or
//! leave rooms through it; a publish arrives already encoded (the Engine.IO
//! frames, built once by whoever published) and the broker hands the same
//! shared frames to every recipient with `try_send`: it never waits on a
//! connection. A recipient whose mailbox is full misses that delivery, which
//! is counted (`roomcast_deliveries_dropped_total`): the server is behind
//! (overload), and everyone else keeps receiving. A client that stops
//! reading is not found here but by its connection's write side, which
//! closes it as a slow consumer.
//!
//! Messages travelling back to connections ([`Deliver`], [`Evict`]) are
//! defined here and reach them through `Recipient`s, so imports point one
//! way: conn → broker.

pub mod recovery;

use std::collections::{BTreeMap, VecDeque};

// foldhash: seeded per process, and several times faster than SipHash on
// the socket ids and room names every publish looks up.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::json;
use serde_json::value::RawValue;

use crate::adapter::{
    DropSession, Inbound, KeepSession, LocalRooms, LocalSockets, Offset, Outbound, RemoteOp, RemoteOperation,
    RoomWatch, Sequenced, Session, SocketInfo, StreamRead,
};
use crate::engineio::Frame;
use crate::limits::{AddressKey, Limit};
use crate::net::IpRanges;
use crate::socketio::packet::{encode, encode_event, encode_raw, header_len, PacketType};
use recovery::{Recovery, RecoveryConfig, Refused, Target};

/// Room names: 1 to `max` bytes of ASCII letters, digits and `_-.:@/#=+`.
pub fn valid_room(room: &str, max: usize) -> bool {
    !room.is_empty()
        && room.len() <= max
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/#=+".contains(&b))
}

/// Event names a client may publish: 1 to 128 bytes, not reserved.
fn valid_event(event: &str) -> bool {
    !event.is_empty() && event.len() <= 128 && !crate::socketio::packet::RESERVED_EVENTS.contains(&event)
}

/// Length of a namespace socket id. Socket.IO's own form (the `base64id`
/// package of the Node.js server: 15 random bytes, base64 with `/` and `+`
/// made URL-safe, no padding), so that roomcast's ids and a Node.js node's
/// look alike, and `@socket.io/redis-adapter`'s sharded adapter, which
/// takes any 20-character room for a socket's private room, publishes a
/// `.to(id)` to a roomcast socket on the channel every node hears.
pub const SOCKET_ID_LEN: usize = 20;

/// A new namespace socket id: 120 bits from the operating system's CSPRNG
/// (through `rand`'s thread-local generator, seeded from it), base64url
/// without padding: [`SOCKET_ID_LEN`] characters of `[A-Za-z0-9_-]`. It
/// lives here, next to [`looks_like_socket_id`], so that the form ids are
/// made in and the form rooms may not have are defined in one place.
pub fn new_socket_id() -> Arc<str> {
    use base64::Engine as _;
    let bytes: [u8; SOCKET_ID_LEN / 4 * 3] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes).into()
}

/// Whether `name` has the form of a socket id, roomcast's or a Node.js
/// Socket.IO server's: exactly [`SOCKET_ID_LEN`] characters of
/// `[A-Za-z0-9_-]`.
///
/// Every socket id has this form and no room may have it: no socket joins
/// such a room ([`JoinError::SocketIdRoom`]), clients may not name one
/// ([`check_room`]) and a client's [`Publish`] to one reaches nobody. So a
/// name in a broadcast's rooms is either a socket (a backend's `.to(id)`,
/// from the API, an emitter or a Node.js node) or a room, never both.
/// Without that, a client could publish straight to another client by its
/// id (on this node or, through Redis, on another), or subscribe to a room
/// named like another socket's id and receive what a backend sends to that
/// socket alone.
pub fn looks_like_socket_id(name: &str) -> bool {
    name.len() == SOCKET_ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a room name is refused (error ack or API code `invalid_room`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Empty, too long, or a character outside the room alphabet.
    #[error("room names are 1 to {max} bytes of ASCII letters, digits and _-.:@/#=+")]
    Invalid {
        /// `rooms.max_name_len`.
        max: usize,
    },
    /// Shaped like a socket id ([`looks_like_socket_id`]).
    #[error(
        "a room name may not have the form of a socket id (exactly 20 letters, digits, _ or -): such names address single sockets, not rooms"
    )]
    SocketId,
}

/// The check of a room name that names a room (a client's subscribe,
/// unsubscribe, publish and presence; the API's join, leave and member
/// list): [`valid_room`], and not shaped like a socket id. Every caller
/// uses this one function, so the two sets of names stay disjoint.
pub fn check_room(room: &str, max: usize) -> Result<(), RoomError> {
    if !valid_room(room, max) {
        Err(RoomError::Invalid { max })
    } else if looks_like_socket_id(room) {
        Err(RoomError::SocketId)
    } else {
        Ok(())
    }
}

/// The frames every recipient of an event gets, made once: the packet
/// `text`, then its binary attachments.
fn event_frames(text: String, attachments: &[bytes::Bytes]) -> Arc<[Frame]> {
    std::iter::once(Frame::Text(text.into()))
        .chain(attachments.iter().cloned().map(Frame::Binary))
        .collect()
}

/// An EVENT, or a BINARY_EVENT when there are attachments.
fn event_kind(attachments: &[bytes::Bytes]) -> PacketType {
    if attachments.is_empty() {
        PacketType::Event
    } else {
        PacketType::BinaryEvent
    }
}

/// Encodes an event whose arguments are the JSON text `args` (`[name,
/// ...]`, as it is) once, as the frames every recipient gets: the packet,
/// then its binary attachments.
pub fn encode_args(nsp: &str, args: &str, attachments: &[bytes::Bytes]) -> Arc<[Frame]> {
    let text = encode_raw(event_kind(attachments), nsp, None, args, attachments.len());
    event_frames(text, attachments)
}

/// Frames for one namespace socket's connection, shared by every recipient.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The encoded packet (and its binary attachments).
    pub frames: Arc<[Frame]>,
    /// When the publish reached the broker (for the publish-to-write metric).
    pub at: std::time::Instant,
}

/// A publish as the broker hands it to a member it writes to directly
/// ([`DirectSink`]): the frames, and their WebSocket encoding, made once by
/// the first sink that needs it and shared by the others.
pub struct Outgoing {
    /// The encoded packet (and its binary attachments).
    pub frames: Arc<[Frame]>,
    /// The frames as they go on the wire, made on first use.
    pub wire: std::cell::OnceCell<bytes::Bytes>,
    /// When the publish reached the broker.
    pub at: std::time::Instant,
}

/// What became of a broadcast handed to a [`DirectSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the socket.
    Queued,
    /// Not queued: the socket's queue is full while its client reads (the
    /// server is behind). Counted as dropped.
    Dropped,
    /// Not queued: the socket is closing, or its client stopped reading
    /// (its connection is told, and closes it as a slow consumer).
    Refused,
}

/// The write side of a member's WebSocket, which the broker writes
/// broadcasts to itself instead of sending each one to the connection
/// (implemented by the transport, which counts what it queues). Never
/// waits.
pub trait DirectSink: Send + Sync {
    /// Queues `broadcast` after everything queued before.
    fn push_broadcast(&self, broadcast: &Outgoing) -> Pushed;
}

/// A namespace socket is put out (the API's kick, another node's
/// disconnect): its connection closes, or it only leaves its namespace.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Evict {
    /// Why, for the log and the audit log.
    pub detail: String,
    /// Only leave this namespace (server namespace disconnect) instead of
    /// closing the connection.
    pub namespace: Option<Arc<str>>,
}

/// A namespace socket the broker can deliver to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// Its namespace.
    pub nsp: Arc<str>,
    /// The authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// Where publishes go.
    pub deliver: Recipient<Deliver>,
    /// Where an eviction goes.
    pub evict: Recipient<Evict>,
    /// The socket's WebSocket, when broadcasts may be written to it
    /// directly: everything the connection wrote for this namespace socket
    /// is already queued there, so order holds.
    pub direct: Option<Arc<dyn DirectSink>>,
    /// The client's address, for the room quota per address (`None`: not
    /// known, and not counted).
    pub address: Option<std::net::IpAddr>,
    /// In a recovering namespace: the socket's private session id and
    /// `socket.data` (its identity), kept when it disconnects.
    pub recovery: Option<Recoverable>,
    /// The connection (its Engine.IO session id): only its own
    /// [`Unregister`] removes the socket, as a recovered socket keeps its
    /// id on a new connection while the old one may still be closing.
    pub owner: Arc<str>,
}

/// What a socket of a recovering namespace keeps when it disconnects.
#[derive(Debug, Clone)]
pub struct Recoverable {
    /// The private session id its client was given.
    pub pid: Arc<str>,
    /// `socket.data`: its identity.
    pub data: serde_json::Value,
}

/// The namespace socket is gone: it leaves every room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// It ended for a reason that keeps its session for recovery.
    pub keep: bool,
    /// The connection it was registered by ([`Register::owner`]).
    pub owner: Arc<str>,
}

/// A socket comes back (connection state recovery): registered under the
/// id it had, in the rooms it had, and handed what it missed before any
/// broadcast after, in one step of the broker, so nothing falls between.
/// Refused (and nothing registered) when that cannot be done exactly.
#[derive(Message)]
#[rtype(result = "Result<Resumed, Refused>")]
pub struct Resume {
    /// The registration; its `socket_id` is replaced by the session's.
    pub register: Register,
    /// The offset the client got last (none: it got no event).
    pub offset: Option<Offset>,
    /// The session, taken from the cluster's store (`streams` mode); none:
    /// the broker's own store.
    pub session: Option<Session>,
    /// Most frames the replay may hold (what the connection may buffer).
    pub max_frames: usize,
}

/// A socket that came back.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The id it had.
    pub socket_id: Arc<str>,
    /// Its `socket.data` (its identity).
    pub data: serde_json::Value,
    /// Its rooms.
    pub rooms: usize,
    /// Broadcasts replayed to it.
    pub replayed: usize,
}

/// Join a room on a backend's or another node's behalf (the API, a
/// socketsJoin): the room caps apply, the room quotas do not (the backend
/// decides; the rooms still count towards the quotas, so the client cannot
/// add more of its own).
#[derive(Message)]
#[rtype(result = "Result<(), JoinError>")]
pub struct Join {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// The room.
    pub room: Arc<str>,
}

/// A client's own subscribe: a [`Join`] that the room quotas per address
/// and per user apply to as well.
#[derive(Message)]
#[rtype(result = "Result<(), JoinError>")]
pub struct Subscribe {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// The room.
    pub room: Arc<str>,
}

/// Which room quota a subscribe would go past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `rooms.max_per_address`: the rooms of the sockets of one client address.
    Address,
    /// `rooms.max_per_user`: the rooms of the sockets of one JWT subject.
    User,
}

impl Quota {
    /// The limit, for the breach metric and the audit row.
    pub fn limit(self) -> Limit {
        match self {
            Self::Address => Limit::RoomsPerAddress,
            Self::User => Limit::RoomsPerUser,
        }
    }
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The socket is in `max_rooms_per_socket` rooms already.
    #[error("this socket is in too many rooms")]
    TooManyRooms,
    /// The namespace has `max_rooms` rooms already.
    #[error("the namespace has too many rooms")]
    TooManyRoomsInTotal,
    /// The sockets of this client address, or of this user, are in as many
    /// distinct rooms of the namespace as [`RoomQuotas`] allows.
    #[error("{}", match .0 {
        Quota::Address => "the sockets of this client address are in too many rooms",
        Quota::User => "the sockets of this user are in too many rooms",
    })]
    RoomQuota(Quota),
    /// The room is shaped like a socket id ([`looks_like_socket_id`]).
    #[error("{}", RoomError::SocketId)]
    SocketIdRoom,
    /// The socket is not registered (it left meanwhile).
    #[error("no such socket")]
    UnknownSocket,
}

/// Leave a room.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Leave {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// The room.
    pub room: Arc<str>,
}

/// A client's publish to the members of some rooms (each member once),
/// here and, with a cluster, on the other nodes. It reaches rooms only: a
/// name shaped like a socket id (which clients are refused before it gets
/// here) makes the whole publish reach nobody, here or elsewhere, so that
/// no client reaches a socket by its id. A backend's publish is a
/// [`BackendPublish`].
#[derive(Message)]
#[rtype(result = "Routed")]
pub struct Publish {
    nsp: Arc<str>,
    rooms: Vec<Arc<str>>,
    /// Sockets (or rooms) that do not receive it (the publisher, `except`).
    except: Vec<Arc<str>>,
    /// The event encoded for this node's members (made here, on the
    /// publisher's thread, not on the broker's) ...
    frames: Arc<[Frame]>,
    /// ... and as the other nodes get it: the JSON text `[event, data]`
    /// (with placeholders; the end of the first frame, shared, not a copy)
    /// and the attachments. Both come from [`Publish::event`], the one way
    /// to make a publish.
    args: (ByteString, Vec<bytes::Bytes>),
}

/// Why a publish was refused before it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The event name is empty, too long, or reserved.
    #[error("\"event\" must be a non-reserved name of 1 to 128 bytes")]
    InvalidEvent,
}

impl PublishError {
    /// The stable code of the error (an ack's or the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidEvent => "invalid_event",
        }
    }
}

impl Publish {
    /// The publish of `event` with `data` (none: an event without
    /// arguments) and `attachments` (the binary values `data`'s
    /// placeholders stand for) to the members of `rooms` in `nsp`, but
    /// not to `except`: what a client's `publish` and the HTTP API make.
    ///
    /// `data` is relayed as the JSON text its publisher wrote, not read:
    /// every subscriber here gets `["<event>",<data>]` byte for byte, and
    /// the other nodes get the same text to carry in the adapter's format.
    pub fn event(
        nsp: Arc<str>,
        rooms: Vec<Arc<str>>,
        except: Vec<Arc<str>>,
        event: &str,
        data: Option<&RawValue>,
        attachments: Vec<bytes::Bytes>,
    ) -> Result<Publish, PublishError> {
        Self::with_rest(nsp, rooms, except, event, data.map_or("", RawValue::get), attachments)
    }

    /// The publish of `event` with several arguments, each a JSON value
    /// (a server's own event, such as the Admin UI's, not a client's
    /// text), to the whole of `nsp`.
    pub fn values(nsp: Arc<str>, event: &str, args: &[serde_json::Value]) -> Result<Publish, PublishError> {
        let rest: Vec<String> = args.iter().map(serde_json::Value::to_string).collect();
        Self::with_rest(nsp, vec![], vec![], event, &rest.join(","), vec![])
    }

    /// [`Self::event`] with its arguments as JSON text (comma separated).
    fn with_rest(
        nsp: Arc<str>,
        rooms: Vec<Arc<str>>,
        except: Vec<Arc<str>>,
        event: &str,
        rest: &str,
        attachments: Vec<bytes::Bytes>,
    ) -> Result<Publish, PublishError> {
        if !valid_event(event) {
            return Err(PublishError::InvalidEvent);
        }
        let text = encode_event(event_kind(&attachments), &nsp, None, event, rest, attachments.len());
        // The arguments are the end of the frame, after its header.
        let at = header_len(event_kind(&attachments), &nsp, None, attachments.len());
        let frames = event_frames(text, &attachments);
        let Frame::Text(frame) = &frames[0] else {
            unreachable!("event_frames puts the packet first")
        };
        let args = frame.slice_ref(&frame[at..]);
        Ok(Publish {
            frames,
            nsp,
            rooms,
            except,
            args: (args, attachments),
        })
    }

    /// Bytes of its frames (what the publisher's window counts).
    pub fn size(&self) -> usize {
        self.frames.iter().map(Frame::len).sum()
    }
}

/// A backend's publish (the HTTP API): as [`Publish`], but a name shaped
/// like a socket id ([`looks_like_socket_id`]) is that socket, wherever it
/// lives, as with Socket.IO's `io.to(id)`: delivered here if the socket is
/// here, and sent to the other nodes, which do the same.
#[derive(Message)]
#[rtype(result = "Routed")]
pub struct BackendPublish(pub Publish);

/// What the broker did with a publish.
#[derive(Debug, MessageResponse)]
pub struct Routed {
    /// This node's members it reaches.
    pub recipients: usize,
    /// `streams` mode: resolves to whether the stream took it (the node's
    /// own members get it from the stream, every node in the same order).
    pub stored: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl From<usize> for Routed {
    fn from(recipients: usize) -> Self {
        Routed {
            recipients,
            stored: None,
        }
    }
}

/// Connects the broker to the cluster adapter.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachCluster {
    /// Where this node's broadcasts go.
    pub adapter: Recipient<Outbound>,
    /// The room set to keep up to date, when the adapter subscribes per room.
    pub rooms: Option<Arc<RoomWatch>>,
    /// The adapter orders every broadcast (`streams` mode): this node's own
    /// are delivered when they come back as [`Sequenced`], not at once.
    pub sequenced: bool,
    /// The cluster's session store (`streams` mode), where sessions of
    /// recovering sockets are kept instead of the broker's memory.
    pub store: Option<SessionStore>,
}

/// Where the broker keeps sessions in the cluster.
#[derive(Clone)]
pub struct SessionStore {
    /// Stores a session.
    pub keep: Recipient<KeepSession>,
    /// Deletes one.
    pub drop: Recipient<DropSession>,
}

/// Members of a room.
#[derive(Message)]
#[rtype(result = "RoomMembers")]
pub struct Members {
    /// Namespace.
    pub nsp: Arc<str>,
    /// Room.
    pub room: Arc<str>,
    /// Most members to list.
    pub limit: usize,
}

/// A room's member count and (up to a limit) its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomMembers {
    /// All members.
    pub count: usize,
    /// `(socket id, user)`, in join order, at most the limit.
    pub members: Vec<(Arc<str>, Option<Arc<str>>)>,
}

/// Rooms of a namespace with their member counts.
#[derive(Message)]
#[rtype(result = "Vec<(Arc<str>, usize)>")]
pub struct ListRooms {
    /// Namespace.
    pub nsp: Arc<str>,
}

/// Evicts a namespace socket's connection (API kick).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Kick {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// Why.
    pub detail: String,
}

/// Broker limits and behaviour.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Rooms one socket may be in.
    pub max_rooms_per_socket: usize,
    /// Rooms one namespace may have.
    pub max_rooms: usize,
    /// Namespaces whose rooms get `presence:join` / `presence:leave`.
    pub notify_namespaces: Vec<String>,
    /// Where deliveries are counted: those the broker writes itself
    /// ([`DirectSink`]) and those dropped for a full mailbox or queue (a
    /// connection counts what it writes).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Connection state recovery.
    pub recovery: RecoveryConfig,
}

/// The room quotas: distinct rooms of one namespace that the sockets of one
/// client address, and of one JWT subject, may be in at once. They keep one
/// address (many connections) or one user (many devices) from filling
/// `rooms.max_total` for everyone; the per-socket cap alone does not, as it
/// multiplies with the connections. The default counts nothing.
#[derive(Debug, Clone, Default)]
pub struct RoomQuotas {
    /// `rooms.max_per_address`; 0 = no quota.
    pub per_address: usize,
    /// `rooms.max_per_user`; 0 = no quota.
    pub per_user: usize,
    /// `limits.exempt`: addresses (a gateway, a monitoring host) whose
    /// sockets are not counted per address.
    pub exempt: IpRanges,
}

impl RoomQuotas {
    /// The quotas of `[rooms]`, not counting `exempt` addresses.
    pub fn of(rooms: &crate::config::RoomSettings, exempt: IpRanges) -> Self {
        Self {
            per_address: rooms.max_per_address,
            per_user: rooms.max_per_user,
            exempt,
        }
    }
}

/// The rooms of one group of sockets (one client address, or one user, in
/// one namespace): room → how many of the group's sockets are in it. Its
/// length is what a quota counts; a room leaves it with the group's last
/// member, and an empty group is removed, so it holds only what sockets
/// are in.
type GroupRooms = HashMap<Arc<str>, u32>;

/// Counts one more member of `room` in `group`.
fn count_in<K: std::hash::Hash + Eq>(groups: &mut HashMap<K, GroupRooms>, group: K, room: &Arc<str>) {
    *groups.entry(group).or_default().entry(room.clone()).or_default() += 1;
}

/// Counts one member of `room` in `group` less.
fn count_out<K: std::hash::Hash + Eq>(groups: &mut HashMap<K, GroupRooms>, group: K, room: &Arc<str>) {
    let Some(rooms) = groups.get_mut(&group) else { return };
    if let Some(n) = rooms.get_mut(room) {
        *n -= 1;
        if *n == 0 {
            rooms.remove(room);
        }
    }
    if rooms.is_empty() {
        groups.remove(&group);
    }
}

/// Whether `group` may enter `room` under a quota of `max` distinct rooms.
fn within_quota<K: std::hash::Hash + Eq>(
    groups: &HashMap<K, GroupRooms>,
    group: &K,
    room: &Arc<str>,
    max: usize,
) -> bool {
    groups
        .get(group)
        .is_none_or(|rooms| rooms.len() < max || rooms.contains_key(room))
}

/// Whom a broadcast goes to.
enum Targets<'a> {
    /// These sockets.
    Ids(&'a [Arc<str>]),
    /// The members of one room but those named (socket ids, no rooms).
    Room(&'a Room, &'a [Arc<str>]),
}

/// What became of one broadcast's deliveries.
#[derive(Default)]
struct Tally {
    direct: usize,
    via_connection: usize,
    dropped: usize,
}

impl Tally {
    fn add(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.direct += 1,
            Pushed::Dropped => self.dropped += 1,
            Pushed::Refused => {}
        }
    }
}

struct Member {
    nsp: Arc<str>,
    user: Option<Arc<str>>,
    deliver: Recipient<Deliver>,
    evict: Recipient<Evict>,
    direct: Option<Arc<dyn DirectSink>>,
    rooms: HashSet<Arc<str>>,
    /// The group this socket counts in for the quota per address: `None`
    /// when that quota is off, the address unknown or exempt.
    address: Option<AddressKey>,
    /// Counted per user: the quota per user is on and the socket has one.
    per_user: bool,
    /// A recovering namespace's socket: its session (boxed: most members
    /// have none, and every member is in the broker's memory as long as
    /// its connection is open).
    recovery: Option<Box<Recovering>>,
    /// Where its namespace's log was when it joined.
    start: Offset,
    /// The offset of the last logged broadcast naming it by its id.
    reached: Offset,
    /// [`Register::owner`].
    owner: Arc<str>,
}

/// A member's session in a recovering namespace.
struct Recovering {
    /// Its private id and data.
    session: Recoverable,
    /// `streams` mode: when it was last written to the store.
    stored: Option<std::time::Instant>,
    /// `streams` mode: it changed (a room) since, or was never written:
    /// written at the next tick.
    dirty: bool,
}

impl Member {
    /// Its session in the cluster's store (`streams` mode) is out of date:
    /// written at the next tick.
    fn changed(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            r.dirty = r.stored.is_some();
        }
    }
}

/// Members of a room in join order (for presence lists).
#[derive(Default)]
struct Room {
    order: BTreeMap<u64, Slot>,
    seq: HashMap<Arc<str>, u64>,
    /// The offset of the last logged broadcast to it (recovery: a member
    /// that no broadcast reached since it joined missed nothing before).
    last: Offset,
}

/// A room member: its id, and its socket when the broker writes to it
/// directly (kept here so a publish to one room needs no lookup per
/// member).
struct Slot {
    id: Arc<str>,
    direct: Option<Arc<dyn DirectSink>>,
}

impl Room {
    fn ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.order.values().map(|slot| &slot.id)
    }
}

/// The member of a session's `data` where roomcast keeps the offset its
/// socket's namespace log was at when it joined (a client that got no
/// event recovers from there).
const START_KEY: &str = "roomcastJoinedAt";

/// Sessions written to the cluster's store per tick at most: a node with a
/// hundred thousand sockets spreads their refreshes over the ticks rather
/// than filling the adapter's queue at once.
const REFRESH_PER_TICK: usize = 2_000;

/// A socket's state handed to its recovery: its id, rooms, data (its
/// identity) and where its recovery starts when its client got no event.
type Handover = (Arc<str>, Vec<Arc<str>>, serde_json::Value, Offset);

/// How long a resume waits for a node that just started to read the
/// stream ([`Resume`]); beyond, it is refused as unavailable. Reading the
/// recovery window of a stream (at most `redis.stream_max_len` entries)
/// takes well under a second.
const PARKED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// `session` with the offset its socket joined at in its data.
fn with_start(mut session: Session, start: Offset) -> Session {
    if !session.data.is_object() {
        session.data = serde_json::Value::Object(Default::default());
    }
    if let Some(map) = session.data.as_object_mut() {
        map.insert(START_KEY.into(), start.to_string().into());
    }
    session
}

/// Watches sockets joining and leaving rooms (the Admin UI's feed).
/// Called on the broker's thread for every change, so it must return at
/// once: a check, and at most a non-blocking send.
pub trait MembershipWatch: Send + Sync {
    /// `socket_id` joined (`joined`) or left `room` of `nsp`.
    fn room_changed(&self, nsp: &str, room: &str, socket_id: &str, joined: bool);
}

/// The broker actor.
pub struct Broker {
    config: BrokerConfig,
    /// Told of every membership change, if anyone watches.
    watch: Option<Arc<dyn MembershipWatch>>,
    /// The sockets of the namespaces listed by [`IndexNamespace`].
    indexed: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// The other nodes (a Redis adapter), if any.
    cluster: Option<Recipient<Outbound>>,
    /// The adapter's view of which rooms exist here (sharded, dynamic).
    room_watch: Option<Arc<RoomWatch>>,
    /// See [`AttachCluster::sequenced`].
    sequenced: bool,
    /// Boxed: a member is some 250 bytes, and a table that just doubled is
    /// half empty (the fan-out reads a room's slots, not this map).
    members: HashMap<Arc<str>, Box<Member>>,
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, Room>>,
    next_seq: u64,
    quotas: RoomQuotas,
    /// Rooms per (namespace, client address), for `quotas.per_address`.
    by_address: HashMap<(Arc<str>, AddressKey), GroupRooms>,
    /// Rooms per (namespace, user), for `quotas.per_user`.
    by_user: HashMap<(Arc<str>, Arc<str>), GroupRooms>,
    /// The recovery log and the local sessions.
    recovery: Recovery,
    /// `streams` mode: the cluster's session store.
    store: Option<SessionStore>,
    /// The connected sockets of recovering namespaces by private session
    /// id, for a client that comes back before its old connection is
    /// known to be gone.
    by_pid: HashMap<Arc<str>, Arc<str>>,
    /// The offset of the last logged broadcast to the whole of each
    /// namespace (see [`Room::last`]).
    nsp_last: HashMap<Arc<str>, Offset>,
    /// Recovering sockets in the order their start is due to move up
    /// ([`Self::ratchet`]); an entry whose socket is gone, or was reached,
    /// is dropped when its turn comes.
    unreached: VecDeque<(std::time::Instant, Arc<str>)>,
    /// `streams` mode: resumes waiting for the stream to be read.
    parked: Vec<(Resume, tokio::sync::oneshot::Sender<Result<Resumed, Refused>>)>,
}

impl Broker {
    /// A broker with no rooms.
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            recovery: Recovery::new(config.recovery.clone()),
            config,
            watch: None,
            indexed: HashMap::new(),
            cluster: None,
            room_watch: None,
            sequenced: false,
            members: HashMap::new(),
            rooms: HashMap::new(),
            next_seq: 0,
            quotas: RoomQuotas::default(),
            by_address: HashMap::new(),
            by_user: HashMap::new(),
            store: None,
            by_pid: HashMap::new(),
            parked: Vec::new(),
            nsp_last: HashMap::new(),
            unreached: VecDeque::new(),
        }
    }

    /// The same broker with room quotas (none without this).
    pub fn with_quotas(mut self, quotas: RoomQuotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Hands `broadcast` to one member, through its connection (a member
    /// the broker writes to directly is handed it by [`Self::deliver_all`]).
    fn deliver(&self, socket_id: &Arc<str>, broadcast: &Outgoing, tally: &mut Tally) {
        let Some(member) = self.members.get(socket_id) else {
            return;
        };
        if let Some(direct) = &member.direct {
            tally.add(direct.push_broadcast(broadcast));
            return;
        }
        match member.deliver.try_send(Deliver {
            frames: broadcast.frames.clone(),
            at: broadcast.at,
        }) {
            Ok(()) => tally.via_connection += 1,
            // The connection's mailbox is full: the server is behind (its
            // connections drain their mailboxes whether or not their clients
            // read; one that stops reading is closed by its own write side).
            // The delivery is dropped and counted, and the publisher never
            // waits: throughput holds under overload and memory stays
            // bounded by the mailboxes.
            Err(SendError::Full(_)) => tally.dropped += 1,
            Err(SendError::Closed(_)) => {}
        }
    }

    /// Hands `frames` to each of `targets` (or, for `Some(room)`, to the
    /// members of that room that are not named in `except`); how many it
    /// reached. Counted once per call, not per member.
    fn deliver_all(&self, targets: Targets<'_>, frames: Arc<[Frame]>, at: std::time::Instant) -> usize {
        let broadcast = Outgoing {
            frames,
            wire: std::cell::OnceCell::new(),
            at,
        };
        let mut tally = Tally::default();
        match targets {
            Targets::Ids(ids) => ids.iter().for_each(|id| self.deliver(id, &broadcast, &mut tally)),
            Targets::Room(room, except) => {
                // Excepted members by their place in the room (no string
                // comparison per member).
                let skip: Vec<u64> = except.iter().filter_map(|e| room.seq.get(e).copied()).collect();
                for (seq, slot) in &room.order {
                    if skip.contains(seq) {
                        continue;
                    }
                    match &slot.direct {
                        Some(direct) => tally.add(direct.push_broadcast(&broadcast)),
                        None => self.deliver(&slot.id, &broadcast, &mut tally),
                    }
                }
            }
        }
        let metrics = &self.config.metrics;
        if tally.direct > 0 {
            let n = tally.direct as u64;
            let bytes: usize = broadcast.frames.iter().map(Frame::len).sum();
            metrics.deliveries.inc_by(n);
            metrics.events_out.inc_by(n * broadcast.frames.len() as u64);
            metrics.bytes_out.inc_by(n * bytes as u64);
        }
        if tally.dropped > 0 {
            metrics.deliveries_dropped.inc_by(tally.dropped as u64);
        }
        tally.direct + tally.via_connection
    }

    fn notify(&mut self, nsp: &Arc<str>, room: &Arc<str>, event: &str, socket_id: &Arc<str>) {
        if !self.config.notify_namespaces.iter().any(|n| **n == **nsp) {
            return;
        }
        let user = self.members.get(socket_id).and_then(|m| m.user.clone());
        let data = json!([event, {"room": &**room, "id": &**socket_id, "user": user.as_deref()}]);
        let text = encode(PacketType::Event, nsp, None, Some(&data), 0);
        let frames: Arc<[Frame]> = Arc::new([Frame::Text(text.into())]);
        let targets: Vec<Arc<str>> = self
            .rooms
            .get(nsp)
            .and_then(|r| r.get(room))
            .map(|r| r.ids().filter(|id| *id != socket_id).cloned().collect())
            .unwrap_or_default();
        self.deliver_all(Targets::Ids(&targets), frames, std::time::Instant::now());
    }

    /// The local members a broadcast reaches, each once: the members of
    /// `rooms` (no rooms = the whole namespace), minus the sockets named in
    /// `except` and the members of rooms named there. With `ids_as_rooms`
    /// (a backend's publish, broadcasts from Socket.IO servers and emitters,
    /// where every socket is in a room named by its id) a name shaped like a
    /// socket id is that socket; clients publishing through the protocol
    /// reach rooms only. No room has such a name, so the two never mix.
    fn targets(&self, nsp: &Arc<str>, rooms: &[Arc<str>], except: &[Arc<str>], ids_as_rooms: bool) -> Vec<Arc<str>> {
        let ns_rooms = self.rooms.get(nsp);
        let in_nsp = |id: &Arc<str>| self.members.get(id).is_some_and(|m| m.nsp == *nsp);
        let mut excluded: HashSet<&Arc<str>> = HashSet::new();
        for name in except {
            excluded.insert(name);
            if let Some(room) = ns_rooms.and_then(|r| r.get(name)) {
                excluded.extend(room.ids());
            }
        }
        // A room's members are distinct: one room needs no de-duplication.
        let distinct = rooms.len() == 1 && !ids_as_rooms;
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        let mut targets = Vec::new();
        let mut add = |id: &Arc<str>| {
            if !excluded.contains(id) && (distinct || seen.insert(id.clone())) {
                targets.push(id.clone());
            }
        };
        if rooms.is_empty() {
            match self.indexed.get(nsp) {
                Some(index) => index.iter().for_each(&mut add),
                None => self.members.keys().filter(|id| in_nsp(id)).for_each(&mut add),
            }
        }
        for name in rooms {
            if let Some(room) = ns_rooms.and_then(|r| r.get(name)) {
                room.ids().for_each(&mut add);
            }
            if !(ids_as_rooms && looks_like_socket_id(name)) {
                continue;
            }
            if let Some((id, _)) = self.members.get_key_value(name).filter(|(id, _)| in_nsp(id)) {
                add(id);
            }
        }
        targets
    }

    /// A broadcast to one room with only sockets excepted (the usual
    /// publish), whose members then need no list: `Some(the room, if it
    /// exists)`. `None`: use [`Self::targets`] (several rooms, a room
    /// excepted, or, with `ids_as_rooms`, a name shaped like a socket id).
    fn single_room(
        &self,
        nsp: &Arc<str>,
        rooms: &[Arc<str>],
        except: &[Arc<str>],
        ids_as_rooms: bool,
    ) -> Option<Option<&Room>> {
        let [room] = rooms else { return None };
        let ns_rooms = self.rooms.get(nsp);
        if except.iter().any(|e| ns_rooms.is_some_and(|r| r.contains_key(e))) {
            return None;
        }
        if ids_as_rooms && looks_like_socket_id(room) {
            return None;
        }
        Some(ns_rooms.and_then(|r| r.get(room)))
    }

    /// Adds a socket to a room; `quota`: a client's own subscribe, which the
    /// room quotas apply to (every membership counts towards them).
    fn join(&mut self, socket_id: &Arc<str>, room: &Arc<str>, quota: bool) -> Result<(), JoinError> {
        if looks_like_socket_id(room) {
            return Err(JoinError::SocketIdRoom);
        }
        let max_per_socket = self.config.max_rooms_per_socket;
        let max_rooms = self.config.max_rooms;
        let member = self.members.get_mut(socket_id).ok_or(JoinError::UnknownSocket)?;
        if member.rooms.contains(room) {
            return Ok(());
        }
        if member.rooms.len() >= max_per_socket {
            return Err(JoinError::TooManyRooms);
        }
        let nsp = member.nsp.clone();
        let address = member.address.map(|a| (nsp.clone(), a));
        let user = member
            .user
            .clone()
            .filter(|_| member.per_user)
            .map(|u| (nsp.clone(), u));
        if quota {
            if let Some(group) = &address {
                if !within_quota(&self.by_address, group, room, self.quotas.per_address) {
                    return Err(JoinError::RoomQuota(Quota::Address));
                }
            }
            if let Some(group) = &user {
                if !within_quota(&self.by_user, group, room, self.quotas.per_user) {
                    return Err(JoinError::RoomQuota(Quota::User));
                }
            }
        }
        let rooms = self.rooms.entry(nsp.clone()).or_default();
        if !rooms.contains_key(room) && rooms.len() >= max_rooms {
            return Err(JoinError::TooManyRoomsInTotal);
        }
        member.rooms.insert(room.clone());
        // Its session in the cluster's store gets the room at the next tick.
        member.changed();
        if let Some(group) = address {
            count_in(&mut self.by_address, group, room);
        }
        if let Some(group) = user {
            count_in(&mut self.by_user, group, room);
        }
        if let (Some(watch), false) = (&self.room_watch, rooms.contains_key(room)) {
            watch.set(&nsp, room, true);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = rooms.entry(room.clone()).or_default();
        r.order.insert(
            seq,
            Slot {
                id: socket_id.clone(),
                direct: member.direct.clone(),
            },
        );
        r.seq.insert(socket_id.clone(), seq);
        self.notify(&nsp, room, "presence:join", socket_id);
        if let Some(watch) = &self.watch {
            watch.room_changed(&nsp, room, socket_id, true);
        }
        Ok(())
    }

    fn leave(&mut self, socket_id: &Arc<str>, room: &Arc<str>) -> bool {
        let Some(member) = self.members.get_mut(socket_id) else {
            return false;
        };
        if !member.rooms.remove(room) {
            return false;
        }
        member.changed();
        let nsp = member.nsp.clone();
        if let Some(address) = member.address {
            count_out(&mut self.by_address, (nsp.clone(), address), room);
        }
        if let (true, Some(user)) = (member.per_user, &member.user) {
            count_out(&mut self.by_user, (nsp.clone(), user.clone()), room);
        }
        if let Some(rooms) = self.rooms.get_mut(&nsp) {
            if let Some(r) = rooms.get_mut(room) {
                if let Some(seq) = r.seq.remove(socket_id) {
                    r.order.remove(&seq);
                }
                if r.order.is_empty() {
                    rooms.remove(room);
                    if let Some(watch) = &self.room_watch {
                        watch.set(&nsp, room, false);
                    }
                }
            }
            if rooms.is_empty() {
                self.rooms.remove(&nsp);
            }
        }
        self.notify(&nsp, room, "presence:leave", socket_id);
        if let Some(watch) = &self.watch {
            watch.room_changed(&nsp, room, socket_id, false);
        }
        true
    }
}

impl Broker {
    /// Lists the sockets of `nsp` from now on (see [`IndexNamespace`]).
    fn index_namespace(&mut self, nsp: Arc<str>) {
        let index = self
            .members
            .iter()
            .filter(|(_, m)| m.nsp == nsp)
            .map(|(id, _)| id.clone())
            .collect();
        self.indexed.insert(nsp, index);
    }

    /// Makes a namespace socket a member (of no room yet).
    fn register(&mut self, msg: Register) {
        let address = msg
            .address
            .filter(|ip| self.quotas.per_address > 0 && !self.quotas.exempt.contains(*ip))
            .map(AddressKey::of);
        // A socket id registered again (a recovered socket taking over its
        // id) would leave its old rooms' quota counts behind: it leaves
        // them first.
        self.unregister(&msg.socket_id, false);
        let recovery = msg.recovery.filter(|_| self.recovery.covers(&msg.nsp));
        if let Some(r) = &recovery {
            self.by_pid.insert(r.pid.clone(), msg.socket_id.clone());
            self.unreached
                .push_back((std::time::Instant::now() + self.ratchet_every(), msg.socket_id.clone()));
        }
        let start = self.recovery.head(&msg.nsp);
        // Written at the next tick (dirty): a node killed after that
        // leaves the session behind.
        let stored = (recovery.is_some() && self.store.is_some()).then(std::time::Instant::now);
        if let Some(index) = self.indexed.get_mut(&msg.nsp) {
            index.insert(msg.socket_id.clone());
        }
        self.members.insert(
            msg.socket_id,
            Box::new(Member {
                nsp: msg.nsp,
                per_user: self.quotas.per_user > 0 && msg.user.is_some(),
                user: msg.user,
                deliver: msg.deliver,
                evict: msg.evict,
                direct: msg.direct,
                rooms: HashSet::new(),
                address,
                recovery: recovery.map(|session| {
                    Box::new(Recovering {
                        session,
                        dirty: stored.is_some(),
                        stored,
                    })
                }),
                start,
                reached: Offset::default(),
                owner: msg.owner,
            }),
        );
    }

    /// The socket leaves every room (giving its quota back) and is
    /// forgotten; with `keep`, its session is kept for recovery (or, in a
    /// recovering namespace, deleted from the cluster's store).
    fn unregister(&mut self, socket_id: &Arc<str>, keep: bool) {
        let start = self.start_of(socket_id);
        let Some(member) = self.members.get(socket_id) else {
            return;
        };
        let rooms: Vec<Arc<str>> = member.rooms.iter().cloned().collect();
        if let Some(r) = member.recovery.as_ref().map(|r| &r.session) {
            self.by_pid.remove(&r.pid);
            let session = Session {
                sid: socket_id.to_string(),
                pid: r.pid.to_string(),
                rooms: rooms.iter().map(|r| r.to_string()).collect(),
                data: r.data.clone(),
            };
            match (&self.store, keep) {
                (Some(store), true) => {
                    let ttl = self.recovery.config.window;
                    let session = with_start(session, start);
                    let _ = store.keep.try_send(KeepSession { session, ttl });
                }
                (Some(store), false) => {
                    let _ = store.drop.try_send(DropSession { pid: session.pid });
                }
                (None, true) => {
                    let kept = Recovery::session(
                        socket_id.clone(),
                        member.nsp.clone(),
                        rooms.clone(),
                        r.data.clone(),
                        start,
                    );
                    self.recovery.keep(r.pid.clone(), kept);
                }
                (None, false) => {}
            }
        }
        for room in rooms {
            self.leave(socket_id, &room);
        }
        if let Some(m) = self.members.remove(socket_id) {
            if let Some(index) = self.indexed.get_mut(&m.nsp) {
                index.remove(socket_id);
            }
        }
    }

    /// Registers a socket that comes back with what it missed; see [`Resume`].
    fn resume(&mut self, msg: Resume) -> Result<Resumed, Refused> {
        let nsp = msg.register.nsp.clone();
        let pid = match &msg.register.recovery {
            Some(r) if self.recovery.covers(&nsp) => r.pid.clone(),
            _ => return Err(Refused::Unknown),
        };
        let (sid, rooms, data, start): (Arc<str>, Vec<Arc<str>>, serde_json::Value, Offset) = match msg.session {
            Some(session) => {
                let sid: Arc<str> = session.sid.as_str().into();
                // Node.js servers list the socket's own room; roomcast has none.
                let rooms = session
                    .rooms
                    .iter()
                    .filter(|r| **r != session.sid && !looks_like_socket_id(r))
                    .map(|r| Arc::from(r.as_str()))
                    .collect();
                let start = session
                    .data
                    .get(START_KEY)
                    .and_then(serde_json::Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                (sid, rooms, session.data, start)
            }
            None => match self.recovery.take(&pid, &nsp) {
                Some(kept) => (kept.sid, kept.rooms, kept.data, kept.start),
                None => self.take_over(&pid, &nsp).ok_or(Refused::Unknown)?,
            },
        };
        if self.members.get(&sid).is_some_and(|m| m.owner != msg.register.owner) {
            // Its socket is still connected here (a session from the
            // cluster's store whose connection is not known to be gone):
            // the client is back, so that connection is gone.
            self.take_over(&pid, &nsp);
        }
        let from = msg.offset.unwrap_or(start);
        let room_set: HashSet<Arc<str>> = rooms.iter().cloned().collect();
        let replay = self.recovery.replay(&nsp, from, &sid, &room_set, msg.max_frames)?;
        let mut register = msg.register;
        register.socket_id = sid.clone();
        if let Some(r) = register.recovery.as_mut() {
            r.data = data.clone();
        }
        self.register(register);
        let mut joined = 0;
        for room in &rooms {
            // Back in its rooms: the caps apply, the quotas do not (they
            // were checked when it joined).
            if self.join(&sid, room, false).is_ok() {
                joined += 1;
            }
        }
        if replay.packets > 0 {
            let at = std::time::Instant::now();
            self.deliver_all(Targets::Ids(std::slice::from_ref(&sid)), replay.frames, at);
        }
        let metrics = &self.config.metrics;
        metrics.recoveries.inc();
        metrics.recovery_replayed.inc_by(replay.packets as u64);
        Ok(Resumed {
            socket_id: sid,
            data,
            rooms: joined,
            replayed: replay.packets,
        })
    }

    /// A client comes back while its socket `pid` is still connected here
    /// (its old connection lost, but not yet known to be: no close, and
    /// the heartbeat has not run out): the old connection is told to leave
    /// the namespace, and its socket's state is handed over as a kept
    /// session would be.
    fn take_over(&mut self, pid: &str, nsp: &str) -> Option<Handover> {
        let sid = self.by_pid.get(pid)?.clone();
        let start = self.start_of(&sid);
        let member = self.members.get(&sid).filter(|m| *m.nsp == *nsp)?;
        let data = member
            .recovery
            .as_ref()
            .map(|r| r.session.data.clone())
            .unwrap_or_default();
        let rooms: Vec<Arc<str>> = member.rooms.iter().cloned().collect();
        member.evict.do_send(Evict {
            detail: "its client came back on another connection (connection state recovery)".into(),
            namespace: Some(member.nsp.clone()),
        });
        self.unregister(&sid, false);
        Some((sid, rooms, data, start))
    }

    /// Every tick (a second, or half `recovery.refresh` or an eighth of
    /// the window if shorter): what is older than the recovery window
    /// goes, quiet sockets' starts move up, the gauges are set, and
    /// (`streams` mode) the sessions of connected sockets that are due are
    /// written to the store again.
    fn tick(&mut self) {
        let now = std::time::Instant::now();
        self.recovery.expire(now);
        self.ratchet(now);
        let metrics = &self.config.metrics;
        metrics.recovery_log_bytes.set(self.recovery.log_bytes() as i64);
        metrics.recovery_sessions.set(self.recovery.sessions() as i64);
        let Some(store) = &self.store else { return };
        let refresh = self.recovery.config.refresh;
        // Each write lasts the window past the next one, so a session
        // outlives its node by at least the window.
        let ttl = self.recovery.config.window + refresh * 2;
        let due: Vec<Arc<str>> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.recovery
                    .as_ref()
                    .is_some_and(|r| r.stored.is_some_and(|at| r.dirty || now.duration_since(at) >= refresh))
            })
            .map(|(sid, _)| sid.clone())
            .take(REFRESH_PER_TICK)
            .collect();
        for sid in due {
            let start = self.start_of(&sid);
            let Some(member) = self.members.get_mut(&sid) else {
                continue;
            };
            let Some(r) = member.recovery.as_mut() else { continue };
            let session = Session {
                sid: sid.to_string(),
                pid: r.session.pid.to_string(),
                rooms: member.rooms.iter().map(|r| r.to_string()).collect(),
                data: r.session.data.clone(),
            };
            if store
                .keep
                .try_send(KeepSession {
                    session: with_start(session, start),
                    ttl,
                })
                .is_err()
            {
                break;
            }
            r.stored = Some(now);
            r.dirty = false;
        }
    }

    /// Records where a logged broadcast for `target` went: its rooms (or
    /// the namespace, or a socket named by id) were last reached at
    /// `offset`.
    fn note_reach(&mut self, nsp: &Arc<str>, target: &Target, offset: Offset) {
        if target.rooms.is_empty() {
            self.nsp_last.insert(nsp.clone(), offset);
            return;
        }
        let ns_rooms = self.rooms.get_mut(nsp);
        if let Some(ns_rooms) = ns_rooms {
            for name in &target.rooms {
                if let Some(room) = ns_rooms.get_mut(name) {
                    room.last = offset;
                }
            }
        }
        if target.ids_as_rooms {
            for name in target.rooms.iter().filter(|r| looks_like_socket_id(r)) {
                if let Some(member) = self.members.get_mut(name) {
                    member.reached = offset;
                }
            }
        }
    }

    /// Whether a logged broadcast reached `member` (its rooms, its
    /// namespace, or its id) after its start.
    fn reached_since_start(&self, member: &Member) -> bool {
        let ns_rooms = self.rooms.get(&member.nsp);
        let latest = member
            .rooms
            .iter()
            .filter_map(|r| ns_rooms.and_then(|rooms| rooms.get(r)).map(|room| room.last))
            .chain(self.nsp_last.get(&member.nsp).copied())
            .chain([member.reached])
            .max()
            .unwrap_or_default();
        latest > member.start
    }

    /// Where a socket's recovery starts when its client got no event: its
    /// start (where its namespace's log was when it joined, moved up by
    /// [`Self::ratchet`] for as long as nothing reached it), or, when no
    /// logged broadcast has reached its rooms, its namespace or its id
    /// since (so it missed nothing), where the log is now.
    fn start_of(&self, sid: &Arc<str>) -> Offset {
        let Some(member) = self.members.get(sid) else {
            return Offset::default();
        };
        match self.reached_since_start(member) {
            true => member.start,
            false => self.recovery.head(&member.nsp),
        }
    }

    /// How long a recovering socket's start stays before [`Self::ratchet`]
    /// moves it up: a quarter of the window, so the log still holds what
    /// came after it when a first broadcast reaches the socket as its
    /// connection dies.
    fn ratchet_every(&self) -> std::time::Duration {
        (self.recovery.config.window / 4).max(std::time::Duration::from_millis(1))
    }

    /// Moves up the start of the recovering sockets that no logged
    /// broadcast reached since their start, once a quarter of the window
    /// has passed: a quiet socket in a busy namespace whose first event is
    /// written to a connection that is already dead (its client got no
    /// offset) recovers from a start the log still holds, not from where
    /// the log was when it joined, long trimmed. A socket that was reached
    /// keeps its start (what came after it is what it may have missed).
    fn ratchet(&mut self, now: std::time::Instant) {
        let every = self.ratchet_every();
        while self.unreached.front().is_some_and(|(due, _)| *due <= now) {
            // unwrap: front() is some.
            let (_, sid) = self.unreached.pop_front().unwrap();
            let Some(member) = self.members.get(&sid) else { continue };
            if member.recovery.is_none() || self.reached_since_start(member) {
                continue;
            }
            let head = self.recovery.head(&member.nsp);
            if let Some(member) = self.members.get_mut(&sid) {
                member.start = head;
            }
            self.unreached.push_back((now + every, sid));
        }
    }

    /// The offset for a broadcast of `nsp` made here (not `streams`
    /// mode), if `nsp` recovers.
    fn offset_here(&mut self, nsp: &str) -> Option<Offset> {
        (!self.sequenced && self.recovery.covers(nsp)).then(|| self.recovery.next_offset())
    }

    /// Publishes here and hands the publish to the other nodes. `from_client`:
    /// see [`Publish`] (rooms only) and [`BackendPublish`] (ids too).
    fn publish(&mut self, msg: Publish, from_client: bool, ctx: &mut Context<Self>) -> Routed {
        if from_client && msg.rooms.iter().any(|r| looks_like_socket_id(r)) {
            // Never reached through the protocol (check_room refused it):
            // forwarded, the other nodes would take the name for a socket.
            return 0.into();
        }
        let ids_as_rooms = !from_client;
        let at = std::time::Instant::now();
        if let Some(cluster) = &self.cluster {
            let strings = |v: &[Arc<str>]| v.iter().map(|s| s.to_string()).collect();
            let (args, attachments) = msg.args;
            let (stored, routed) = match self.sequenced {
                true => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    (Some(tx), Some(rx))
                }
                false => (None, None),
            };
            let outbound = Outbound {
                nsp: msg.nsp.to_string(),
                args,
                attachments,
                rooms: strings(&msg.rooms),
                except: strings(&msg.except),
                stored,
            };
            // The adapter's mailbox is its queue: full means lost, counted there.
            let handed = cluster.try_send(outbound).is_ok();
            if !handed {
                tracing::warn!("cluster adapter mailbox full: a cross-node broadcast was lost");
            }
            if handed && self.sequenced {
                // Delivered here when the stream hands it back, in the
                // cluster's order; the answer counts who it will reach now.
                return Routed {
                    recipients: self.count_targets(&msg.nsp, &msg.rooms, &msg.except, ids_as_rooms),
                    stored: routed,
                };
            }
            if self.sequenced {
                // Delivered here without a place in the stream.
                self.recovery.mark_gap(&msg.nsp);
            }
        }
        let mut frames = msg.frames;
        if let Some(offset) = self.offset_here(&msg.nsp) {
            frames = recovery::tag(&frames, offset);
            let target = Target {
                rooms: msg.rooms.clone(),
                except: msg.except.clone(),
                ids_as_rooms,
            };
            self.note_reach(&msg.nsp, &target, offset);
            self.recovery.log(&msg.nsp, offset, target, frames.clone());
        }
        // The answer (the publisher's ack) goes before the fan-out: it
        // counts the members the publish is routed to now, and the
        // fan-out follows in this same step of the broker (`wait`: no
        // other message is handled in between), once the answer is sent.
        // So the publisher's ack is on its way to its worker before the
        // thousand writes of a large room are.
        let Publish { nsp, rooms, except, .. } = msg;
        let recipients = match self.single_room(&nsp, &rooms, &except, ids_as_rooms) {
            Some(Some(_)) => {
                let count = self.count_targets(&nsp, &rooms, &except, ids_as_rooms);
                ctx.wait(
                    actix::fut::wrap_future::<_, Self>(std::future::ready(())).map(move |(), act, _| {
                        if let Some(Some(room)) = act.single_room(&nsp, &rooms, &except, ids_as_rooms) {
                            act.deliver_all(Targets::Room(room, &except), frames, at);
                        }
                    }),
                );
                count
            }
            Some(None) => 0,
            None => {
                let targets = self.targets(&nsp, &rooms, &except, ids_as_rooms);
                let count = targets.len();
                ctx.wait(
                    actix::fut::wrap_future::<_, Self>(std::future::ready(())).map(move |(), act, _| {
                        act.deliver_all(Targets::Ids(&targets), frames, at);
                    }),
                );
                count
            }
        };
        Routed {
            recipients,
            // Streams mode, but the adapter could not take it.
            stored: self.sequenced.then(|| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(false);
                rx
            }),
        }
    }
}

impl Broker {
    /// How many local members a broadcast would reach now.
    fn count_targets(&self, nsp: &Arc<str>, rooms: &[Arc<str>], except: &[Arc<str>], ids_as_rooms: bool) -> usize {
        match self.single_room(nsp, rooms, except, ids_as_rooms) {
            Some(None) => 0,
            Some(Some(room)) => room.order.len() - except.iter().filter(|e| room.seq.contains_key(*e)).count(),
            None => self.targets(nsp, rooms, except, ids_as_rooms).len(),
        }
    }

    /// Delivers a broadcast of another node, an emitter, or (sequenced)
    /// this one, whose names shaped like socket ids are those sockets;
    /// in a recovering namespace with `offset` as its last argument, and
    /// logged. `deliver: false`: logged only (a stream's backfill).
    fn deliver_remote(&mut self, b: &crate::adapter::wire::Broadcast, offset: Option<Offset>, deliver: bool) -> usize {
        let strings = |v: &[String]| -> Vec<Arc<str>> { v.iter().map(|s| s.as_str().into()).collect() };
        let nsp: Arc<str> = b.nsp.as_str().into();
        let (rooms, except) = (strings(&b.rooms), strings(&b.except));
        let at = std::time::Instant::now();
        let offset = offset.filter(|_| self.recovery.covers(&nsp));
        // Tagged (and then logged) frames are made whoever they reach here;
        // untagged ones only if someone here gets them.
        let tagged = offset.map(|o| encode_args(&nsp, &recovery::tag_args(&b.args, o), &b.attachments));
        let frames = || {
            tagged
                .clone()
                .unwrap_or_else(|| encode_args(&nsp, &b.args, &b.attachments))
        };
        let room = if deliver {
            self.single_room(&nsp, &rooms, &except, true)
        } else {
            // A backfill reaches nobody: as a room with no members here.
            Some(None)
        };
        let recipients = match room {
            Some(None) => 0,
            Some(Some(room)) => self.deliver_all(Targets::Room(room, &except), frames(), at),
            None => {
                let targets = self.targets(&nsp, &rooms, &except, true);
                match targets.is_empty() {
                    true => 0,
                    false => self.deliver_all(Targets::Ids(&targets), frames(), at),
                }
            }
        };
        if let (Some(offset), Some(frames)) = (offset, tagged) {
            // Logged whoever it reached here: a socket recovering later may
            // have been in its rooms on another node.
            let target = Target {
                rooms,
                except,
                ids_as_rooms: true,
            };
            self.note_reach(&nsp, &target, offset);
            self.recovery.log(&nsp, offset, target, frames);
        }
        recipients
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connections `send` joins and publishes and wait when it is full.
        ctx.set_mailbox_capacity(65_536);
        if !self.recovery.config.namespaces.is_empty() {
            // Often enough that a room joined is in the cluster's store
            // within a second (or half the refresh period, if shorter),
            // and that a quiet socket's start is never more than 3/8 of
            // the window old (`ratchet`).
            let every = (self.recovery.config.refresh / 2)
                .min(self.ratchet_every() / 2)
                .clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(1));
            ctx.run_interval(every, |act, _| act.tick());
        }
    }
}

impl Handler<Register> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        self.register(msg);
    }
}

/// Registrations a worker gathered in one turn of its event loop, in the
/// order its connections made them (see `Cluster::register`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterBatch(pub Vec<Register>);

impl Handler<RegisterBatch> for Broker {
    type Result = ();

    fn handle(&mut self, msg: RegisterBatch, _: &mut Self::Context) {
        for register in msg.0 {
            self.register(register);
        }
    }
}

impl Handler<Unregister> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        // A socket recovered on another connection is no longer this
        // connection's to remove.
        if self.members.get(&msg.socket_id).is_some_and(|m| m.owner == msg.owner) {
            self.unregister(&msg.socket_id, msg.keep);
        }
    }
}

impl Handler<Resume> for Broker {
    type Result = ResponseFuture<Result<Resumed, Refused>>;

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) -> Self::Result {
        // A refusal is counted (and audited) by the connection, which sees
        // the ones decided before the broker too.
        if !self.recovery.waiting_for_stream {
            let result = self.resume(msg);
            return Box::pin(async move { result });
        }
        // A node that just started has not read the stream yet (clients of
        // a node that went away come back to it first): the resume waits
        // for it, in order, rather than being refused.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.parked.push((msg, tx));
        Box::pin(async move {
            match tokio::time::timeout(PARKED_FOR, rx).await {
                Ok(Ok(result)) => result,
                _ => Err(Refused::Unavailable),
            }
        })
    }
}

impl Handler<StreamRead> for Broker {
    type Result = ();

    fn handle(&mut self, msg: StreamRead, _: &mut Self::Context) {
        self.recovery.stream_from(msg.floor);
        for (resume, answer) in std::mem::take(&mut self.parked) {
            // Its connection gave up waiting: the session is not restored
            // (its client got a fresh socket).
            if !answer.is_closed() {
                let _ = answer.send(self.resume(resume));
            }
        }
    }
}

impl Handler<Join> for Broker {
    type Result = Result<(), JoinError>;

    fn handle(&mut self, msg: Join, _: &mut Self::Context) -> Self::Result {
        self.join(&msg.socket_id, &msg.room, false)
    }
}

impl Handler<Subscribe> for Broker {
    type Result = Result<(), JoinError>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.join(&msg.socket_id, &msg.room, true)
    }
}

impl Handler<Leave> for Broker {
    type Result = bool;

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) -> bool {
        self.leave(&msg.socket_id, &msg.room)
    }
}

impl Handler<Publish> for Broker {
    type Result = Routed;

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) -> Routed {
        self.publish(msg, true, ctx)
    }
}

impl Handler<BackendPublish> for Broker {
    type Result = Routed;

    fn handle(&mut self, BackendPublish(msg): BackendPublish, ctx: &mut Self::Context) -> Routed {
        self.publish(msg, false, ctx)
    }
}

impl Handler<Inbound> for Broker {
    type Result = usize;

    fn handle(&mut self, Inbound(b): Inbound, _: &mut Self::Context) -> usize {
        // Not streams mode (or a broadcast with ack, which has no place in
        // the stream): an offset of this node's.
        let offset = self.offset_here(&b.nsp);
        self.deliver_remote(&b, offset, true)
    }
}

impl Handler<Sequenced> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Sequenced, _: &mut Self::Context) {
        if msg.offset.is_none() {
            self.recovery.mark_gap(&msg.broadcast.nsp);
        }
        self.deliver_remote(&msg.broadcast, msg.offset, !msg.backfill);
    }
}

impl Handler<LocalSockets> for Broker {
    type Result = MessageResult<LocalSockets>;

    fn handle(&mut self, msg: LocalSockets, _: &mut Self::Context) -> Self::Result {
        let targets = self.targets(&msg.nsp, &msg.rooms, &msg.except, true);
        let infos = targets
            .iter()
            .filter_map(|id| {
                let m = self.members.get(id)?;
                Some(SocketInfo {
                    id: id.to_string(),
                    rooms: m.rooms.iter().map(|r| r.to_string()).collect(),
                    user: m.user.as_deref().map(str::to_owned),
                })
            })
            .collect();
        MessageResult(infos)
    }
}

impl Handler<LocalRooms> for Broker {
    type Result = MessageResult<LocalRooms>;

    fn handle(&mut self, msg: LocalRooms, _: &mut Self::Context) -> Self::Result {
        let mut names: Vec<String> = self
            .rooms
            .get(&msg.nsp)
            .map(|r| r.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        names.extend(
            self.members
                .iter()
                .filter(|(_, m)| m.nsp == msg.nsp)
                .map(|(id, _)| id.to_string()),
        );
        MessageResult(names)
    }
}

impl Handler<RemoteOperation> for Broker {
    type Result = ();

    fn handle(&mut self, msg: RemoteOperation, _: &mut Self::Context) {
        let targets = self.targets(&msg.nsp, &msg.rooms, &msg.except, true);
        for id in targets {
            match &msg.op {
                RemoteOp::Join(rooms) => {
                    for room in rooms {
                        // Server-side: no permission check, caps still apply.
                        let _ = self.join(&id, room, false);
                    }
                }
                RemoteOp::Leave(rooms) => {
                    for room in rooms {
                        self.leave(&id, room);
                    }
                }
                RemoteOp::Disconnect { close } => {
                    if let Some(m) = self.members.get(&id) {
                        m.evict.do_send(Evict {
                            detail: "disconnected by another node of the cluster".into(),
                            namespace: (!close).then(|| m.nsp.clone()),
                        });
                    }
                }
            }
        }
    }
}

/// From now on, `0` is told of every membership change.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchMemberships(pub Arc<dyn MembershipWatch>);

impl Handler<WatchMemberships> for Broker {
    type Result = ();

    fn handle(&mut self, msg: WatchMemberships, _: &mut Self::Context) {
        self.watch = Some(msg.0);
    }
}

/// From now on the broker keeps a list of the sockets of namespace `0`,
/// so that a broadcast to the whole of it walks them rather than every
/// socket of the node: for a namespace of few sockets that gets frequent
/// broadcasts (the Admin UI's, a broadcast per update from every node).
#[derive(Message)]
#[rtype(result = "()")]
pub struct IndexNamespace(pub Arc<str>);

impl Handler<IndexNamespace> for Broker {
    type Result = ();

    fn handle(&mut self, IndexNamespace(nsp): IndexNamespace, _: &mut Self::Context) {
        self.index_namespace(nsp);
    }
}

impl Handler<AttachCluster> for Broker {
    type Result = ();

    fn handle(&mut self, msg: AttachCluster, _: &mut Self::Context) {
        self.cluster = Some(msg.adapter);
        self.room_watch = msg.rooms;
        self.sequenced = msg.sequenced;
        self.store = msg.store;
        // Streams mode: no recovery is complete before the stream is read.
        self.recovery.waiting_for_stream = self.sequenced;
        if let Some(watch) = &self.room_watch {
            for (nsp, rooms) in &self.rooms {
                for room in rooms.keys() {
                    watch.set(nsp, room, true);
                }
            }
        }
    }
}

impl Handler<Members> for Broker {
    type Result = MessageResult<Members>;

    fn handle(&mut self, msg: Members, _: &mut Self::Context) -> Self::Result {
        let Some(room) = self.rooms.get(&msg.nsp).and_then(|r| r.get(&msg.room)) else {
            return MessageResult(RoomMembers::default());
        };
        let members = room
            .ids()
            .take(msg.limit)
            .map(|id| (id.clone(), self.members.get(id).and_then(|m| m.user.clone())))
            .collect();
        MessageResult(RoomMembers {
            count: room.order.len(),
            members,
        })
    }
}

impl Handler<ListRooms> for Broker {
    type Result = MessageResult<ListRooms>;

    fn handle(&mut self, msg: ListRooms, _: &mut Self::Context) -> Self::Result {
        let mut rooms: Vec<(Arc<str>, usize)> = self
            .rooms
            .get(&msg.nsp)
            .map(|r| r.iter().map(|(name, room)| (name.clone(), room.order.len())).collect())
            .unwrap_or_default();
        rooms.sort();
        MessageResult(rooms)
    }
}

impl Handler<Kick> for Broker {
    type Result = bool;

    fn handle(&mut self, msg: Kick, _: &mut Self::Context) -> bool {
        match self.members.get(&msg.socket_id) {
            Some(m) => {
                m.evict.do_send(Evict {
                    detail: msg.detail,
                    namespace: None,
                });
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A room member counting what reaches it. `hold` blocks its arbiter
    /// thread until the sender is dropped: a connection that cannot take
    /// anything for a while.
    struct Member {
        delivered: Arc<AtomicUsize>,
        evicted: Arc<AtomicUsize>,
        capacity: usize,
    }

    impl Actor for Member {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(self.capacity);
        }
    }

    impl Handler<Deliver> for Member {
        type Result = ();

        fn handle(&mut self, _: Deliver, _: &mut Self::Context) {
            self.delivered.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Handler<Evict> for Member {
        type Result = ();

        fn handle(&mut self, _: Evict, _: &mut Self::Context) {
            self.evicted.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Blocks the member's thread: says so, then waits for the release.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Hold(tokio::sync::oneshot::Sender<()>, std::sync::mpsc::Receiver<()>);

    impl Handler<Hold> for Member {
        type Result = ();

        fn handle(&mut self, Hold(holding, release): Hold, _: &mut Self::Context) {
            let _ = holding.send(());
            let _ = release.recv();
        }
    }

    #[actix_web::test]
    async fn a_full_mailbox_drops_deliveries_counts_them_and_evicts_no_one() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let dropped = metrics.deliveries_dropped.clone();
        let broker = Broker::new(BrokerConfig {
            max_rooms_per_socket: 10,
            max_rooms: 10,
            notify_namespaces: vec![],
            metrics,
            recovery: RecoveryConfig::default(),
        })
        .start();
        let nsp: Arc<str> = "/".into();
        let room: Arc<str> = "r".into();
        let mut members = Vec::new();
        for (id, capacity) in [("fast", 1000), ("stuck", 1)] {
            let (delivered, evicted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (d, e) = (delivered.clone(), evicted.clone());
            let arbiter = actix::Arbiter::new();
            let addr = Member::start_in_arbiter(&arbiter.handle(), move |_| Member {
                delivered: d,
                evicted: e,
                capacity,
            });
            broker
                .send(Register {
                    socket_id: id.into(),
                    nsp: nsp.clone(),
                    user: None,
                    deliver: addr.clone().recipient(),
                    evict: addr.clone().recipient(),
                    direct: None,
                    address: None,
                    recovery: None,
                    owner: "c".into(),
                })
                .await
                .unwrap();
            broker
                .send(Join {
                    socket_id: id.into(),
                    room: room.clone(),
                })
                .await
                .unwrap()
                .unwrap();
            members.push((addr, delivered, evicted, arbiter));
        }
        // Block the stuck member's thread; its one-message mailbox fills.
        let (release, held) = std::sync::mpsc::channel();
        let (holding, held_now) = tokio::sync::oneshot::channel();
        members[1].0.do_send(Hold(holding, held));
        held_now.await.unwrap();
        let frames: Arc<[Frame]> = Arc::new([Frame::Text("42[\"m\"]".into())]);
        let publishes = 50;
        let mut reached = 0;
        for _ in 0..publishes {
            reached += broker
                .send(Publish {
                    nsp: nsp.clone(),
                    rooms: vec![room.clone()],
                    except: vec![],
                    frames: frames.clone(),
                    args: (ByteString::from_static(r#"["m"]"#), vec![]),
                })
                .await
                .unwrap()
                .recipients;
        }
        drop(release);
        // Everything queued reaches its member (a publish after the others,
        // answered, means the fast member's mailbox is drained as well).
        let (fast, stuck) = (&members[0], &members[1]);
        for (addr, delivered, ..) in [fast, stuck] {
            addr.send(Deliver {
                frames: frames.clone(),
                at: std::time::Instant::now(),
            })
            .await
            .unwrap();
            delivered.fetch_sub(1, Ordering::SeqCst);
        }
        assert_eq!(
            fast.1.load(Ordering::SeqCst),
            publishes,
            "the fast member got every publish"
        );
        let stuck_got = stuck.1.load(Ordering::SeqCst);
        assert!(stuck_got < 5, "the stuck member's mailbox held only a few: {stuck_got}");
        assert_eq!(
            reached,
            2 * publishes,
            "each publish reports the members it was routed to (what a full mailbox dropped is counted apart)"
        );
        assert_eq!(dropped.get() as usize, publishes - stuck_got, "every miss is counted");
        assert_eq!(
            fast.2.load(Ordering::SeqCst) + stuck.2.load(Ordering::SeqCst),
            0,
            "no one is evicted"
        );
        for (_, _, _, arbiter) in members {
            arbiter.stop();
        }
    }

    // ------------------------------------------------ socket ids and rooms

    /// A member that counts deliveries, on the test's own thread.
    fn counting_member() -> (Addr<Member>, Arc<AtomicUsize>) {
        let delivered = Arc::new(AtomicUsize::new(0));
        let d = delivered.clone();
        let addr = Member::create(move |_| Member {
            delivered: d,
            evicted: Arc::new(AtomicUsize::new(0)),
            capacity: 1000,
        });
        (addr, delivered)
    }

    fn registration(id: &Arc<str>, addr: &Addr<Member>, ip: Option<&str>, user: Option<&str>) -> Register {
        Register {
            socket_id: id.clone(),
            nsp: "/".into(),
            user: user.map(Into::into),
            deliver: addr.clone().recipient(),
            evict: addr.clone().recipient(),
            direct: None,
            address: ip.map(|ip| ip.parse().unwrap()),
            recovery: None,
            owner: "c".into(),
        }
    }

    fn config() -> BrokerConfig {
        BrokerConfig {
            max_rooms_per_socket: 100,
            max_rooms: 1000,
            notify_namespaces: vec![],
            metrics: Arc::new(crate::metrics::Metrics::new()),
            recovery: RecoveryConfig::default(),
        }
    }

    fn frames() -> Arc<[Frame]> {
        Arc::new([Frame::Text("42[\"m\"]".into())])
    }

    fn publish_to(room: &Arc<str>) -> Publish {
        Publish {
            nsp: "/".into(),
            rooms: vec![room.clone()],
            except: vec![],
            frames: frames(),
            args: (ByteString::from_static(r#"["m"]"#), vec![]),
        }
    }

    /// Counts what the broker hands to the other nodes.
    struct Cluster(Arc<AtomicUsize>);

    impl Actor for Cluster {
        type Context = Context<Self>;
    }

    impl Handler<Outbound> for Cluster {
        type Result = ();

        fn handle(&mut self, _: Outbound, _: &mut Self::Context) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn socket_ids_have_socket_io_form_and_no_room_can_look_like_one() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_socket_id();
            assert_eq!(id.len(), 20, "{id}");
            assert!(looks_like_socket_id(&id), "{id}");
            assert_eq!(check_room(&id, 128), Err(RoomError::SocketId), "{id}");
            assert!(seen.insert(id));
        }
        // A Node.js socket.io 4.8 id (base64id), and names that are rooms.
        assert!(looks_like_socket_id("x8WIv7-mJelg7on_ALbx"));
        for room in [
            "chat:lobby",
            "aaaaaaaaaaaaaaaaaaa",   // 19
            "aaaaaaaaaaaaaaaaaaaaa", // 21
            "aaaaaaaaa.aaaaaaaaaa",  // 20, with a character no id has
            "user:ann-0123456789a",
        ] {
            assert!(!looks_like_socket_id(room), "{room}");
            assert_eq!(check_room(room, 128), Ok(()), "{room}");
        }
        assert_eq!(check_room("", 128), Err(RoomError::Invalid { max: 128 }));
        assert_eq!(check_room("a b", 128), Err(RoomError::Invalid { max: 128 }));
    }

    #[actix_web::test]
    async fn no_socket_joins_a_room_named_like_a_socket_id() {
        let mut broker = Broker::new(config());
        let (addr, _) = counting_member();
        let (a, b) = (new_socket_id(), new_socket_id());
        broker.register(registration(&a, &addr, None, None));
        broker.register(registration(&b, &addr, None, None));
        assert_eq!(broker.join(&a, &b, true), Err(JoinError::SocketIdRoom));
        assert_eq!(
            broker.join(&a, &b, false),
            Err(JoinError::SocketIdRoom),
            "not for a backend either"
        );
        assert_eq!(broker.join(&a, &a, false), Err(JoinError::SocketIdRoom));
        assert!(broker.rooms.is_empty());
    }

    #[actix_web::test]
    async fn a_client_publish_never_reaches_a_socket_by_its_id_a_backend_publish_does() {
        let forwarded = Arc::new(AtomicUsize::new(0));
        let cluster = Cluster(forwarded.clone()).start();
        let broker = Broker::new(config()).start();
        broker
            .send(AttachCluster {
                adapter: cluster.clone().recipient(),
                rooms: None,
                sequenced: false,
                store: None,
            })
            .await
            .unwrap();
        let (addr, delivered) = counting_member();
        let target = new_socket_id();
        broker.send(registration(&target, &addr, None, None)).await.unwrap();

        // A client's publish naming the socket's id: nobody, here or elsewhere.
        assert_eq!(broker.send(publish_to(&target)).await.unwrap().recipients, 0);
        let mut two = publish_to(&"lobby".into());
        two.rooms.push(target.clone());
        assert_eq!(broker.send(two).await.unwrap().recipients, 0, "not even next to a room");
        // A backend's publish to it: that socket, and the other nodes.
        assert_eq!(
            broker
                .send(BackendPublish(publish_to(&target)))
                .await
                .unwrap()
                .recipients,
            1
        );
        // A broadcast from another node or an emitter to it: that socket.
        let inbound = remote_to(&target);
        assert_eq!(broker.send(Inbound(inbound.clone())).await.unwrap(), 1);
        // An id that is not shaped like one is no socket (it could be a room).
        let odd: Arc<str> = "not-an-id".into();
        broker.send(registration(&odd, &addr, None, None)).await.unwrap();
        assert_eq!(
            broker.send(BackendPublish(publish_to(&odd))).await.unwrap().recipients,
            0
        );

        // Settle: a message to each actor after the others.
        let settle = Outbound {
            nsp: inbound.nsp,
            args: inbound.args,
            attachments: vec![],
            rooms: inbound.rooms,
            except: vec![],
            stored: None,
        };
        cluster.send(settle).await.unwrap();
        addr.send(Deliver {
            frames: frames(),
            at: std::time::Instant::now(),
        })
        .await
        .unwrap();
        assert_eq!(
            delivered.load(Ordering::SeqCst),
            3,
            "the backend's, the other node's, the settle"
        );
        assert_eq!(
            forwarded.load(Ordering::SeqCst),
            3,
            "the backend's two publishes and the settle"
        );
    }

    /// Records every membership change it is told of.
    #[derive(Default)]
    struct Changes(std::sync::Mutex<Vec<(String, String, bool)>>);

    impl MembershipWatch for Changes {
        fn room_changed(&self, _: &str, room: &str, socket_id: &str, joined: bool) {
            self.0.lock().unwrap().push((room.into(), socket_id.into(), joined));
        }
    }

    #[actix_web::test]
    async fn an_indexed_namespace_is_broadcast_to_from_its_list_and_changes_are_watched() {
        let mut broker = Broker::new(config());
        let (addr, _) = counting_member();
        let (a, b, c) = (new_socket_id(), new_socket_id(), new_socket_id());
        let admin = |id: &Arc<str>| Register {
            nsp: "/admin".into(),
            ..registration(id, &addr, None, None)
        };
        let (ra, rc) = (admin(&a), admin(&c));
        broker.register(ra);
        broker.register(registration(&b, &addr, None, None));
        // Indexed with a socket already there, then another one joins.
        broker.index_namespace("/admin".into());
        broker.register(rc);
        let whole = |broker: &Broker| {
            let mut t = broker.targets(&"/admin".into(), &[], &[], true);
            t.sort();
            t
        };
        let mut both = vec![a.clone(), c.clone()];
        both.sort();
        assert_eq!(whole(&broker), both);
        broker.unregister(&a, false);
        assert_eq!(whole(&broker), vec![c.clone()]);
        assert_eq!(
            broker.targets(&"/".into(), &[], &[], true),
            vec![b.clone()],
            "not indexed: walked"
        );

        let changes = Arc::new(Changes::default());
        broker.watch = Some(changes.clone());
        broker.join(&b, &room("lobby"), false).unwrap();
        broker.unregister(&b, false);
        let seen = changes.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("lobby".into(), b.to_string(), true),
                ("lobby".into(), b.to_string(), false)
            ]
        );
    }

    fn quotas(per_address: usize, per_user: usize, exempt: &[&str]) -> RoomQuotas {
        RoomQuotas {
            per_address,
            per_user,
            exempt: IpRanges::parse(&exempt.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap(),
        }
    }

    fn room(name: &str) -> Arc<str> {
        name.into()
    }

    #[actix_web::test]
    async fn the_quota_per_address_counts_distinct_rooms_and_is_given_back() {
        let mut broker = Broker::new(config()).with_quotas(quotas(3, 0, &["192.0.2.0/24"]));
        let (addr, _) = counting_member();
        let [a1, a2, b, exempt, v6a, v6b] = std::array::from_fn(|_| new_socket_id());
        broker.register(registration(&a1, &addr, Some("198.51.100.7"), None));
        broker.register(registration(&a2, &addr, Some("198.51.100.7"), None));
        broker.register(registration(&b, &addr, Some("198.51.100.8"), None));
        broker.register(registration(&exempt, &addr, Some("192.0.2.1"), None));
        // One IPv6 /64 is one address.
        broker.register(registration(&v6a, &addr, Some("2001:db8::1"), None));
        broker.register(registration(&v6b, &addr, Some("2001:db8::2"), None));

        for r in ["r1", "r2", "r3"] {
            assert_eq!(broker.join(&a1, &room(r), true), Ok(()));
        }
        let over = Err(JoinError::RoomQuota(Quota::Address));
        assert_eq!(broker.join(&a1, &room("r4"), true), over, "a 4th distinct room");
        assert_eq!(
            broker.join(&a2, &room("r4"), true),
            over,
            "from another socket of the address"
        );
        assert_eq!(
            broker.join(&a2, &room("r1"), true),
            Ok(()),
            "a room the address is in already"
        );
        assert_eq!(
            broker.join(&a1, &room("r1"), true),
            Ok(()),
            "a room the socket is in already"
        );
        for r in ["r4", "r5", "r6"] {
            assert_eq!(broker.join(&b, &room(r), true), Ok(()), "another address: {r}");
        }
        for r in ["r1", "r2", "r3", "r4", "r5"] {
            assert_eq!(broker.join(&exempt, &room(r), true), Ok(()), "an exempt address: {r}");
        }
        for r in ["r1", "r2", "r3"] {
            assert_eq!(broker.join(&v6a, &room(r), true), Ok(()));
        }
        assert_eq!(broker.join(&v6b, &room("r4"), true), over, "the same /64");

        // A backend's join is not refused, and counts.
        assert_eq!(broker.join(&a2, &room("r9"), false), Ok(()));
        assert!(broker.leave(&a1, &room("r2")));
        assert_eq!(broker.join(&a1, &room("r4"), true), over, "r1, r3, r9 still");
        // Leaving gives a room back once no socket of the address is in it.
        assert!(broker.leave(&a1, &room("r1")));
        assert_eq!(broker.join(&a1, &room("r4"), true), over, "a2 is still in r1");
        assert!(broker.leave(&a2, &room("r1")));
        assert_eq!(broker.join(&a1, &room("r4"), true), Ok(()));
        // And so does unregistering.
        broker.unregister(&a1, false);
        broker.unregister(&a2, false);
        broker.unregister(&b, false);
        assert_eq!(broker.by_address.len(), 1, "only the /64's group is left");
        broker.unregister(&v6a, false);
        assert!(broker.by_address.is_empty(), "no group without members");
    }

    #[actix_web::test]
    async fn the_quota_per_user_counts_every_socket_of_the_subject() {
        let mut broker = Broker::new(config()).with_quotas(quotas(0, 2, &[]));
        let (addr, _) = counting_member();
        let [ann1, ann2, bob, anon] = std::array::from_fn(|_| new_socket_id());
        broker.register(registration(&ann1, &addr, Some("198.51.100.1"), Some("ann")));
        broker.register(registration(&ann2, &addr, Some("203.0.113.9"), Some("ann")));
        broker.register(registration(&bob, &addr, Some("198.51.100.1"), Some("bob")));
        broker.register(registration(&anon, &addr, Some("198.51.100.1"), None));
        assert_eq!(broker.join(&ann1, &room("r1"), true), Ok(()));
        assert_eq!(broker.join(&ann2, &room("r2"), true), Ok(()));
        let over = Err(JoinError::RoomQuota(Quota::User));
        assert_eq!(broker.join(&ann1, &room("r3"), true), over);
        assert_eq!(
            broker.join(&ann2, &room("r1"), true),
            Ok(()),
            "a room ann is in already"
        );
        for r in ["r2", "r3"] {
            assert_eq!(broker.join(&bob, &room(r), true), Ok(()), "another user: {r}");
        }
        for r in ["r1", "r2", "r3"] {
            assert_eq!(broker.join(&anon, &room(r), true), Ok(()), "anonymous: {r}");
        }
        assert!(broker.by_address.is_empty(), "the quota per address is off");
        broker.unregister(&ann1, false);
        assert_eq!(broker.join(&ann2, &room("r3"), true), over, "ann2 is in r1 and r2");
        assert!(broker.leave(&ann2, &room("r1")));
        assert_eq!(broker.join(&ann2, &room("r3"), true), Ok(()));
    }

    #[actix_web::test]
    async fn the_quotas_are_off_by_default_and_refuse_with_their_limit() {
        let mut broker = Broker::new(config());
        let (addr, _) = counting_member();
        let a = new_socket_id();
        broker.register(registration(&a, &addr, Some("198.51.100.7"), Some("ann")));
        for n in 0..50 {
            assert_eq!(broker.join(&a, &room(&format!("r{n}")), true), Ok(()));
        }
        assert!(
            broker.by_address.is_empty() && broker.by_user.is_empty(),
            "nothing counted"
        );
        assert_eq!(Quota::Address.limit(), Limit::RoomsPerAddress);
        assert_eq!(Quota::User.limit(), Limit::RoomsPerUser);
    }

    /// A broadcast from another node to `room` of `/`.
    fn remote_to(room: &str) -> crate::adapter::wire::Broadcast {
        crate::adapter::wire::Broadcast {
            uid: "other".into(),
            nsp: "/".into(),
            args: ByteString::from_static(r#"["m"]"#),
            attachments: vec![],
            rooms: vec![room.into()],
            except: vec![],
        }
    }

    #[actix_web::test]
    async fn a_quiet_socket_reached_as_its_connection_dies_recovers_after_a_window_of_others_traffic() {
        let window = std::time::Duration::from_secs(60);
        let mut config = config();
        config.recovery = RecoveryConfig {
            namespaces: vec!["/".into()],
            window,
            max_log_bytes: 1 << 20,
            max_sessions: 10,
            refresh: window,
        };
        let mut broker = Broker::new(config);
        let (addr, delivered) = counting_member();
        let quiet = new_socket_id();
        let mut register = registration(&quiet, &addr, None, None);
        register.recovery = Some(Recoverable {
            pid: "pid-quiet".into(),
            data: serde_json::json!({}),
        });
        broker.register(register);
        broker.join(&quiet, &"quiet".into(), true).unwrap();
        let offset = |ms| Some(Offset { ms, seq: 0 });
        // Others' traffic, of which the log keeps nothing once a window
        // has passed...
        for ms in 1..=10 {
            broker.deliver_remote(&remote_to("busy"), offset(ms), true);
        }
        let first_part = std::time::Instant::now();
        // (the ticks of the window's first quarter)
        broker.ratchet(first_part + window / 4);
        while std::time::Instant::now() == first_part {}
        // ...then more, then the quiet socket's first event, written to a
        // connection that is already dead: its client got no offset.
        for ms in 11..=20 {
            broker.deliver_remote(&remote_to("busy"), offset(ms), true);
        }
        assert_eq!(broker.deliver_remote(&remote_to("quiet"), offset(21), true), 1);
        broker.recovery.expire(first_part + window);
        broker.unregister(&quiet, true);

        let (back, _) = counting_member();
        let mut again = registration(&"new".into(), &back, None, None);
        again.recovery = Some(Recoverable {
            pid: "pid-quiet".into(),
            data: serde_json::json!({}),
        });
        let resumed = broker
            .resume(Resume {
                register: again,
                offset: None,
                session: None,
                max_frames: 100,
            })
            .map(|r| r.replayed);
        // Without the start moving up: refused as expired (offset 0 is
        // older than what the log keeps).
        assert_eq!(resumed, Ok(1), "the one event it missed, replayed");
        assert_eq!(
            delivered.load(Ordering::SeqCst),
            0,
            "nothing reached the member actor before"
        );
    }
}
