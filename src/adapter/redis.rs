//! The Redis adapter actor: publishes this node's broadcasts and hands the
//! other nodes' broadcasts to the local broker.
//!
//! Two tasks do the I/O, so neither a connection nor the broker ever waits
//! on Redis:
//! - the publisher drains a bounded queue, pipelining what is waiting into
//!   one round trip with a timeout; while Redis is away it retries with
//!   capped backoff, holding new broadcasts in the queue between attempts
//!   and dropping (and counting) those of a failed attempt;
//! - the subscriber holds one subscription connection per node (classic:
//!   `PSUBSCRIBE {key}#{nsp}#*` plus the request and response channels;
//!   sharded: `SSUBSCRIBE` on the namespace's channel, this node's answer
//!   channel and, in dynamic mode, one channel per local public room),
//!   pings it on an interval (a hung Redis looks like a dead one), and on
//!   loss reconnects with capped backoff and subscribes again.
//!
//! A node drops its own messages (same uid); the broker delivers each
//! message to each local member once.
//!
//! `streams` mode (`@socket.io/redis-streams-adapter`) puts broadcasts,
//! joins, leaves and disconnects in Redis streams instead, appended by one
//! task and read by one task per stream, every node's broadcasts this
//! node's included, and keeps recovery sessions in keys: see `streams_io`
//! and the wire format in [`super::streams`].

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::json;
use tokio::sync::oneshot;

pub use super::link::SetupError;
use super::link::{self, Conn, Connector};
use super::requests::{self, kind, Request};
use super::sharded::{self, Message as ShardMessage};
use super::streams;
use super::wire::{self, Broadcast};
use super::{
    AdapterStatus, DropSession, Inbound, KeepSession, LocalRooms, LocalSockets, Outbound, RemoteOp, RemoteOperation,
    RoomWatch, Sequenced, Session, SessionStoreDown, SocketInfo, StreamRead, TakeSession,
};

pub mod directory;
mod streams_io;

/// Which of the official adapters' protocols the cluster speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `createAdapter`: PUBLISH / PSUBSCRIBE, shared with the emitter.
    Classic,
    /// `createShardedAdapter`: Redis 7 SPUBLISH / SSUBSCRIBE.
    Sharded {
        /// A channel per public room (the adapter's `subscriptionMode:
        /// "dynamic"`, its default) rather than one per namespace ("static").
        dynamic: bool,
        /// `url` is a seed node of a Redis Cluster.
        cluster: bool,
    },
    /// `@socket.io/redis-streams-adapter` 0.3: broadcasts, joins, leaves
    /// and disconnects in Redis streams, requests over PUBLISH / SUBSCRIBE,
    /// recovery sessions in keys.
    Streams(StreamsConfig),
}

/// The settings of `streams` mode (the streams adapter's options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsConfig {
    /// The stream's name, or the prefix of the streams (`streamName`).
    pub stream_name: String,
    /// Streams the namespaces are spread over (`streamCount`), at least 1.
    pub stream_count: usize,
    /// Entries a stream keeps, trimmed with `MAXLEN ~` (`maxLen`).
    pub max_len: usize,
    /// Entries one `XREAD` or `XRANGE` takes (`readCount`).
    pub read_count: usize,
    /// How long an `XREAD` waits for entries (`blockTimeInMs`), at least
    /// 1 ms (`BLOCK 0` would wait for ever).
    pub block: Duration,
    /// The prefix of the session keys (`sessionKeyPrefix`).
    pub session_key_prefix: String,
    /// How far back the readers start when the node starts, for the
    /// broker's recovery log ([`Sequenced::backfill`]); zero = from the
    /// entries added after the start.
    pub backfill: Duration,
}

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// This node's id: the adapter's `uid`, by which a node recognises its
    /// own messages (also the audit rows' `node`).
    pub node_id: String,
    /// `redis://…`, or `rediss://…` for TLS; an ACL user and password go
    /// in it (`rediss://user:password@host:port`).
    pub url: String,
    /// PEM file of the CA that signed the Redis servers' certificates;
    /// empty = the public web roots built in.
    pub tls_ca_file: String,
    /// Channel prefix (`socket.io` like the official adapter).
    pub key: String,
    /// Namespaces to relay.
    pub namespaces: Vec<String>,
    /// Longest a Redis command may take.
    pub command_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub reconnect_max: Duration,
    /// Broadcasts waiting to be published; beyond it they are lost.
    pub queue: usize,
    /// How long a cluster-wide request waits for the other nodes.
    pub requests_timeout: Duration,
    /// The protocol.
    pub mode: Mode,
}

/// A request of this node that needs no answer, encoded.
enum Outgoing {
    /// On a channel.
    Publish(String, Vec<u8>),
    /// In a stream (`streams` mode).
    Append(Box<streams_io::Append>),
}

/// An answer to another node's request, before it is encoded.
enum Reply {
    /// Socket ids (classic SOCKETS).
    SocketIds(Vec<serde_json::Value>),
    /// Socket entries (fetchSockets).
    Sockets(Vec<serde_json::Value>),
    /// Room names (classic ALL_ROOMS).
    Rooms(Vec<String>),
    /// A server-side emit with ack: nobody listens here.
    EmitAck,
    /// A broadcast with ack: delivered, but no acks will come.
    ClientCount,
}

impl RedisConfig {
    fn sharded(&self) -> bool {
        matches!(self.mode, Mode::Sharded { .. })
    }

    /// The channel and the bytes of a broadcast (an error: its payload
    /// cannot be written in the adapter's format, see [`wire`]).
    fn broadcast(&self, b: &Broadcast) -> Result<(String, Vec<u8>), wire::WireError> {
        Ok(match self.mode {
            Mode::Classic => (wire::channel(&self.key, &b.nsp, &b.rooms), wire::encode(b)?),
            Mode::Sharded { dynamic, .. } => (
                sharded::broadcast_channel(&self.key, b, dynamic),
                sharded::encode_broadcast(b)?,
            ),
            // Appended to a stream instead (`Handler<Outbound>`).
            Mode::Streams(_) => return Err(wire::WireError::Shape("streams mode appends broadcasts to a stream")),
        })
    }

    fn streams(&self) -> Option<&StreamsConfig> {
        match &self.mode {
            Mode::Streams(s) => Some(s),
            _ => None,
        }
    }

    /// Where requests of a namespace go (and whose subscribers are counted).
    fn request_channel(&self, nsp: &str) -> String {
        match self.mode {
            Mode::Classic => requests::request_channel(&self.key, nsp),
            Mode::Sharded { .. } => sharded::main_channel(&self.key, nsp),
            Mode::Streams(_) => streams::public_channel(&self.key, nsp),
        }
    }

