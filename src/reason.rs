//! Why a connection (or one namespace socket on it) ended.
//!
//! Close reasons are data: every variant carries the exact string Socket.IO
//! reports for it, a stable numeric code for the audit log, and whether it was
//! the server's decision to end a healthy connection (`is_forced`).

use std::fmt;

/// The reason a connection ended, as the application layer sees it.
///
/// The strings are the ones the Node.js reference server hands to its
/// `disconnect` listeners; clients see their own set (`io server disconnect`,
/// `transport close`, ...), which follows from what the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client closed the transport (a WebSocket close, an Engine.IO close
    /// packet, or the TCP connection went away).
    TransportClose,
    /// The transport failed: a WebSocket protocol error, a second concurrent
    /// GET or POST on a polling session, a failed write.
    TransportError,
    /// The client did not answer a PING within `pingTimeout`.
    PingTimeout,
    /// The client sent something that does not parse at the Engine.IO or
    /// Socket.IO layer. Audited.
    ParseError,
    /// The server ended a healthy connection (an API kick, a slow consumer, a
    /// limit breach, an expired token, the connect timeout). Audited.
    ForcedClose,
    /// The server is draining before it stops.
    ServerShuttingDown,
    /// The server disconnected one namespace socket; the connection stays.
    ServerNamespaceDisconnect,
    /// The client left one namespace; the connection stays.
    ClientNamespaceDisconnect,
}

impl DisconnectReason {
    /// Every reason, in code order.
    pub const ALL: [DisconnectReason; 8] = [
        Self::TransportClose,
        Self::TransportError,
        Self::PingTimeout,
        Self::ParseError,
        Self::ForcedClose,
        Self::ServerShuttingDown,
        Self::ServerNamespaceDisconnect,
        Self::ClientNamespaceDisconnect,
    ];

    /// Socket.IO's exact reason string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::ForcedClose => "forced close",
            Self::ServerShuttingDown => "server shutting down",
            Self::ServerNamespaceDisconnect => "server namespace disconnect",
            Self::ClientNamespaceDisconnect => "client namespace disconnect",
        }
    }

    /// A stable number for the audit log and metrics; never reused.
    pub const fn code(self) -> u16 {
        match self {
            Self::TransportClose => 1,
            Self::TransportError => 2,
            Self::PingTimeout => 3,
            Self::ParseError => 4,
            Self::ForcedClose => 5,
            Self::ServerShuttingDown => 6,
            Self::ServerNamespaceDisconnect => 7,
            Self::ClientNamespaceDisconnect => 8,
        }
    }

    /// The server ended a connection that was working.
    pub const fn is_forced(self) -> bool {
        matches!(self, Self::ForcedClose)
    }

    /// The server decided to end a connection or namespace socket that was
    /// working (a forced close, a shutdown, a server namespace disconnect).
    pub const fn is_server_initiated(self) -> bool {
        matches!(
            self,
            Self::ForcedClose | Self::ServerShuttingDown | Self::ServerNamespaceDisconnect
        )
    }

    /// Whether a close for this reason is always written to the audit log
    /// (server-initiated closes and parse errors; the others only with
    /// `audit.record_disconnects`).
    pub const fn is_audited(self) -> bool {
        self.is_server_initiated() || matches!(self, Self::ParseError)
    }

    /// Whether the server decided to close a healthy session, so that data it
    /// had already accepted for the client is still delivered before the close.
    /// For the other reasons the client is gone or misbehaving and the session
    /// ends at once.
    pub const fn drains_first(self) -> bool {
        matches!(self, Self::ForcedClose | Self::ServerShuttingDown)
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_strings_exact() {
        let mut codes: Vec<u16> = DisconnectReason::ALL.iter().map(|r| r.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), 8);
        let strings: Vec<&str> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            strings,
            [
                "transport close",
                "transport error",
                "ping timeout",
                "parse error",
                "forced close",
                "server shutting down",
                "server namespace disconnect",
                "client namespace disconnect"
            ]
        );
    }
}
