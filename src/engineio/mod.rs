//! Engine.IO v4, without I/O: packets, polling payloads and the session state
//! machine. Imports no actix, tokio or networking crate.

pub mod packet;
pub mod payload;
pub mod session;

pub use packet::{DecodeError, Frame, Packet, Payload};
/// Engine.IO HTTP error codes, with the reference server's messages
/// (engine.io `Server.errors` / `Server.errorMessages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: the `transport` parameter names no offered transport.
    UnknownTransport = 0,
    /// 1: the `sid` is not (or no longer) known.
    UnknownSid = 1,
    /// 2: a handshake with a method other than GET.
    BadHandshakeMethod = 2,
    /// 3: anything else wrong with the request.
    BadRequest = 3,
    /// 4: refused by policy.
    Forbidden = 4,
    /// 5: `EIO` missing or not 4.
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    /// The reference server's message for the code.
    pub const fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

pub use session::{CloseCause, CloseMode, Event, Limits, Session, State, TransportKind, Via};

/// Generates a session id: 128 bits from the operating system's CSPRNG
/// (through `rand`'s thread-local generator, seeded from it), base64url
/// without padding (22 characters).
pub fn generate_sid() -> String {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