    fn fetch_request(&self, uid: &str, nsp: &str, request_id: &str, rooms: &[String]) -> (String, Vec<u8>) {
        let body = match self.mode {
            Mode::Classic => requests::fetch_request(uid, request_id, rooms, &[]),
            Mode::Sharded { .. } => sharded::fetch_request(uid, nsp, request_id, rooms, &[]),
            Mode::Streams(_) => streams::fetch_request(uid, nsp, request_id, rooms, &[]),
        };
        (self.request_channel(nsp), body)
    }

    /// Published, or (streams mode, as Node.js does) appended to the
    /// namespace's stream.
    fn disconnect_request(&self, uid: &str, nsp: &str, selection: &[String], close: bool) -> Outgoing {
        let body = match &self.mode {
            Mode::Classic => requests::disconnect_request(uid, selection, close),
            Mode::Sharded { .. } => sharded::disconnect_request(uid, nsp, selection, close),
            Mode::Streams(s) => {
                let entry = streams::disconnect_entry(uid, nsp, selection, close);
                return Outgoing::Append(Box::new(streams_io::Append::new(s, entry, None)));
            }
        };
        Outgoing::Publish(self.request_channel(nsp), body)
    }

    /// As [`Self::disconnect_request`].
    fn membership_request(&self, uid: &str, nsp: &str, selection: &[String], rooms: &[String], join: bool) -> Outgoing {
        let body = match &self.mode {
            Mode::Classic => requests::membership_request(uid, selection, rooms, join),
            Mode::Sharded { .. } => sharded::membership_request(uid, nsp, selection, rooms, join),
            Mode::Streams(s) => {
                let entry = streams::membership_entry(uid, nsp, selection, rooms, join);
                return Outgoing::Append(Box::new(streams_io::Append::new(s, entry, None)));
            }
        };
        Outgoing::Publish(self.request_channel(nsp), body)
    }

    /// The channel and bytes of an answer to `requester`'s request.
    fn reply(
        &self,
        uid: &str,
        nsp: &str,
        requester: &str,
        request_id: &str,
        reply: Reply,
    ) -> Option<(String, Vec<u8>)> {
        if let Mode::Classic = self.mode {
            let body = match reply {
                Reply::SocketIds(sockets) | Reply::Sockets(sockets) => {
                    json!({"requestId": request_id, "sockets": sockets})
                }
                Reply::Rooms(rooms) => json!({"requestId": request_id, "rooms": rooms}),
                Reply::EmitAck => json!({"type": kind::SERVER_SIDE_EMIT, "requestId": request_id, "data": null}),
                Reply::ClientCount => {
                    json!({"type": kind::BROADCAST_CLIENT_COUNT, "requestId": request_id, "clientCount": 0})
                }
            };
            return Some((
                requests::response_channel(&self.key, nsp),
                body.to_string().into_bytes(),
            ));
        }
        let (t, data) = match reply {
            Reply::Sockets(sockets) => (
                sharded::kind::FETCH_SOCKETS_RESPONSE,
                json!({"requestId": request_id, "sockets": sockets}),
            ),
            Reply::EmitAck => (
                sharded::kind::SERVER_SIDE_EMIT_RESPONSE,
                json!({"requestId": request_id, "packet": null}),
            ),
            Reply::ClientCount => (
                sharded::kind::BROADCAST_CLIENT_COUNT,
                json!({"requestId": request_id, "clientCount": 0}),
            ),
            Reply::SocketIds(_) | Reply::Rooms(_) => return None,
        };
        let body = match self.mode {
            Mode::Streams(_) => streams::encode_message(t, uid, nsp, &data),
            _ => sharded::encode(t, uid, nsp, data),
        };
        Some((sharded::response_channel(&self.key, nsp, requester), body))
    }

    /// `PUBSUB NUMSUB` (classic, streams) or `SHARDNUMSUB` (sharded) of the request
    /// channel: the nodes of the cluster, this one included.
    fn count_command(&self, nsp: &str) -> (redis::Cmd, String) {
        let channel = self.request_channel(nsp);
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg(if self.sharded() { "SHARDNUMSUB" } else { "NUMSUB" })
            .arg(&channel);
        (cmd, channel)
    }
}

/// Where the adapter reaches the local broker.
#[derive(Clone)]
pub struct BrokerPorts {
    /// Broadcasts from other nodes.
    pub inbound: Recipient<Inbound>,
    /// Local sockets for other nodes' fetches.
    pub sockets: Recipient<LocalSockets>,
    /// Local rooms for other nodes' room lists.
    pub rooms: Recipient<LocalRooms>,
    /// Joins, leaves and disconnects asked by other nodes.
    pub ops: Recipient<RemoteOperation>,
    /// `streams` mode: every broadcast in the stream's order, this node's
    /// own included, and this node's own that Redis could not take.
    pub sequenced: Recipient<Sequenced>,
    /// `streams` mode: from where on the stream is read ([`StreamRead`]).
    pub stream_read: Recipient<StreamRead>,
}

/// A request of this node waiting for answers.
struct Pending {
    expected: usize,
    answers: usize,
    sockets: Vec<SocketInfo>,
    done: Option<oneshot::Sender<()>>,
}

type PendingMap = Arc<Mutex<HashMap<String, Pending>>>;

/// The sockets of a selection on the other nodes.
#[derive(Message)]
#[rtype(result = "RemoteSockets")]
pub struct FetchSockets {
    /// Namespace.
    pub nsp: String,
    /// Rooms (empty = the namespace).
    pub rooms: Vec<String>,
}

/// What the other nodes answered.
#[derive(Debug, Clone, Default)]
pub struct RemoteSockets {
    /// Their matching sockets.
    pub sockets: Vec<SocketInfo>,
    /// Some node did not answer in time (or Redis is away).
    pub partial: bool,
}

/// Asks the other nodes to disconnect a socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DisconnectRemote {
    /// Namespace.
    pub nsp: String,
    /// The socket id.
    pub socket_id: String,
}

