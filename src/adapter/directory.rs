//! Where the nodes of a cluster are, for long-polling without sticky
//! sessions (`[cluster] sticky = false`): each node's [`NodeTag`] (the
//! first characters of every sid it makes) and the address the others
//! reach it at.
//!
//! The map is read on the request path and written off it: a task
//! (`adapter::redis::directory`) publishes this node's entry in Redis every
//! heartbeat and reads everyone's back. A node counts as alive until the
//! time its last entry named; a node that stops says so (its entry goes),
//! one that dies is gone within `cluster.node_ttl_ms`, and before that a
//! request forwarded to it fails to connect at once. A tag not in the map
//! (a node that started since the last read) asks the task for a read now
//! ([`Directory::find`]): every miss waiting at that moment shares one read.
//! While Redis is away the map keeps what it last knew.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::engineio::NodeTag;

/// A node as the directory last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// `host:port` at which it serves forwarded requests.
    pub address: Arc<str>,
    /// Until when it counts as alive (its last heartbeat plus the TTL).
    pub until: SystemTime,
}

/// Where a session lives, by its sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// On this node (if it is not in the registry, it is gone).
    Here,
    /// On the live node at this address.
    At(Arc<str>),
    /// Nowhere: its node is gone (or the sid names no node).
    Gone,
}

/// The nodes of the cluster, shared by the request handlers and the task
/// that keeps the map.
pub struct Directory {
    tag: NodeTag,
    nodes: RwLock<Arc<HashMap<NodeTag, NodeEntry>>>,
    /// Bumped by every read of the task; a miss waits for the next one.
    reads: tokio::sync::watch::Sender<u64>,
    /// Asks the task for a read now.
    wanted: tokio::sync::Notify,
}

impl Directory {
    /// An empty directory for the node tagged `tag`.
    pub fn new(tag: NodeTag) -> Self {
        Self {
            tag,
            nodes: RwLock::default(),
            reads: tokio::sync::watch::channel(0).0,
            wanted: tokio::sync::Notify::new(),
        }
    }

    /// This node's tag.
    pub fn tag(&self) -> NodeTag {
        self.tag
    }

    /// Where the session `sid` lives, as the map says now.
    pub fn owner(&self, sid: &str) -> Owner {
        match NodeTag::of_sid(sid) {
            None => Owner::Gone,
            Some(tag) if tag == self.tag => Owner::Here,
            Some(tag) => self.alive(tag).map_or(Owner::Gone, Owner::At),
        }
    }

    /// [`Directory::owner`], and when the sid's node is not in the map,
    /// the answer after a fresh read (within `wait`).
    pub async fn find(&self, sid: &str, wait: Duration) -> Owner {
        let owner = self.owner(sid);
        let Some(tag) = NodeTag::of_sid(sid) else {
            return owner;
        };
        if owner != Owner::Gone || self.known(tag) {
            // Known and expired: gone, no read will bring it back sooner.
            return owner;
        }
        let mut reads = self.reads.subscribe();
        reads.mark_unchanged();
        self.wanted.notify_one();
        let _ = tokio::time::timeout(wait, reads.changed()).await;
        self.owner(sid)
    }

    /// The live node tagged `tag`.
    fn alive(&self, tag: NodeTag) -> Option<Arc<str>> {
        let nodes = self.snapshot();
        let entry = nodes.get(&tag)?;
        (entry.until > SystemTime::now()).then(|| entry.address.clone())
    }

    fn known(&self, tag: NodeTag) -> bool {
        self.snapshot().contains_key(&tag)
    }

    fn snapshot(&self) -> Arc<HashMap<NodeTag, NodeEntry>> {
        // unwrap: a poisoned lock means a panic while holding it, which
        // cloning or replacing an Arc cannot do.
        self.nodes.read().unwrap().clone()
    }

    /// Nodes that count as alive now, this one included once published.
    pub fn live(&self) -> usize {
        let now = SystemTime::now();
        self.snapshot().values().filter(|e| e.until > now).count()
    }

    /// Replaces the map with a fresh read (the task's).
    pub fn replace(&self, nodes: HashMap<NodeTag, NodeEntry>) {
        // unwrap: see `snapshot`.
        *self.nodes.write().unwrap() = Arc::new(nodes);
        self.reads.send_modify(|n| *n += 1);
    }

    /// Resolves when a handler asked for a read now (the task's).
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str, ttl: Duration) -> NodeEntry {
        NodeEntry {
            address: address.into(),
            until: SystemTime::now() + ttl,
        }
    }

    #[test]
    fn a_sid_is_here_at_a_live_node_or_gone() {
        let (here, there, dead) = (NodeTag::generate(), NodeTag::generate(), NodeTag::generate());
        let directory = Directory::new(here);
        assert_eq!(directory.owner(&here.sid()), Owner::Here);
        assert_eq!(directory.owner(&there.sid()), Owner::Gone);
        let mut nodes = HashMap::new();
        nodes.insert(there, entry("10.0.0.2:9090", Duration::from_secs(3)));
        nodes.insert(dead, entry("10.0.0.3:9090", Duration::ZERO));
        directory.replace(nodes);
        assert_eq!(directory.owner(&there.sid()), Owner::At("10.0.0.2:9090".into()));
        assert_eq!(directory.owner(&dead.sid()), Owner::Gone);
        assert_eq!(directory.owner("not-a-tagged-sid"), Owner::Gone);
        assert_eq!(directory.live(), 1);
    }

    #[tokio::test]
    async fn a_miss_waits_for_a_fresh_read() {
        let (here, new) = (NodeTag::generate(), NodeTag::generate());
        let directory = Arc::new(Directory::new(here));
        let reader = directory.clone();
        let task = tokio::spawn(async move {
            reader.wanted().await;
            let mut nodes = HashMap::new();
            nodes.insert(new, entry("10.0.0.9:9090", Duration::from_secs(3)));
            reader.replace(nodes);
        });
        let owner = directory.find(&new.sid(), Duration::from_secs(5)).await;
        assert_eq!(owner, Owner::At("10.0.0.9:9090".into()));
        task.await.unwrap();
        // Not found after the read: gone, once the wait is over.
        let other = NodeTag::generate();
        assert_eq!(
            directory.find(&other.sid(), Duration::from_millis(20)).await,
            Owner::Gone
        );
    }
}
