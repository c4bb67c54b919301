//! Links the local broker to the other nodes of a cluster.
//!
//! [`redis::RedisAdapter`] speaks the wire format of the official
//! `@socket.io/redis-adapter` 8.x / `@socket.io/redis-emitter` 5.x
//! ([`wire`]), so roomcast nodes, Node.js Socket.IO servers with that
//! adapter, and backends using the emitter share broadcasts.
//!
//! Delivery across nodes is at most once (Redis pub/sub): a message published
//! while a node is disconnected from Redis is lost for that node, counted and
//! logged. Order is kept per publisher per connection.

pub mod redis;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix::prelude::*;

/// A broadcast this node sends to the others (the adapter fills in its uid).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Outbound(pub wire::Broadcast);

/// A broadcast from another node or an emitter, for the local broker.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Inbound(pub wire::Broadcast);

/// What the adapter reports about itself.
#[derive(Debug, Default)]
pub struct AdapterStatus {
    /// Subscribed and able to receive.
    pub connected: AtomicBool,
    /// Broadcasts published to Redis.
    pub published: AtomicU64,
    /// Broadcasts received from other nodes.
    pub received: AtomicU64,
    /// Cross-node broadcasts lost (Redis away, queue full, timeouts).
    pub lost: AtomicU64,
    /// Messages on the channels that did not decode.
    pub malformed: AtomicU64,
}

impl AdapterStatus {
    /// Whether the node is cut off from the cluster.
    pub fn degraded(&self) -> bool {
        !self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