/// First pause after a failure; doubles up to `reconnect_max`.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// How often the subscription connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Most broadcasts pipelined into one round trip.
const BATCH: usize = 256;
/// Requests of other nodes served at once (a fetch, a room list, a join, a
/// broadcast with ack…). Each one being served is a task waiting on the
/// broker and then on the publish queue; a node that floods the request
/// channel (a bug, or anyone who may publish on this Redis) would otherwise
/// make them without bound, each holding its decoded request. One is
/// served in a broker round trip (well under a millisecond unless the
/// broker is behind), so 256 at once serve tens of thousands a second;
/// past that the node is behind anyway, and a request dropped costs its
/// sender one answer, which requesters already wait for only until their
/// timeout (Node.js `requestsTimeout`; roomcast then answers `partial`).
/// Dropped requests are counted (`AdapterStatus::requests_dropped`).
const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// The adapter actor.
pub struct RedisAdapter {
    config: RedisConfig,
    uid: String,
    broker: BrokerPorts,
    status: Arc<AdapterStatus>,
    queue: Option<mpsc::Sender<(String, Vec<u8>)>>,
    connector: Connector,
    /// A command connection for the subscriber counts (and the sessions
    /// taken), made on first use.
    command: Arc<Mutex<Option<Conn>>>,
    pending: PendingMap,
    rooms: Arc<RoomWatch>,
    /// `streams` mode: what the appender adds to the streams.
    appends: Option<mpsc::Sender<streams_io::Append>>,
    /// `streams` mode: session writes, fire and forget.
    sessions: Option<mpsc::Sender<streams_io::SessionWrite>>,
}

impl RedisAdapter {
    /// An adapter for `config` that delivers to `broker`; the error (a URL
    /// or CA file that cannot make a client) names its key
    /// ([`SetupError::key`]).
    pub fn new(config: RedisConfig, broker: BrokerPorts, status: Arc<AdapterStatus>) -> Result<Self, SetupError> {
        let cluster = matches!(config.mode, Mode::Sharded { cluster: true, .. });
        let connector = Connector::open(&config.url, cluster, &config.tls_ca_file)?;
        Ok(Self {
            uid: config.node_id.clone(),
            config,
            broker,
            status,
            queue: None,
            connector,
            command: Arc::default(),
            pending: Arc::default(),
            rooms: Arc::default(),
            appends: None,
            sessions: None,
        })
    }

    /// The room set the broker must keep up to date: only the sharded
    /// protocol in dynamic mode subscribes per room.
    pub fn room_watch(&self) -> Option<Arc<RoomWatch>> {
        matches!(self.config.mode, Mode::Sharded { dynamic: true, .. }).then(|| self.rooms.clone())
    }
}

impl Actor for RedisAdapter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.queue);
        let connector = self.connector.clone();
        let (tx, rx) = mpsc::channel(self.config.queue);
        self.queue = Some(tx);
        actix_rt::spawn(publisher(
            connector.clone(),
            rx,
            self.config.clone(),
            self.status.clone(),
        ));
        let node = Node {
            uid: self.uid.clone(),
            broker: self.broker.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
            queue: tx_for(&self.queue),
            pending: self.pending.clone(),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        };
        if let Some(s) = self.config.streams() {
            let started = streams_io::start(connector, node, s.clone());
            self.appends = Some(started.appends);
            self.sessions = Some(started.sessions);
        } else if matches!(connector, Connector::Single(_)) && !self.config.sharded() {
            actix_rt::spawn(subscriber(connector, node));
        } else {
            actix_rt::spawn(shard_subscriber(connector, node, self.rooms.clone()));
        }
        tracing::info!(uid = %self.uid, url = %redact(&self.config.url), mode = ?self.config.mode, "redis adapter started");
    }
}

impl Handler<Outbound> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, out: Outbound, _: &mut Self::Context) {
        let b = Broadcast {
            uid: self.uid.clone(),
            nsp: out.nsp,
            args: out.args,
            attachments: out.attachments,
            rooms: out.rooms,
            except: out.except,
        };
        if self.config.streams().is_some() {
            self.append_broadcast(b, out.stored);
            return;
        }
        let message = match self.config.broadcast(&b) {
            Ok(message) => message,
            Err(why) => {
                // This node's members got it; the others cannot.
                AdapterStatus::add(&self.status.lost, 1);
                tracing::warn!(error = %why, "redis adapter: a broadcast the adapter's format cannot carry was not sent to the other nodes");
                return;
            }
        };
        let sent = self.queue.as_ref().is_some_and(|q| q.try_send(message).is_ok());
        if !sent {
            AdapterStatus::add(&self.status.lost, 1);
            tracing::warn!("redis adapter: publish queue full or closed, a cross-node broadcast was lost");
        }
    }
}

async fn publisher(
    connector: Connector,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    config: RedisConfig,
    status: Arc<AdapterStatus>,
) {
    let mut conn: Option<Conn> = None;
    // Why the last connection attempt failed, for the warnings of the
    // broadcasts lost meanwhile.
    let mut why = String::new();
    let mut backoff = BACKOFF_START;
    let mut retry_at = Instant::now();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        if conn.is_none() {
            // Wait out the backoff; what arrives meanwhile waits in the
            // bounded queue (overflow is counted as lost by the actor).
            tokio::time::sleep_until(retry_at).await;
            match timeout(config.command_timeout, connector.command(config.command_timeout)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    backoff = BACKOFF_START;
                }
                failed => {
                    why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!(
                            "Redis at {}: no connection within {:?}",
                            connector.addr(),
                            config.command_timeout
                        ),
                    };
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(config.reconnect_max);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            AdapterStatus::add(&status.lost, n);
            tracing::warn!(
                lost = n,
                "redis adapter: Redis unreachable ({why}), cross-node broadcasts lost"
            );
            continue;
        };
        let failed = match timeout(config.command_timeout, publish(c, &batch, config.sharded())).await {
            Ok(Ok(0)) => {
                AdapterStatus::add(&status.published, n);
                continue;
            }
            Ok(Ok(failed)) => {
                AdapterStatus::add(&status.published, n - failed);
                (failed, "some were refused".to_owned())
            }
            Ok(Err(e)) => (n, e.to_string()),
            Err(_) => (n, "timed out".to_owned()),
        };
        AdapterStatus::add(&status.lost, failed.0);
        tracing::warn!(
            lost = failed.0,
            "redis adapter: publish failed ({}), cross-node broadcasts lost",
            failed.1
        );
        conn = None;
        retry_at = Instant::now() + backoff;
        backoff = (backoff * 2).min(config.reconnect_max);
    }
}

