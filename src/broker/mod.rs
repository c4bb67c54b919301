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

use std::collections::BTreeMap;

// foldhash: seeded per process, and several times faster than SipHash on
// the socket ids and room names every publish looks up.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use std::sync::Arc;

use actix::prelude::*;
use serde_json::json;

use crate::adapter::{
    wire, Inbound, LocalRooms, LocalSockets, Outbound, RemoteOp, RemoteOperation, RoomWatch, SocketInfo,
};
use crate::engineio::Frame;
use crate::socketio::packet::{encode, PacketType};

/// Room names: 1 to `max` bytes of ASCII letters, digits and `_-.:@/#=+`.
pub fn valid_room(room: &str, max: usize) -> bool {
    !room.is_empty()
        && room.len() <= max
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/#=+".contains(&b))
}

/// Event names a client may publish: 1 to 128 bytes, not reserved.
pub fn valid_event(event: &str) -> bool {
    !event.is_empty() && event.len() <= 128 && !crate::socketio::packet::RESERVED_EVENTS.contains(&event)
}

/// Encodes an event (`args` = `[name, ...]`) once, as the frames every
/// recipient gets: the packet, then its binary attachments.
pub fn encode_event(nsp: &str, args: &serde_json::Value, attachments: &[bytes::Bytes]) -> Arc<[Frame]> {
    let kind = if attachments.is_empty() {
        PacketType::Event
    } else {
        PacketType::BinaryEvent
    };
    let text = encode(kind, nsp, None, Some(args), attachments.len());
    std::iter::once(Frame::Text(text.into()))
        .chain(attachments.iter().cloned().map(Frame::Binary))
        .collect()
}

/// The members of a room across the cluster: this node's (from the
/// broker) and the other nodes' (a REMOTE_FETCH through the adapter).
/// `None` when the broker is gone.
pub async fn room_members(
    broker: &Addr<Broker>,
    cluster: Option<&Addr<crate::adapter::redis::RedisAdapter>>,
    nsp: Arc<str>,
    room: Arc<str>,
    limit: usize,
) -> Option<ClusterMembers> {
    let local = broker
        .send(Members {
            nsp: nsp.clone(),
            room: room.clone(),
            limit,
        })
        .await
        .ok()?;
    let mut out = ClusterMembers {
        count: local.count,
        members: local
            .members
            .iter()
            .map(|(id, u)| (id.to_string(), u.as_deref().map(str::to_owned)))
            .collect(),
        partial: None,
    };
    if let Some(cluster) = cluster {
        let fetch = crate::adapter::redis::FetchSockets {
            nsp: nsp.to_string(),
            rooms: vec![room.to_string()],
        };
        let remote = cluster.send(fetch).await.unwrap_or_default();
        out.partial = Some(remote.partial);
        out.count += remote.sockets.len();
        let room_left = limit.saturating_sub(out.members.len());
        out.members
            .extend(remote.sockets.into_iter().take(room_left).map(|s| (s.id, s.user)));
    }
    Some(out)
}

/// A room's members across the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterMembers {
    /// Members on every node that answered.
    pub count: usize,
    /// `(socket id, user)`, up to the limit: this node's first.
    pub members: Vec<(String, Option<String>)>,
    /// A node did not answer in time (`None` on a single node).
    pub partial: Option<bool>,
}

impl ClusterMembers {
    /// `{count, members:[{id, user}]}`, and `partial` in a cluster.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let members: Vec<_> = self
            .members
            .iter()
            .map(|(id, user)| json!({"id": id, "user": user}))
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("count".into(), json!(self.count));
        out.insert("members".into(), json!(members));
        if let Some(partial) = self.partial {
            out.insert("partial".into(), json!(partial));
        }
        out
    }
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
pub struct Broadcast {
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
    fn push_broadcast(&self, broadcast: &Broadcast) -> Pushed;
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
}

/// The namespace socket is gone: it leaves every room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
}

