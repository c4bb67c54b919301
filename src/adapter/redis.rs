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

use super::wire::{self, Broadcast};
use super::{AdapterStatus, Inbound, Outbound};

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
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
    broker: Recipient<Inbound>,
    status: Arc<AdapterStatus>,
    queue: Option<mpsc::Sender<(String, Vec<u8>)>>,
}

impl RedisAdapter {
    /// An adapter for `config` that delivers to `broker`.
    pub fn new(config: RedisConfig, broker: Recipient<Inbound>, status: Arc<AdapterStatus>) -> Self {
        Self {
            config,
            uid: crate::engineio::generate_sid(),
            broker,
            status,
            queue: None,
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
        let patterns = self
            .config
            .namespaces
            .iter()
            .map(|n| wire::pattern(&self.config.key, n))
            .collect();
        actix_rt::spawn(subscriber(
            client,
            patterns,
            self.uid.clone(),
            self.broker.clone(),
            self.config.clone(),
            self.status.clone(),
        ));
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

async fn subscriber(
    client: redis::Client,
    patterns: Vec<String>,
    uid: String,
    broker: Recipient<Inbound>,
    config: RedisConfig,
    status: Arc<AdapterStatus>,
) {
    let mut backoff = BACKOFF_START;
    let mut failures = 0u64;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for p in &patterns {
                pubsub.psubscribe(p).await?;
            }
            // A round trip proves the subscriptions are in place.
            pubsub.ping::<redis::Value>().await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match timeout(config.command_timeout, connect).await {
            Ok(Ok(pubsub)) => {
                status.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(patterns = ?patterns, "redis adapter subscribed");
                backoff = BACKOFF_START;
                failures = 0;
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => receive(msg.get_payload_bytes(), &uid, &broker, &status),
                            None => break,
                        },
                        _ = ping.tick() => {
                            if !matches!(timeout(config.command_timeout, sink.ping::<redis::Value>()).await, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                status.connected.store(false, std::sync::atomic::Ordering::Relaxed);
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
        backoff = (backoff * 2).min(config.reconnect_max);
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