/// Publishes a batch in one round trip; the number that failed.
///
/// Classic: one pipeline of PUBLISH. Sharded: the SPUBLISH commands are
/// sent together but each on its own, since on a Redis Cluster their
/// channels live on different shards; they leave in queue order, and each
/// shard keeps the order of its channels.
async fn publish(conn: &mut Conn, batch: &[(String, Vec<u8>)], sharded: bool) -> redis::RedisResult<u64> {
    if !sharded {
        let mut pipe = redis::pipe();
        for (channel, bytes) in batch {
            pipe.publish(channel, bytes.as_slice()).ignore();
        }
        return pipe.query_async::<()>(conn).await.map(|()| 0);
    }
    let sends = batch.iter().map(|(channel, bytes)| {
        let mut c = conn.clone();
        async move {
            redis::cmd("SPUBLISH")
                .arg(channel)
                .arg(bytes.as_slice())
                .query_async::<redis::Value>(&mut c)
                .await
        }
    });
    let results = futures_util::future::join_all(sends).await;
    Ok(results.iter().filter(|r| r.is_err()).count() as u64)
}

/// What the subscriber task needs to act as a node of the cluster.
#[derive(Clone)]
struct Node {
    uid: String,
    broker: BrokerPorts,
    config: RedisConfig,
    status: Arc<AdapterStatus>,
    queue: mpsc::Sender<(String, Vec<u8>)>,
    pending: PendingMap,
    /// Permits for the requests being served ([`MAX_REQUESTS_IN_FLIGHT`]).
    serving: Arc<tokio::sync::Semaphore>,
}

/// Serves another node's request in a task of its own, unless
/// [`MAX_REQUESTS_IN_FLIGHT`] are being served: then it is dropped, counted.
fn serve(node: &Node, nsp: String, request: Request) {
    match node.serving.clone().try_acquire_owned() {
        Ok(permit) => {
            actix_rt::spawn(answer(node.clone(), nsp, request, permit));
        }
        Err(_) => {
            AdapterStatus::add(&node.status.requests_dropped, 1);
            tracing::debug!("redis adapter: too many requests being served, one from another node dropped");
        }
    }
}

fn tx_for(queue: &Option<mpsc::Sender<(String, Vec<u8>)>>) -> mpsc::Sender<(String, Vec<u8>)> {
    // unwrap: set in `started` just before.
    queue.clone().unwrap()
}

/// A subscriber's reconnection: capped exponential backoff, and a log line
/// at the 1st, 2nd, 4th, 8th… failure in a row (every attempt while an
/// outage lasts would flood the log).
struct Reconnect {
    backoff: Duration,
    max: Duration,
    failures: u64,
}

impl Reconnect {
    fn new(max: Duration) -> Self {
        Self {
            backoff: BACKOFF_START,
            max,
            failures: 0,
        }
    }

    fn connected(&mut self) {
        self.backoff = BACKOFF_START;
        self.failures = 0;
    }

    fn failed(&mut self, why: &str) {
        self.failures += 1;
        if self.failures.is_power_of_two() {
            tracing::warn!(attempts = self.failures, "redis adapter cannot subscribe: {why}");
        }
    }

    /// The subscription was lost: the node is degraded until it is back
    /// (its owner clears `AdapterStatus::connected`).
    fn lost(&self) {
        tracing::warn!("redis adapter lost its subscription: degraded, reconnecting");
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.max);
    }
}

async fn subscriber(connector: Connector, node: Node) {
    let key = &node.config.key;
    let patterns: Vec<String> = node.config.namespaces.iter().map(|n| wire::pattern(key, n)).collect();
    let mut channels = Vec::new();
    for nsp in &node.config.namespaces {
        channels.push(requests::request_channel(key, nsp));
        channels.push(requests::response_channel(key, nsp));
    }
    let (request_prefix, response_prefix) = (format!("{key}-request#"), format!("{key}-response#"));
    let status = node.status.clone();
    let shown = patterns.clone();
    let up = move |up: bool| {
        status.connected.store(up, std::sync::atomic::Ordering::Relaxed);
        if up {
            tracing::info!(patterns = ?shown, "redis adapter subscribed");
        }
    };
    let route = move |node: &Node, msg: &redis::Msg| route(node, msg, &request_prefix, &response_prefix);
    hold_subscription(connector, node, patterns, channels, route, up).await;
}

