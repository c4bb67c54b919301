//! Keeps the [`Directory`] from Redis: this node's entry written every
//! heartbeat, everyone's read back with it.
//!
//! One hash, `{redis.key}#roomcast#nodes`, a field per node: its tag, and
//! `"<until> <address>"`, `until` being the Unix time in ms until which it
//! counts as alive (its heartbeat plus `cluster.node_ttl_ms`). One key
//! rather than a key per node with a TTL: one `HGETALL` reads the cluster,
//! there is no `SCAN`, and it lives in one slot of a Redis Cluster.
//! Liveness is judged by the reader's clock against the writer's, so the
//! nodes' clocks must agree to well within the TTL (NTP does). An entry
//! long expired is removed by whichever node reads it; a node that stops
//! removes its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::timeout;

use super::super::directory::{Directory, NodeEntry};
use super::super::link::{Conn, Connector};
use super::SetupError;
use crate::engineio::NodeTag;

/// How a node takes part in the directory.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// `redis.url`.
    pub url: String,
    /// `redis.cluster`.
    pub cluster: bool,
    /// `redis.tls_ca_file`.
    pub tls_ca_file: String,
    /// `redis.key`: the hash is `{key}#roomcast#nodes`.
    pub key: String,
    /// `cluster.advertise_address`.
    pub address: String,
    /// `cluster.heartbeat_ms`.
    pub heartbeat: Duration,
    /// `cluster.node_ttl_ms`.
    pub ttl: Duration,
    /// `redis.command_timeout_ms`.
    pub command_timeout: Duration,
}

/// Entries expired longer than this are removed by their readers.
const PRUNE_AFTER: Duration = Duration::from_secs(60);
/// The closest two reads asked for by misses follow each other (a client
/// making up sids cannot make this node read Redis faster).
const MIN_READ_GAP: Duration = Duration::from_millis(50);

/// This node's place in the directory: [`Presence::leave`] when it stops.
pub struct Presence {
    stop: Arc<tokio::sync::Notify>,
    done: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl Presence {
    /// Removes this node's entry (within the command timeout) and stops
    /// the heartbeat: its sessions are gone for the other nodes at once.
    pub async fn leave(&self) {
        self.stop.notify_one();
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

/// Starts the task that keeps `directory` (on the current actix runtime).
pub fn start(directory: Arc<Directory>, config: DirectoryConfig) -> Result<Presence, SetupError> {
    let connector = Connector::open(&config.url, config.cluster, &config.tls_ca_file)?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let (done_tx, done) = tokio::sync::oneshot::channel();
    actix_rt::spawn(run(directory, config, connector, stop.clone(), done_tx));
    Ok(Presence {
        stop,
        done: tokio::sync::Mutex::new(Some(done)),
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A field's value: `"<until ms> <address>"`.
fn parse_entry(value: &str) -> Option<NodeEntry> {
    let (until, address) = value.split_once(' ')?;
    Some(NodeEntry {
        address: address.into(),
        until: UNIX_EPOCH + Duration::from_millis(until.parse().ok()?),
    })
}

async fn run(
    directory: Arc<Directory>,
    config: DirectoryConfig,
    connector: Connector,
    stop: Arc<tokio::sync::Notify>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let hash = format!("{}#roomcast#nodes", config.key);
    let tag = directory.tag().to_string();
    let limit = config.command_timeout;
    let mut conn: Option<Conn> = None;
    let mut stale: Vec<String> = Vec::new();
    let mut warned = false;
    loop {
        if conn.is_none() {
            conn = timeout(limit, connector.command(limit)).await.ok().and_then(Result::ok);
        }
        if let Some(c) = conn.as_mut() {
            let now = SystemTime::now();
            let mut pipe = redis::pipe();
            pipe.hset(&hash, &tag, format!("{} {}", unix_ms(now + config.ttl), config.address))
                .ignore();
            if !stale.is_empty() {
                pipe.hdel(&hash, std::mem::take(&mut stale)).ignore();
            }
            pipe.hgetall(&hash);
            match timeout(limit, pipe.query_async::<(HashMap<String, String>,)>(c)).await {
                Ok(Ok((fields,))) => {
                    let mut nodes = HashMap::with_capacity(fields.len());
                    for (field, value) in fields {
                        match (NodeTag::parse(&field), parse_entry(&value)) {
                            (Some(t), Some(entry)) if entry.until + PRUNE_AFTER > now => {
                                nodes.insert(t, entry);
                            }
                            _ => stale.push(field),
                        }
                    }
                    directory.replace(nodes);
                    if warned {
                        tracing::info!("node directory: Redis reachable again");
                        warned = false;
                    }
                }
                failed => {
                    if !warned {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::warn!("node directory: Redis unreachable ({why}); forwarding with what was known");
                        warned = true;
                    }
                    conn = None;
                }
            }
        } else if !warned {
            tracing::warn!("node directory: cannot connect to Redis; forwarding with what was known");
            warned = true;
        }
        let beat = tokio::time::sleep(config.heartbeat);
        tokio::select! {
            () = beat => {}
            () = async {
                directory.wanted().await;
                tokio::time::sleep(MIN_READ_GAP).await;
            } => {}
            () = stop.notified() => break,
        }
    }
    if let Some(c) = conn.as_mut() {
        let _ = timeout(limit, redis::cmd("HDEL").arg(&hash).arg(&tag).query_async::<()>(c)).await;
    }
    let _ = done.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_its_expiry_and_address() {
        let entry = parse_entry("1700000000123 10.0.0.5:9090").unwrap();
        assert_eq!(&*entry.address, "10.0.0.5:9090");
        assert_eq!(unix_ms(entry.until), 1_700_000_000_123);
        assert!(parse_entry("soon 10.0.0.5:9090").is_none());
        assert!(parse_entry("1700000000123").is_none());
    }
}
