//! `server.max_connections`: how many Engine.IO sessions this node holds at
//! once, every endpoint and both transports together.
//!
//! Before this cap the only one was actix-server's per-worker connection
//! cap, at which it stops accepting without a word, `/healthz` included.
//! Here a handshake beyond the cap is answered (503, `Retry-After`), and the
//! operations endpoints, which are not sessions, keep answering.
//!
//! The count is the endpoints' registries (a session is in one from
//! [`crate::conn::Connection::start`] until its actor has stopped, so its
//! socket is gone) plus the handshakes admitted whose session is not
//! registered yet. A handshake first counts itself in, then compares: two
//! racing for the last place may both be refused, but never both admitted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::conn::Registry;

/// Seconds a client refused at the cap is told to wait (`Retry-After`).
/// Places free up as sessions end; a client behind a balancer is better off
/// trying another node than coming back at once.
pub const RETRY_AFTER_S: u32 = 5;

/// Whether the node is draining (stopping): new sessions are refused, and
/// `/readyz` says so. Set once, by the shutdown.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// Whether new sessions are refused.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// From now on new sessions are refused.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The sessions of a node and their cap.
pub struct SessionCap {
    max: usize,
    registries: Vec<Registry>,
    /// Handshakes admitted whose session is not in a registry yet.
    admitting: AtomicUsize,
}

/// A place taken by a handshake: hold it until the session is registered
/// (or the handshake failed), then drop it.
pub struct Admission<'a> {
    cap: &'a SessionCap,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.cap.admitting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SessionCap {
    /// At most `max` sessions in `registries` together.
    pub fn new(max: usize, registries: Vec<Registry>) -> SessionCap {
        SessionCap {
            max,
            registries,
            admitting: AtomicUsize::new(0),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Sessions registered now.
    pub fn open(&self) -> usize {
        self.registries.iter().map(Registry::len).sum()
    }

    /// A place for one more session, or `None` at the cap.
    pub fn admit(&self) -> Option<Admission<'_>> {
        let admitting = self.admitting.fetch_add(1, Ordering::SeqCst) + 1;
        let admission = Admission { cap: self };
        (self.open() + admitting <= self.max).then_some(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_and_given_back() {
        let cap = SessionCap::new(2, vec![Registry::default(), Registry::default()]);
        let first = cap.admit().expect("a place");
        let second = cap.admit().expect("a second place");
        assert!(cap.admit().is_none(), "at the cap");
        drop(first);
        let third = cap.admit().expect("the place given back");
        assert!(cap.admit().is_none());
        drop((second, third));
        assert_eq!(cap.admitting.load(Ordering::SeqCst), 0);
        assert_eq!(cap.open(), 0);
        assert!(SessionCap::new(0, vec![]).admit().is_none());
    }
}