/// Holds one RESP2 pub/sub connection subscribed to `patterns` and
/// `channels`: hands each message to `route`, pings the connection on an
/// interval (a hung Redis looks like a dead one), and on loss reconnects
/// with capped backoff and subscribes again. `up` hears when the
/// subscriptions are in place (after a round trip that proves it) and
/// when they are lost.
async fn hold_subscription(
    connector: Connector,
    node: Node,
    patterns: Vec<String>,
    channels: Vec<String>,
    route: impl Fn(&Node, &redis::Msg),
    up: impl Fn(bool),
) {
    let mut retry = Reconnect::new(node.config.reconnect_max);
    loop {
        let connect = async {
            let mut pubsub = connector.pubsub().await?;
            let subscribe = async {
                for p in &patterns {
                    pubsub.psubscribe(p).await?;
                }
                for c in &channels {
                    pubsub.subscribe(c).await?;
                }
                // A round trip proves the subscriptions are in place.
                pubsub.ping::<redis::Value>().await
            };
            subscribe.await.map_err(|e| connector.error(e))?;
            Ok::<_, link::LinkError>(pubsub)
        };
        match timeout(node.config.command_timeout, connect).await {
            Ok(Ok(pubsub)) => {
                up(true);
                retry.connected();
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => route(&node, &msg),
                            None => break,
                        },
                        _ = ping.tick() => {
                            let pong = timeout(node.config.command_timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                up(false);
                retry.lost();
            }
            Ok(Err(e)) => retry.failed(&e.to_string()),
            Err(_) => retry.failed(&format!("Redis at {}: timed out", connector.addr())),
        }
        retry.pause().await;
    }
}

/// A message on one of the subscriptions: a request, an answer to one of
/// this node's requests, or a broadcast.
fn route(node: &Node, msg: &redis::Msg, request_prefix: &str, response_prefix: &str) {
    let channel = msg.get_channel_name();
    let payload = msg.get_payload_bytes();
    if let Some(rest) = channel.strip_prefix(request_prefix) {
        let nsp = rest.strip_suffix('#').unwrap_or(rest).to_owned();
        if let Some(request) = requests::decode(payload) {
            serve(node, nsp, request);
        }
    } else if channel.starts_with(response_prefix) {
        if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(payload) {
            collect(&node.pending, &answer);
        }
    } else {
        receive(payload, &node.uid, &node.broker.inbound, &node.status);
    }
}

/// Pushes waiting for the sharded subscriber; beyond it they are lost
/// (counted) rather than held without bound.
const PUSH_QUEUE: usize = 4096;

/// The sharded subscriber: SSUBSCRIBE on every namespace's channel and this
/// node's answer channel, plus (dynamic mode) the channels of the public
/// rooms in `rooms`, followed as they change. On a Redis Cluster each
/// channel is subscribed on the shard that owns it.
async fn shard_subscriber(connector: Connector, node: Node, rooms: Arc<RoomWatch>) {
    let key = node.config.key.clone();
    let dynamic = matches!(node.config.mode, Mode::Sharded { dynamic: true, .. });
    let mut fixed = Vec::new();
    for nsp in &node.config.namespaces {
        fixed.push(sharded::main_channel(&key, nsp));
        fixed.push(sharded::response_channel(&key, nsp, &node.uid));
    }
    let limit = node.config.command_timeout;
    let mut retry = Reconnect::new(node.config.reconnect_max);
    loop {
        let (tx, mut pushes) = mpsc::channel::<redis::PushInfo>(PUSH_QUEUE);
        let status = node.status.clone();
        let sender = move |push: redis::PushInfo| {
            if tx.try_send(push).is_err() {
                AdapterStatus::add(&status.lost, 1);
            }
            Ok::<(), ()>(())
        };
        let connect = async {
            let mut conn = connector.connect(limit, Some(sender)).await?;
            for channel in &fixed {
                let subscribed = redis::cmd("SSUBSCRIBE").arg(channel).exec_async(&mut conn).await;
                subscribed.map_err(|e| connector.error(e))?;
            }
            Ok::<_, link::LinkError>(conn)
        };
        match timeout(limit, connect).await {
            Ok(Ok(mut conn)) => {
                let mut subscribed = HashSet::new();
                if !dynamic || follow_rooms(&mut conn, &key, &rooms, &mut subscribed, limit).await {
                    node.status.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        channels = fixed.len() + subscribed.len(),
                        "redis adapter subscribed (sharded)"
                    );
                    retry.connected();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.tick().await;
                    loop {
                        tokio::select! {
                            push = pushes.recv() => match push {
                                Some(p) if p.kind == redis::PushKind::SMessage => route_sharded(&node, &p.data),
                                Some(p) if p.kind == redis::PushKind::Disconnection => break,
                                Some(_) => {}
                                None => break,
                            },
                            () = rooms.changed(), if dynamic => {
                                if !follow_rooms(&mut conn, &key, &rooms, &mut subscribed, limit).await {
                                    break;
                                }
                            }
                            _ = ping.tick() => {
                                let pong = timeout(limit, redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await;
                                if !matches!(pong, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                    node.status.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                    retry.lost();
                }
            }
            Ok(Err(e)) => retry.failed(&e.to_string()),
            Err(_) => retry.failed(&format!("Redis at {}: timed out", connector.addr())),
        }
        retry.pause().await;
    }
}

/// Brings the room subscriptions in line with the rooms this node has;
/// false when Redis failed (the connection is then dropped and remade).
async fn follow_rooms(
    conn: &mut Conn,
    key: &str,
    rooms: &RoomWatch,
    subscribed: &mut HashSet<String>,
    limit: Duration,
) -> bool {
    let wanted: HashSet<String> = rooms
        .snapshot()
        .iter()
        .map(|(nsp, room)| sharded::room_channel(key, nsp, room))
        .collect();
    let add: Vec<String> = wanted.difference(subscribed).cloned().collect();
    let remove: Vec<String> = subscribed.difference(&wanted).cloned().collect();
    for (command, channels) in [("SSUBSCRIBE", add), ("SUNSUBSCRIBE", remove)] {
        for channel in channels {
            // One channel per command: on a cluster they live on different shards.
            let done = timeout(limit, redis::cmd(command).arg(&channel).exec_async(conn)).await;
            if !matches!(done, Ok(Ok(()))) {
                return false;
            }
            if command == "SSUBSCRIBE" {
                subscribed.insert(channel);
            } else {
                subscribed.remove(&channel);
            }
        }
    }
    true
}

/// An `smessage` push: `[channel, payload]`.
fn route_sharded(node: &Node, data: &[redis::Value]) {
    let Some(redis::Value::BulkString(payload)) = data.get(1) else {
        return;
    };
    match sharded::decode(payload) {
        Ok((uid, ..)) if uid == node.uid => {}
        Ok((_, _, ShardMessage::Broadcast(b))) => deliver(b, &node.broker.inbound, &node.status),
        Ok((_, nsp, ShardMessage::Request(r))) => serve(node, nsp, r),
        Ok((_, _, ShardMessage::Response(answer))) => collect(&node.pending, &answer),
        Ok((_, _, ShardMessage::Ignored)) => {}
        Err(e) => malformed(&node.status, &e),
    }
}

/// Answers (or applies) a request of another node; see [`requests`] and
/// [`sharded`]. `_serving` is its place among the requests being served,
/// given back when it is done.
async fn answer(node: Node, nsp: String, r: Request, _serving: tokio::sync::OwnedSemaphorePermit) {
    let own = r.uid.as_deref() == Some(node.uid.as_str());
    let arcs = |v: &[String]| -> Vec<Arc<str>> { v.iter().map(|s| s.as_str().into()).collect() };
    let nsp_arc: Arc<str> = nsp.as_str().into();
    let reply = match r.kind {
        kind::REMOTE_JOIN | kind::REMOTE_LEAVE | kind::REMOTE_DISCONNECT => {
            if let Some(op) = remote_operation(&nsp, &r) {
                let _ = node.broker.ops.try_send(op);
            }
            None
        }
        _ if own => None,
        kind::SOCKETS | kind::REMOTE_FETCH => {
            let local = LocalSockets {
                nsp: nsp_arc,
                rooms: arcs(&r.rooms),
                except: arcs(&r.except),
            };
            let found = node.broker.sockets.send(local).await.unwrap_or_default();
            Some(if r.kind == kind::SOCKETS {
                Reply::SocketIds(found.iter().map(|s| json!(s.id)).collect())
            } else {
                Reply::Sockets(
                    found
                        .iter()
                        .map(|s| requests::socket_entry(&s.id, &s.rooms, s.user.as_deref()))
                        .collect(),
                )
            })
        }
        kind::ALL_ROOMS => {
            let rooms = node
                .broker
                .rooms
                .send(LocalRooms { nsp: nsp_arc })
                .await
                .unwrap_or_default();
            Some(Reply::Rooms(rooms))
        }
        kind::SERVER_SIDE_EMIT => Some(Reply::EmitAck),
        kind::BROADCAST => {
            // Delivered without an ack id (acks are not relayed), so this
            // node reports 0 clients and the requester waits for none.
            if let Some(b) = r.broadcast {
                let _ = node.broker.inbound.send(Inbound(b)).await;
            }
            Some(Reply::ClientCount)
        }
        _ => None,
    };
    let (Some(reply), Some(request_id)) = (reply, r.request_id.as_deref()) else {
        return;
    };
    let requester = r.uid.as_deref().unwrap_or_default();
    if let Some(message) = node.config.reply(&node.uid, &nsp, requester, request_id, reply) {
        if node.queue.try_send(message).is_err() {
            AdapterStatus::add(&node.status.lost, 1);
        }
    }
}

/// What a join, leave or disconnect request asks of the local broker
/// (`None` for another kind of request).
fn remote_operation(nsp: &str, r: &Request) -> Option<RemoteOperation> {
    let arcs = |v: &[String]| -> Vec<Arc<str>> { v.iter().map(|s| s.as_str().into()).collect() };
    let targets = arcs(&r.target_rooms);
    let op = match r.kind {
        kind::REMOTE_JOIN => RemoteOp::Join(targets),
        kind::REMOTE_LEAVE => RemoteOp::Leave(targets),
        kind::REMOTE_DISCONNECT => RemoteOp::Disconnect { close: r.close },
        _ => return None,
    };
    Some(RemoteOperation {
        nsp: nsp.into(),
        rooms: arcs(&r.rooms),
        except: arcs(&r.except),
        op,
    })
}

/// Counts an answer to one of this node's requests (`{requestId, sockets?}`).
fn collect(pending: &PendingMap, answer: &serde_json::Value) {
    let Some(id) = answer.get("requestId").and_then(|i| i.as_str()) else {
        return;
    };
    // unwrap: the lock is only held for map operations.
    let mut map = pending.lock().unwrap();
    let Some(p) = map.get_mut(id) else { return };
    for s in answer.get("sockets").and_then(|s| s.as_array()).into_iter().flatten() {
        if let Some((id, rooms, user)) = requests::parse_socket(s) {
            p.sockets.push(SocketInfo { id, rooms, user });
        }
    }
    p.answers += 1;
    if p.answers >= p.expected {
        if let Some(done) = p.done.take() {
            let _ = done.send(());
        }
    }
}

fn receive(payload: &[u8], uid: &str, broker: &Recipient<Inbound>, status: &AdapterStatus) {
    match wire::decode(payload) {
        Ok(Broadcast { uid: sender, .. }) if sender == uid => {}
        Ok(b) => deliver(b, broker, status),
        Err(e) => malformed(status, &e),
    }
}

/// Hands another node's broadcast to the broker.
fn deliver(b: Broadcast, broker: &Recipient<Inbound>, status: &AdapterStatus) {
    AdapterStatus::add(&status.received, 1);
    if broker.try_send(Inbound(b)).is_err() {
        AdapterStatus::add(&status.lost, 1);
        tracing::warn!("redis adapter: broker mailbox full, a cross-node broadcast was lost");
    }
}

fn malformed(status: &AdapterStatus, e: &wire::WireError) {
    AdapterStatus::add(&status.malformed, 1);
    tracing::debug!("redis adapter: ignored a message: {e}");
}

/// Whether `url` (a Redis Cluster seed if `cluster`) and `tls_ca_file`
/// make a client: the URL parses, and the CA file, when set, is a readable
/// PEM file of certificates for a `rediss://` URL. Nothing is connected.
pub fn check_settings(url: &str, cluster: bool, tls_ca_file: &str) -> Result<(), SetupError> {
    Connector::open(url, cluster, tls_ca_file).map(drop)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Handler<FetchSockets> for RedisAdapter {
    type Result = ResponseFuture<RemoteSockets>;

    fn handle(&mut self, msg: FetchSockets, _: &mut Self::Context) -> Self::Result {
        let connector = self.connector.clone();
        let Some(queue) = self.queue.clone() else {
            return Box::pin(async { RemoteSockets::default() });
        };
        let command = self.command.clone();
        let pending = self.pending.clone();
        let uid = self.uid.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let Some(subscribers) = count_nodes(&connector, &command, &config, &msg.nsp).await else {
                return RemoteSockets {
                    sockets: vec![],
                    partial: true,
                };
            };
            // This node is one of the subscribers.
            let expected = subscribers.saturating_sub(1);
            if expected == 0 {
                return RemoteSockets::default();
            }
            let request_id = crate::engineio::generate_sid();
            let (done, finished) = oneshot::channel();
            let entry = Pending {
                expected,
                answers: 0,
                sockets: vec![],
                done: Some(done),
            };
            // unwrap: the lock is only held for map operations.
            pending.lock().unwrap().insert(request_id.clone(), entry);
            let request = config.fetch_request(&uid, &msg.nsp, &request_id, &msg.rooms);
            let sent = queue.try_send(request).is_ok();
            let complete = sent && matches!(timeout(config.requests_timeout, finished).await, Ok(Ok(())));
            // unwrap: the lock is only held for map operations.
            let p = pending.lock().unwrap().remove(&request_id);
            RemoteSockets {
                sockets: p.map(|p| p.sockets).unwrap_or_default(),
                partial: !complete,
            }
        })
    }
}

impl RedisAdapter {
    /// Queues a request that needs no answer.
    fn request(&self, request: Outgoing) {
        let queued = match request {
            Outgoing::Publish(channel, body) => {
                self.queue.as_ref().is_some_and(|q| q.try_send((channel, body)).is_ok())
            }
            Outgoing::Append(append) => self.appends.as_ref().is_some_and(|q| q.try_send(*append).is_ok()),
        };
        if !queued {
            AdapterStatus::add(&self.status.lost, 1);
        }
    }

    /// `streams` mode: queues this node's broadcast for its stream, or,
    /// when it cannot go there, hands it straight back to the broker so
    /// that this node's members get it all the same.
    /// Appends this node's broadcast to its namespace's stream; `stored`
    /// is told whether the stream took it (when not, the broadcast is
    /// handed back to the broker at once, for this node's members).
    fn append_broadcast(&self, b: Broadcast, stored: Option<oneshot::Sender<bool>>) {
        let Some(s) = self.config.streams() else { return };
        let not_stored = |stored: Option<oneshot::Sender<bool>>| {
            if let Some(tx) = stored {
                let _ = tx.send(false);
            }
        };
        let entry = match streams::broadcast_entry(&b) {
            Ok(entry) => entry,
            Err(why) => {
                AdapterStatus::add(&self.status.lost, 1);
                tracing::warn!(error = %why, "redis adapter: a broadcast the adapter's format cannot carry was not sent to the other nodes");
                not_stored(stored);
                return streams_io::hand_back(&self.broker.sequenced, b, &self.status);
            }
        };
        // A namespace this node does not read: no reader would hand it back.
        if !self.config.namespaces.contains(&b.nsp) {
            let append = streams_io::Append::new(s, entry, None).stored(stored);
            self.request(Outgoing::Append(Box::new(append)));
            return streams_io::hand_back(&self.broker.sequenced, b, &self.status);
        }
        let append = streams_io::Append::new(s, entry, Some(b)).stored(stored);
        let mut refused = match &self.appends {
            Some(q) => match q.try_send(append) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a)) => a,
            },
            None => append,
        };
        AdapterStatus::add(&self.status.lost, 1);
        tracing::warn!("redis adapter: stream queue full, a cross-node broadcast was lost");
        refused.settle(false);
        if let Some(b) = refused.broadcast {
            streams_io::hand_back(&self.broker.sequenced, b, &self.status);
        }
    }
}

impl Handler<DisconnectRemote> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, msg: DisconnectRemote, _: &mut Self::Context) {
        let selection = [msg.socket_id];
        self.request(self.config.disconnect_request(&self.uid, &msg.nsp, &selection, true));
    }
}

