//! The seams through which a connection serves a namespace it does not
//! know the protocol of, and reports what happens to its sockets, without
//! importing whoever implements them (the Admin UI's namespace,
//! `crate::adminui`, sits above this layer).
//!
//! - [`ServerNamespace`]: a namespace whose CONNECT is checked, and whose
//!   events are handled, by someone else. The connection keeps doing what
//!   it does for every socket (registration with the broker, the close
//!   path, the audit log); the service decides who gets in, what the
//!   socket is told first, and what its events do.
//! - [`SocketObserver`]: namespace sockets connecting and disconnecting,
//!   and the events their clients send. Called on the connection's thread
//!   with borrowed data, so an observer that has nothing to do (or no
//!   budget left) costs a check and no allocation.

use futures_util::future::BoxFuture;

use crate::reason::DisconnectReason;

/// A login a [`ServerNamespace`] accepted.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// Events (`(name, comma-separated JSON arguments)`) to emit right after
    /// the CONNECT answer (e.g. a session id).
    pub first: Vec<(String, String)>,
}

/// A namespace served by someone other than the connection.
pub trait ServerNamespace: Send + Sync {
    /// The namespace's name.
    fn name(&self) -> &str;

    /// Checks a CONNECT's payload (`auth`, as the client wrote it):
    /// admitted, or refused with the message CONNECT_ERROR carries.
    fn admit(&self, auth: serde_json::Value) -> BoxFuture<'static, Result<Admitted, String>>;

    /// What a socket that got in is told: events to emit, in order (each
    /// `(name, comma-separated JSON arguments)`), once the future resolves.
    fn welcome(&self) -> BoxFuture<'static, Vec<(String, String)>>;

    /// An event of one of its sockets: `name` and its arguments, the JSON
    /// array text of the whole packet (`["name", ...]`).
    fn event(&self, name: &str, args: &str);
}

/// A namespace socket as an observer sees it when it connects.
#[derive(Debug, Clone, Copy)]
pub struct SocketDetails<'a> {
    /// Namespace.
    pub nsp: &'a str,
    /// The namespace socket's id.
    pub id: &'a str,
    /// The Engine.IO session id (secret: an observer shows at most a
    /// prefix, as Node.js's Admin UI does).
    pub sid: &'a str,
    /// `"polling"` or `"websocket"`.
    pub transport: &'static str,
    /// The client's address, as the audit log names it.
    pub address: Option<&'a str>,
    /// Its `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// It came back with its state (connection state recovery).
    pub recovered: bool,
}

/// What happens to namespace sockets, for whoever watches.
pub trait SocketObserver: Send + Sync {
    /// A socket connected (its CONNECT was answered).
    fn socket_connected(&self, socket: &SocketDetails<'_>);
    /// A socket ended with `reason`.
    fn socket_disconnected(&self, nsp: &str, id: &str, reason: DisconnectReason);
    /// A socket's connection moved to another transport (an upgrade).
    fn transport_changed(&self, nsp: &str, id: &str, transport: &'static str);
    /// A client sent an event: `args` is the JSON array text of the
    /// packet's data (`["name", ...]`).
    fn event_received(&self, nsp: &str, id: &str, args: &str);
}
