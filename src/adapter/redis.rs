//! The Redis adapter actor: publishes this node's broadcasts and hands the
//! other nodes' broadcasts to the local broker.
//!
//! Two tasks do the I/O, so neither a connection nor the broker ever waits
//! on Redis:
//! - the publisher drains a bounded queue, pipelining what is waiting into
//!   one round trip with a timeout; while Redis is away it retries with
//!   capped backoff, holding new broadcasts in the queue between attempts
//!   and dropping (and counting) those of a failed attempt;
//! - the subscriber holds a `PSUBSCRIBE {key}#{nsp}#*` connection per node,
//!   pings it on an interval (a hung Redis looks like a dead one), and on
//!   loss reconnects with capped backoff and subscribes again.
//!
//! A node drops its own messages (same uid); the broker delivers each
//! message to each local member once.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::json;
use tokio::sync::oneshot;

use super::requests::{self, kind, Request};
use super::wire::{self, Broadcast};
use super::{AdapterStatus, Inbound, LocalRooms, LocalSockets, Outbound, RemoteOp, RemoteOperation, SocketInfo};

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// This node's id: the adapter's `uid`, by which a node recognises its
    /// own messages (also the audit rows' `node`).
    pub node_id: String,
    /// `redis://…`
    pub url: String,
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

/// The adapter actor.
pub struct RedisAdapter {
    config: RedisConfig,
    uid: String,
    broker: BrokerPorts,
    status: Arc<AdapterStatus>,
    queue: Option<mpsc::Sender<(String, Vec<u8>)>>,
    client: Option<redis::Client>,
    /// A command connection for NUMSUB, made on first use.
    command: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    pending: PendingMap,
}

impl RedisAdapter {
    /// An adapter for `config` that delivers to `broker`.
    pub fn new(config: RedisConfig, broker: BrokerPorts, status: Arc<AdapterStatus>) -> Self {
        Self {
            uid: config.node_id.clone(),
            config,
            broker,
            status,
            queue: None,
            client: None,
            command: Arc::default(),
            pending: Arc::default(),
        }
    }
}

impl Actor for RedisAdapter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.queue);
        let client = match redis::Client::open(self.config.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("redis adapter: bad url: {e}");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(self.config.queue);
        self.queue = Some(tx);
        actix_rt::spawn(publisher(client.clone(), rx, self.config.clone(), self.status.clone()));
        self.client = Some(client.clone());
        let node = Node {
            uid: self.uid.clone(),
            broker: self.broker.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
            queue: tx_for(&self.queue),
            pending: self.pending.clone(),
        };
        actix_rt::spawn(subscriber(client, node));
        tracing::info!(uid = %self.uid, url = %redact(&self.config.url), "redis adapter started");
    }
}

impl Handler<Outbound> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, Outbound(mut b): Outbound, _: &mut Self::Context) {
        b.uid.clone_from(&self.uid);
        let channel = wire::channel(&self.config.key, &b.nsp, &b.rooms);
        let sent = self
            .queue
            .as_ref()
            .is_some_and(|q| q.try_send((channel, wire::encode(&b))).is_ok());
        if !sent {
            AdapterStatus::add(&self.status.lost, 1);
            tracing::warn!("redis adapter: publish queue full or closed, a cross-node broadcast was lost");
        }
    }
}

async fn publisher(
    client: redis::Client,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    config: RedisConfig,
    status: Arc<AdapterStatus>,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
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
            match timeout(config.command_timeout, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    backoff = BACKOFF_START;
                }
                _ => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(config.reconnect_max);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            AdapterStatus::add(&status.lost, n);
            tracing::warn!(lost = n, "redis adapter: Redis unreachable, cross-node broadcasts lost");
            continue;
        };
        let mut pipe = redis::pipe();
        for (channel, bytes) in &batch {
            pipe.publish(channel, bytes.as_slice()).ignore();
        }
        match timeout(config.command_timeout, pipe.query_async::<()>(c)).await {
            Ok(Ok(())) => AdapterStatus::add(&status.published, n),
            failure => {
                let why = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                AdapterStatus::add(&status.lost, n);
                tracing::warn!(
                    lost = n,
                    "redis adapter: publish failed ({why}), cross-node broadcasts lost"
                );
                conn = None;
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(config.reconnect_max);
            }
        }
    }
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
}

