//! What happens to namespace sockets, for whoever watches: the broker, the
//! metrics, tests. Published on a `tokio::sync::broadcast` channel, which
//! never blocks the sender: a watcher that lags loses old events, not the
//! connection's time.

use std::sync::Arc;

use crate::reason::DisconnectReason;

/// A namespace socket joined or left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// A CONNECT was accepted.
    Connected {
        /// Engine.IO session id.
        sid: Arc<str>,
        /// Namespace.
        nsp: Arc<str>,
        /// The namespace socket's own id.
        socket_id: Arc<str>,
        /// It came back with its state (connection state recovery).
        recovered: bool,
    },
    /// A namespace socket ended, with the reason the application sees.
    Disconnected {
        /// Engine.IO session id.
        sid: Arc<str>,
        /// Namespace.
        nsp: Arc<str>,
        /// The namespace socket's id.
        socket_id: Arc<str>,
        /// Socket.IO's reason.
        reason: DisconnectReason,
    },
}