/// Join a room.
#[derive(Message)]
#[rtype(result = "Result<(), JoinError>")]
pub struct Join {
    /// The namespace socket id.
    pub socket_id: Arc<str>,
    /// The room.
    pub room: Arc<str>,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The socket is in `max_rooms_per_socket` rooms already.
    TooManyRooms,
    /// The namespace has `max_rooms` rooms already.
    TooManyRoomsInTotal,
    /// The socket is not registered (it left meanwhile).
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

/// Publish to the members of some rooms (each member once), here and, with
/// a cluster, on the other nodes.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Publish {
    /// Namespace.
    pub nsp: Arc<str>,
    /// Rooms; a socket id is also the name of that socket's own room.
    pub rooms: Vec<Arc<str>>,
    /// Sockets (or rooms) that do not receive it (the publisher, `except`).
    pub except: Vec<Arc<str>>,
    /// The encoded packet.
    pub frames: Arc<[Frame]>,
    /// `[event, args...]` (with placeholders) and the attachments, for the
    /// other nodes.
    pub args: (serde_json::Value, Vec<bytes::Bytes>),
}

/// Connects the broker to the cluster adapter.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachCluster {
    /// Where this node's broadcasts go.
    pub adapter: Recipient<Outbound>,
    /// The room set to keep up to date, when the adapter subscribes per room.
    pub rooms: Option<Arc<RoomWatch>>,
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
}

/// Members of a room in join order (for presence lists).
#[derive(Default)]
struct Room {
    order: BTreeMap<u64, Slot>,
    seq: HashMap<Arc<str>, u64>,
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

/// The broker actor.
pub struct Broker {
    config: BrokerConfig,
    /// The other nodes (a Redis adapter), if any.
    cluster: Option<Recipient<Outbound>>,
    /// The adapter's view of which rooms exist here (sharded, dynamic).
    room_watch: Option<Arc<RoomWatch>>,
    members: HashMap<Arc<str>, Member>,
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, Room>>,
    next_seq: u64,
}

impl Broker {
    /// A broker with no rooms.
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            cluster: None,
            room_watch: None,
            members: HashMap::new(),
            rooms: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Hands `broadcast` to one member, through its connection (a member
    /// the broker writes to directly is handed it by [`Self::deliver_all`]).
    fn deliver(&self, socket_id: &Arc<str>, broadcast: &Broadcast, tally: &mut Tally) {
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
        let broadcast = Broadcast {
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
    /// (broadcasts from Socket.IO servers and emitters, where every socket is
    /// in a room named by its id) a room named by a socket id is that socket;
    /// clients publishing through the protocol reach rooms only.
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
            self.members.keys().filter(|id| in_nsp(id)).for_each(&mut add);
        }
        for name in rooms {
            if let Some(room) = ns_rooms.and_then(|r| r.get(name)) {
                room.ids().for_each(&mut add);
            }
            if let Some((id, _)) = self
                .members
                .get_key_value(name)
                .filter(|(id, _)| ids_as_rooms && in_nsp(id))
            {
                add(id);
            }
        }
        targets
    }

    /// A broadcast to one room with only sockets excepted (the usual
    /// publish), whose members then need no list: `Some(the room, if it
    /// exists)`. `None`: use [`Self::targets`] (several rooms, a room
    /// excepted, or, with `ids_as_rooms`, a room named by a socket id).
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
        if ids_as_rooms && self.members.get(room).is_some_and(|m| m.nsp == *nsp) {
            return None;
        }
        Some(ns_rooms.and_then(|r| r.get(room)))
    }

    fn join(&mut self, socket_id: &Arc<str>, room: &Arc<str>) -> Result<(), JoinError> {
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
        let rooms = self.rooms.entry(nsp.clone()).or_default();
        if !rooms.contains_key(room) && rooms.len() >= max_rooms {
            return Err(JoinError::TooManyRoomsInTotal);
        }
        member.rooms.insert(room.clone());
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
        Ok(())
    }