fn tx_for(queue: &Option<mpsc::Sender<(String, Vec<u8>)>>) -> mpsc::Sender<(String, Vec<u8>)> {
    // unwrap: set in `started` just before.
    queue.clone().unwrap()
}

async fn subscriber(client: redis::Client, node: Node) {
    let key = &node.config.key;
    let patterns: Vec<String> = node.config.namespaces.iter().map(|n| wire::pattern(key, n)).collect();
    let mut channels = Vec::new();
    for nsp in &node.config.namespaces {
        channels.push(requests::request_channel(key, nsp));
        channels.push(requests::response_channel(key, nsp));
    }
    let (request_prefix, response_prefix) = (format!("{key}-request#"), format!("{key}-response#"));
    let mut backoff = BACKOFF_START;
    let mut failures = 0u64;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for p in &patterns {
                pubsub.psubscribe(p).await?;
            }
            for c in &channels {
                pubsub.subscribe(c).await?;
            }
            // A round trip proves the subscriptions are in place.
            pubsub.ping::<redis::Value>().await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match timeout(node.config.command_timeout, connect).await {
            Ok(Ok(pubsub)) => {
                node.status.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(patterns = ?patterns, "redis adapter subscribed");
                backoff = BACKOFF_START;
                failures = 0;
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => route(&node, &msg, &request_prefix, &response_prefix),
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
                node.status.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("redis adapter lost its subscription: degraded, reconnecting");
            }
            failure => {
                failures += 1;
                // Every attempt while it lasts would flood the log.
                if failures.is_power_of_two() {
                    let why = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(attempts = failures, "redis adapter cannot subscribe: {why}");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(node.config.reconnect_max);
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
            actix_rt::spawn(answer(node.clone(), nsp, request));
        }
    } else if channel.starts_with(response_prefix) {
        collect(&node.pending, payload);
    } else {
        receive(payload, &node.uid, &node.broker.inbound, &node.status);
    }
}

/// Answers (or applies) a request of another node; see [`requests`].
async fn answer(node: Node, nsp: String, r: Request) {
    let own = r.uid.as_deref() == Some(node.uid.as_str());
    let arcs = |v: &[String]| -> Vec<Arc<str>> { v.iter().map(|s| s.as_str().into()).collect() };
    let nsp_arc: Arc<str> = nsp.as_str().into();
    let reply = match r.kind {
        kind::REMOTE_JOIN | kind::REMOTE_LEAVE | kind::REMOTE_DISCONNECT => {
            let targets = arcs(&r.target_rooms);
            let op = match r.kind {
                kind::REMOTE_JOIN => RemoteOp::Join(targets),
                kind::REMOTE_LEAVE => RemoteOp::Leave(targets),
                _ => RemoteOp::Disconnect { close: r.close },
            };
            let _ = node.broker.ops.try_send(RemoteOperation {
                nsp: nsp_arc,
                rooms: arcs(&r.rooms),
                except: arcs(&r.except),
                op,
            });
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
            let sockets: Vec<serde_json::Value> = if r.kind == kind::SOCKETS {
                found.iter().map(|s| json!(s.id)).collect()
            } else {
                found
                    .iter()
                    .map(|s| requests::socket_entry(&s.id, &s.rooms, s.user.as_deref()))
                    .collect()
            };
            Some(json!({"requestId": r.request_id, "sockets": sockets}))
        }
        kind::ALL_ROOMS => {
            let rooms = node
                .broker
                .rooms
                .send(LocalRooms { nsp: nsp_arc })
                .await
                .unwrap_or_default();
            Some(json!({"requestId": r.request_id, "rooms": rooms}))
        }
        kind::SERVER_SIDE_EMIT => r
            .request_id
            .as_ref()
            .map(|id| json!({"type": kind::SERVER_SIDE_EMIT, "requestId": id, "data": null})),
        kind::BROADCAST => {
            // Delivered without an ack id (acks are not relayed), so this
            // node reports 0 clients and the requester waits for none.
            if let Some(b) = r.broadcast {
                let _ = node.broker.inbound.send(Inbound(b)).await;
            }
            Some(json!({"type": kind::BROADCAST_CLIENT_COUNT, "requestId": r.request_id, "clientCount": 0}))
        }
        _ => None,
    };
    if let (Some(reply), Some(_)) = (reply, r.request_id.as_ref()) {
        let channel = requests::response_channel(&node.config.key, &nsp);
        if node.queue.try_send((channel, reply.to_string().into_bytes())).is_err() {
            AdapterStatus::add(&node.status.lost, 1);
        }
    }
}

/// Counts an answer to one of this node's requests.
fn collect(pending: &PendingMap, payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    let Some(id) = v.get("requestId").and_then(|i| i.as_str()) else {
        return;
    };
    // unwrap: the lock is only held for map operations.
    let mut map = pending.lock().unwrap();
    let Some(p) = map.get_mut(id) else { return };
    for s in v.get("sockets").and_then(|s| s.as_array()).into_iter().flatten() {
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
        Ok(b) => {
            AdapterStatus::add(&status.received, 1);
            if broker.try_send(Inbound(b)).is_err() {
                AdapterStatus::add(&status.lost, 1);
                tracing::warn!("redis adapter: broker mailbox full, a cross-node broadcast was lost");
            }
        }
        Err(e) => {
            AdapterStatus::add(&status.malformed, 1);
            tracing::debug!("redis adapter: ignored a message: {e}");
        }
    }
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
        let (Some(client), Some(queue)) = (self.client.clone(), self.queue.clone()) else {
            return Box::pin(async { RemoteSockets::default() });
        };
        let command = self.command.clone();
        let pending = self.pending.clone();
        let uid = self.uid.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let channel = requests::request_channel(&config.key, &msg.nsp);
            let Some(subscribers) = numsub(&client, &command, &channel, config.command_timeout).await else {
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
            let body = requests::fetch_request(&uid, &request_id, &msg.rooms, &[]);
            let sent = queue.try_send((channel, body)).is_ok();
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

impl Handler<DisconnectRemote> for RedisAdapter {
    type Result = ();

    fn handle(&mut self, msg: DisconnectRemote, _: &mut Self::Context) {
        let channel = requests::request_channel(&self.config.key, &msg.nsp);
        let body = requests::disconnect_request(&self.uid, &[msg.socket_id], true);
        if self.queue.as_ref().is_none_or(|q| q.try_send((channel, body)).is_err()) {
            AdapterStatus::add(&self.status.lost, 1);
        }
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
        let channel = requests::request_channel(&self.config.key, &msg.nsp);
        let body = requests::membership_request(&self.uid, &[msg.socket_id], &[msg.room], msg.join);
        if self.queue.as_ref().is_none_or(|q| q.try_send((channel, body)).is_err()) {
            AdapterStatus::add(&self.status.lost, 1);
        }
    }
}

/// `PUBSUB NUMSUB channel` on the command connection (made on first use).
async fn numsub(
    client: &redis::Client,
    command: &Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    channel: &str,
    limit: Duration,
) -> Option<usize> {
    // unwrap: the lock is only held to clone or set the handle.
    let cached = command.lock().unwrap().clone();
    let mut conn = match cached {
        Some(c) => c,
        None => {
            let c = timeout(limit, client.get_multiplexed_async_connection())
                .await
                .ok()?
                .ok()?;
            // unwrap: as above.
            *command.lock().unwrap() = Some(c.clone());
            c
        }
    };
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("NUMSUB").arg(channel);
    let query = cmd.query_async::<(String, usize)>(&mut conn);
    match timeout(limit, query).await {
        Ok(Ok((_, n))) => Some(n),
        _ => {
            // unwrap: as above.
            *command.lock().unwrap() = None;
            None
        }
    }
}
