//! The sessions of one endpoint, by sid, shared by every worker.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use actix::Addr;

use super::Connection;

/// A live session as the HTTP side sees it.
#[derive(Clone)]
pub struct Entry {
    /// The session's actor.
    pub addr: Addr<Connection>,
    /// Set while a polling POST is being read: the spec allows one at a time,
    /// and a second one must be refused before its body is read.
    pub post_busy: Arc<AtomicBool>,
}

/// Sessions by sid.
#[derive(Clone, Default)]
pub struct Registry {
    map: Arc<RwLock<HashMap<Arc<str>, Entry>>>,
}

impl Registry {
    /// Adds a session.
    pub fn insert(&self, sid: Arc<str>, addr: Addr<Connection>) {
        let entry = Entry {
            addr,
            post_busy: Arc::new(AtomicBool::new(false)),
        };
        // unwrap: a poisoned lock means a panic while holding it, which the
        // code under it cannot do (map operations only).
        self.map.write().unwrap().insert(sid, entry);
    }

    /// Looks a session up.
    pub fn get(&self, sid: &str) -> Option<Entry> {
        // unwrap: see `insert`.
        self.map.read().unwrap().get(sid).cloned()
    }

    /// Removes a session.
    pub fn remove(&self, sid: &str) {
        // unwrap: see `insert`.
        self.map.write().unwrap().remove(sid);
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        // unwrap: see `insert`.
        self.map.read().unwrap().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every session's actor (for shutdown and admin actions).
    pub fn addrs(&self) -> Vec<Addr<Connection>> {
        // unwrap: see `insert`.
        self.map.read().unwrap().values().map(|e| e.addr.clone()).collect()
    }
}