    fn leave(&mut self, socket_id: &Arc<str>, room: &Arc<str>) -> bool {
        let Some(member) = self.members.get_mut(socket_id) else {
            return false;
        };
        if !member.rooms.remove(room) {
            return false;
        }
        let nsp = member.nsp.clone();
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
        true
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connections `send` joins and publishes and wait when it is full.
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Register> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        self.members.insert(
            msg.socket_id,
            Member {
                nsp: msg.nsp,
                user: msg.user,
                deliver: msg.deliver,
                evict: msg.evict,
                direct: msg.direct,
                rooms: HashSet::new(),
            },
        );
    }
}

impl Handler<Unregister> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        let rooms: Vec<Arc<str>> = match self.members.get(&msg.socket_id) {
            Some(m) => m.rooms.iter().cloned().collect(),
            None => return,
        };
        for room in rooms {
            self.leave(&msg.socket_id, &room);
        }
        self.members.remove(&msg.socket_id);
    }
}

impl Handler<Join> for Broker {
    type Result = Result<(), JoinError>;

    fn handle(&mut self, msg: Join, _: &mut Self::Context) -> Self::Result {
        self.join(&msg.socket_id, &msg.room)
    }
}

impl Handler<Leave> for Broker {
    type Result = bool;

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) -> bool {
        self.leave(&msg.socket_id, &msg.room)
    }
}

impl Handler<Publish> for Broker {
    type Result = usize;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> usize {
        let at = std::time::Instant::now();
        if let Some(cluster) = &self.cluster {
            let strings = |v: &[Arc<str>]| v.iter().map(|s| s.to_string()).collect();
            let (args, attachments) = msg.args;
            let outbound = Outbound(wire::Broadcast {
                uid: String::new(),
                nsp: msg.nsp.to_string(),
                args,
                attachments,
                rooms: strings(&msg.rooms),
                except: strings(&msg.except),
            });
            // The adapter's mailbox is its queue: full means lost, counted there.
            if cluster.try_send(outbound).is_err() {
                tracing::warn!("cluster adapter mailbox full: a cross-node broadcast was lost");
            }
        }
        if let Some(room) = self.single_room(&msg.nsp, &msg.rooms, &msg.except, false) {
            return match room {
                Some(r) => self.deliver_all(Targets::Room(r, &msg.except), msg.frames, at),
                None => 0,
            };
        }
        let targets = self.targets(&msg.nsp, &msg.rooms, &msg.except, false);
        self.deliver_all(Targets::Ids(&targets), msg.frames, at)
    }
}

impl Handler<Inbound> for Broker {
    type Result = usize;

    fn handle(&mut self, Inbound(b): Inbound, _: &mut Self::Context) -> usize {
        let strings = |v: &[String]| -> Vec<Arc<str>> { v.iter().map(|s| s.as_str().into()).collect() };
        let nsp: Arc<str> = b.nsp.as_str().into();
        let (rooms, except) = (strings(&b.rooms), strings(&b.except));
        let at = std::time::Instant::now();
        match self.single_room(&nsp, &rooms, &except, true) {
            Some(None) => 0,
            Some(Some(room)) => {
                let frames = encode_event(&nsp, &b.args, &b.attachments);
                self.deliver_all(Targets::Room(room, &except), frames, at)
            }
            None => {
                let targets = self.targets(&nsp, &rooms, &except, true);
                if targets.is_empty() {
                    return 0;
                }
                let frames = encode_event(&nsp, &b.args, &b.attachments);
                self.deliver_all(Targets::Ids(&targets), frames, at)
            }
        }
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
                        let _ = self.join(&id, room);
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

impl Handler<AttachCluster> for Broker {
    type Result = ();

    fn handle(&mut self, msg: AttachCluster, _: &mut Self::Context) {
        self.cluster = Some(msg.adapter);
        self.room_watch = msg.rooms;
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
                    args: (serde_json::json!(["m"]), vec![]),
                })
                .await
                .unwrap();
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
            publishes + stuck_got,
            "each publish reports the members it reached"
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
}