/// Asks the other nodes to make a socket join or leave a room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MembershipRemote {
    /// Namespace.
    pub nsp: String,
    /// The socket id.
    pub socket_id: String,
    /// The room.
    pub room: String,
    /// Join (or leave).
    pub join: bool,
}

impl Handler<MembershipRemote> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, msg: MembershipRemote, _: &mut Self::Context) {
        let (selection, rooms) = ([msg.socket_id], [msg.room]);
        self.request(
            self.config
                .membership_request(&self.uid, &msg.nsp, &selection, &rooms, msg.join),
        );
    }
}

/// Asks the other nodes to apply `op` to the sockets of a selection (as
/// Socket.IO's `socketsJoin`, `socketsLeave` and `disconnectSockets`):
/// REMOTE_JOIN, REMOTE_LEAVE or REMOTE_DISCONNECT, no answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OperateRemote {
    /// Namespace.
    pub nsp: String,
    /// Rooms, a socket id naming that socket (empty = the namespace).
    pub selection: Vec<String>,
    /// What to do.
    pub op: RemoteOp,
}

impl Handler<OperateRemote> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, msg: OperateRemote, _: &mut Self::Context) {
        let (uid, nsp, selection) = (&self.uid, &msg.nsp, &msg.selection);
        let rooms = |rooms: &[Arc<str>]| rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        let request = match &msg.op {
            RemoteOp::Join(r) => self.config.membership_request(uid, nsp, selection, &rooms(r), true),
            RemoteOp::Leave(r) => self.config.membership_request(uid, nsp, selection, &rooms(r), false),
            RemoteOp::Disconnect { close } => self.config.disconnect_request(uid, nsp, selection, *close),
        };
        self.request(request);
    }
}

