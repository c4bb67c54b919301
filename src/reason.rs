//! Why a connection (or one namespace socket on it) ended, and which limit
//! refused something.
//!
//! Close reasons are data: every variant carries the exact string Socket.IO
//! reports for it, a stable numeric code for the audit log, and whether it was
//! the server's decision to end a connection (`is_server_initiated`).

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

    /// The server decided to end a connection or namespace socket that was
    /// working (a forced close, a shutdown, a server namespace disconnect).
    pub const fn is_server_initiated(self) -> bool {
        matches!(
            self,
            Self::ForcedClose | Self::ServerShuttingDown | Self::ServerNamespaceDisconnect
        )
    }

    /// Whether the server decided to close a healthy session, so that data it
    /// had already accepted for the client is still delivered before the close.
    /// For the other reasons the client is gone or misbehaving and the session
    /// ends at once.
    pub const fn drains_first(self) -> bool {
        matches!(self, Self::ForcedClose | Self::ServerShuttingDown)
    }

    /// Whether a socket that ends for this reason keeps its session for
    /// connection state recovery: the connection was lost, or the server
    /// went away. socket.io 4.8 (`RECOVERABLE_DISCONNECT_REASONS` in
    /// `packages/socket.io/lib/socket.ts`) also keeps it on "forced close";
    /// roomcast does not: that is a kick or a limit's close here, and a
    /// kicked client must not come back through recovery. Namespace
    /// disconnects (either side) and parse errors do not keep it either.
    pub const fn keeps_session(self) -> bool {
        matches!(
            self,
            Self::TransportClose | Self::TransportError | Self::PingTimeout | Self::ServerShuttingDown
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A limit that refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `limits.handshakes_per_second` for one client address.
    HandshakeRate,
    /// `limits.connections_per_ip`.
    ConnectionsPerIp,
    /// `limits.max_url_len`.
    UrlLength,
    /// `limits.max_header_bytes`.
    HeaderSize,
    /// `server.allowed_origins`.
    Origin,
    /// `limits.packets_per_second` on one connection.
    PacketRate,
    /// `limits.bytes_per_second` on one connection.
    ByteRate,
    /// `socketio.max_namespaces`.
    Namespaces,
    /// `websocket.message_timeout_ms`.
    MessageTimeout,
    /// `websocket.write_timeout_ms`.
    WriteTimeout,
    /// `limits.body_timeout_ms`.
    BodyTimeout,
    /// `engine.max_payload` (and `websocket.max_fragments`): 413 or 1009.
    MaxPayload,
    /// `engine.max_packets_per_payload`.
    PacketsPerPayload,
    /// `socketio.max_attachments` and `max_attachment_bytes`.
    Attachments,
    /// `rooms.max_per_socket`.
    RoomsPerSocket,
    /// `rooms.max_total`.
    RoomsTotal,
    /// `limits.input_budget_bytes`: the node holds too much incomplete input.
    InputBudget,
    /// `limits.attachment_timeout_ms`.
    AttachmentTimeout,
    /// `rooms.max_per_address`.
    RoomsPerAddress,
    /// `rooms.max_per_user`.
    RoomsPerUser,
    /// `server.max_connections`.
    MaxConnections,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Limit; 21] = [
        Self::HandshakeRate,
        Self::ConnectionsPerIp,
        Self::UrlLength,
        Self::HeaderSize,
        Self::Origin,
        Self::PacketRate,
        Self::ByteRate,
        Self::Namespaces,
        Self::MessageTimeout,
        Self::WriteTimeout,
        Self::BodyTimeout,
        Self::MaxPayload,
        Self::PacketsPerPayload,
        Self::Attachments,
        Self::RoomsPerSocket,
        Self::RoomsTotal,
        Self::InputBudget,
        Self::AttachmentTimeout,
        Self::RoomsPerAddress,
        Self::RoomsPerUser,
        Self::MaxConnections,
    ];

    /// The metric label, also the audit reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeRate => "handshakes_per_second",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::UrlLength => "max_url_len",
            Self::HeaderSize => "max_header_bytes",
            Self::Origin => "allowed_origins",
            Self::PacketRate => "packets_per_second",
            Self::ByteRate => "bytes_per_second",
            Self::Namespaces => "max_namespaces",
            Self::MessageTimeout => "message_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::MaxPayload => "max_payload",
            Self::PacketsPerPayload => "max_packets_per_payload",
            Self::Attachments => "max_attachments",
            Self::RoomsPerSocket => "rooms_per_socket",
            Self::RoomsTotal => "rooms_total",
            Self::InputBudget => "input_budget",
            Self::AttachmentTimeout => "attachment_timeout",
            Self::RoomsPerAddress => "rooms_per_address",
            Self::RoomsPerUser => "rooms_per_user",
            Self::MaxConnections => "max_connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_strings_exact() {
        let mut codes: Vec<u16> = DisconnectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
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