/// The nodes subscribed to a namespace's request channel, counted on the
/// command connection (made on first use).
async fn count_nodes(
    connector: &Connector,
    command: &Arc<Mutex<Option<Conn>>>,
    config: &RedisConfig,
    nsp: &str,
) -> Option<usize> {
    let limit = config.command_timeout;
    let mut conn = command_conn(connector, command, limit).await?;
    let (cmd, channel) = config.count_command(nsp);
    match timeout(limit, cmd.query_async::<redis::Value>(&mut conn)).await {
        Ok(Ok(v)) => link::subscriber_count(&v, &channel),
        _ => {
            forget(command);
            None
        }
    }
}

/// The shared command connection, made (within `limit`) if there is none.
async fn command_conn(connector: &Connector, command: &Arc<Mutex<Option<Conn>>>, limit: Duration) -> Option<Conn> {
    // unwrap: the lock is only held to clone or set the handle.
    let cached = command.lock().unwrap().clone();
    match cached {
        Some(c) => Some(c),
        None => {
            let c = timeout(limit, connector.command(limit)).await.ok()?.ok()?;
            // unwrap: as above.
            *command.lock().unwrap() = Some(c.clone());
            Some(c)
        }
    }
}

/// Drops the shared command connection after a failure (the next use
/// makes a new one).
fn forget(command: &Arc<Mutex<Option<Conn>>>) {
    // unwrap: the lock is only held to clone or set the handle.
    *command.lock().unwrap() = None;
}

impl Handler<TakeSession> for RedisAdapter {
    type Result = ResponseFuture<Result<Option<Session>, SessionStoreDown>>;

    /// `GETDEL` (Redis 6.2+) of the session's key, within the command
    /// timeout. Only `streams` mode keeps sessions in Redis: other modes
    /// have none here.
    fn handle(&mut self, msg: TakeSession, _: &mut Self::Context) -> Self::Result {
        let Some(s) = self.config.streams() else {
            return Box::pin(async { Ok(None) });
        };
        let key = format!("{}{}", s.session_key_prefix, msg.pid);
        let (connector, command, status) = (self.connector.clone(), self.command.clone(), self.status.clone());
        let limit = self.config.command_timeout;
        Box::pin(async move {
            let take = async {
                let mut conn = command_conn(&connector, &command, limit).await?;
                redis::cmd("GETDEL")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .ok()
            };
            let stored = match timeout(limit, take).await {
                Ok(Some(stored)) => stored,
                _ => {
                    forget(&command);
                    tracing::warn!("redis adapter: a session could not be taken (Redis unreachable or too slow)");
                    return Err(SessionStoreDown);
                }
            };
            let Some(stored) = stored else { return Ok(None) };
            match streams::decode_session(&stored) {
                Ok(session) => Ok(Some(session)),
                Err(e) => {
                    malformed(&status, &e);
                    Ok(None)
                }
            }
        })
    }
}

impl Handler<KeepSession> for RedisAdapter {
    type Result = ();

    /// Queued: `SET key value PX ttl` (ms, at least 1). Dropped and counted
    /// when the queue is full.
    fn handle(&mut self, msg: KeepSession, _: &mut Self::Context) {
        let Some(s) = self.config.streams() else { return };
        let write = streams_io::SessionWrite::Keep {
            key: format!("{}{}", s.session_key_prefix, msg.session.pid),
            value: streams::encode_session(&msg.session),
            ttl_ms: u64::try_from(msg.ttl.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        self.write_session(write);
    }
}

impl Handler<DropSession> for RedisAdapter {
    type Result = ();

    /// Queued: `DEL key`, as [`KeepSession`].
    fn handle(&mut self, msg: DropSession, _: &mut Self::Context) {
        let Some(s) = self.config.streams() else { return };
        let key = format!("{}{}", s.session_key_prefix, msg.pid);
        self.write_session(streams_io::SessionWrite::Drop { key });
    }
}

impl RedisAdapter {
    fn write_session(&self, write: streams_io::SessionWrite) {
        if self.sessions.as_ref().is_none_or(|q| q.try_send(write).is_err()) {
            AdapterStatus::add(&self.status.sessions_dropped, 1);
            tracing::warn!("redis adapter: session queue full, a session write was dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A broker that holds every fetch until released: a busy broker, so
    /// that the requests being served pile up. It counts the fetches it
    /// holds now and the most it held at once.
    struct BusyBroker {
        released: tokio::sync::watch::Receiver<bool>,
        holding: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Actor for BusyBroker {
        type Context = Context<Self>;
    }

    impl Handler<LocalSockets> for BusyBroker {
        type Result = ResponseFuture<Vec<SocketInfo>>;

        fn handle(&mut self, _: LocalSockets, _: &mut Self::Context) -> Self::Result {
            let mut released = self.released.clone();
            let (holding, most) = (self.holding.clone(), self.most.clone());
            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            Box::pin(async move {
                // unwrap: the sender lives as long as the test.
                released.wait_for(|r| *r).await.unwrap();
                holding.fetch_sub(1, Ordering::SeqCst);
                vec![]
            })
        }
    }

    impl Handler<Inbound> for BusyBroker {
        type Result = usize;

        fn handle(&mut self, _: Inbound, _: &mut Self::Context) -> usize {
            0
        }
    }

    impl Handler<LocalRooms> for BusyBroker {
        type Result = MessageResult<LocalRooms>;

        fn handle(&mut self, _: LocalRooms, _: &mut Self::Context) -> Self::Result {
            MessageResult(vec![])
        }
    }

    impl Handler<RemoteOperation> for BusyBroker {
        type Result = ();

        fn handle(&mut self, _: RemoteOperation, _: &mut Self::Context) {}
    }

    impl Handler<Sequenced> for BusyBroker {
        type Result = ();

        fn handle(&mut self, _: Sequenced, _: &mut Self::Context) {}
    }

    impl Handler<StreamRead> for BusyBroker {
        type Result = ();

        fn handle(&mut self, _: StreamRead, _: &mut Self::Context) {}
    }

    fn fetch(n: usize) -> Request {
        // unwrap: a well-formed request.
        requests::decode(&requests::fetch_request(
            "other-node",
            &format!("r{n}"),
            &["lobby".into()],
            &[],
        ))
        .unwrap()
    }

    /// Polls `check` (the tasks run on this thread) until it holds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[actix_web::test]
    async fn a_flood_of_requests_past_the_bound_is_dropped_and_counted_and_the_rest_answered() {
        let (release, released) = tokio::sync::watch::channel(false);
        let (holding, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let broker = BusyBroker {
            released,
            holding: holding.clone(),
            most: most.clone(),
        }
        .start();
        let flood = 20 * MAX_REQUESTS_IN_FLIGHT;
        let (queue, mut replies) = mpsc::channel(flood);
        let status = Arc::new(AdapterStatus::default());
        let node = Node {
            uid: "this-node".into(),
            broker: BrokerPorts {
                inbound: broker.clone().recipient(),
                sockets: broker.clone().recipient(),
                rooms: broker.clone().recipient(),
                ops: broker.clone().recipient(),
                sequenced: broker.clone().recipient(),
                stream_read: broker.clone().recipient(),
            },
            config: RedisConfig {
                node_id: "this-node".into(),
                url: "redis://127.0.0.1:1/".into(),
                tls_ca_file: String::new(),
                key: "socket.io".into(),
                namespaces: vec!["/".into()],
                command_timeout: Duration::from_secs(1),
                reconnect_max: Duration::from_secs(1),
                queue: flood,
                requests_timeout: Duration::from_secs(1),
                mode: Mode::Classic,
            },
            status: status.clone(),
            queue,
            pending: PendingMap::default(),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        };

        for n in 0..flood {
            serve(&node, "/".into(), fetch(n));
        }
        // Everything past the bound was dropped at once, and counted.
        let dropped = status.requests_dropped.load(Ordering::Relaxed) as usize;
        assert_eq!(dropped, flood - MAX_REQUESTS_IN_FLIGHT);
        until("the broker holds the requests being served", || {
            holding.load(Ordering::SeqCst) == MAX_REQUESTS_IN_FLIGHT
        })
        .await;
        // No more than the bound were ever waiting on the broker: the work
        // held (tasks, decoded requests) does not grow with the flood.
        assert_eq!(most.load(Ordering::SeqCst), MAX_REQUESTS_IN_FLIGHT);
        assert_eq!(node.serving.available_permits(), 0);
        assert!(replies.is_empty(), "nothing answered while the broker is busy");

        // The broker catches up: every request within the bound is answered.
        release.send(true).unwrap();
        let mut answered = HashSet::new();
        for _ in 0..MAX_REQUESTS_IN_FLIGHT {
            let (channel, body) = tokio::time::timeout(Duration::from_secs(5), replies.recv())
                .await
                .expect("an answer")
                .expect("the queue is open");
            assert_eq!(channel, "socket.io-response#/#");
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            answered.insert(body["requestId"].as_str().unwrap().to_owned());
        }
        let served: HashSet<String> = (0..MAX_REQUESTS_IN_FLIGHT).map(|n| format!("r{n}")).collect();
        assert_eq!(answered, served, "the first requests, those within the bound");
        until("the permits are given back", || {
            node.serving.available_permits() == MAX_REQUESTS_IN_FLIGHT
        })
        .await;

        // With room again, the next request is served, not dropped.
        serve(&node, "/".into(), fetch(flood));
        let (_, body) = tokio::time::timeout(Duration::from_secs(5), replies.recv())
            .await
            .expect("an answer")
            .expect("the queue is open");
        assert!(String::from_utf8_lossy(&body).contains(&format!("\"r{flood}\"")));
        assert_eq!(status.requests_dropped.load(Ordering::Relaxed) as usize, dropped);
    }
}
