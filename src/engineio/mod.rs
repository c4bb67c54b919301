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

/// Which node of a cluster made a session: 48 random bits per server
/// process, put in front of every sid it makes, so that any node can tell
/// where a session lives from its sid alone (`[cluster] sticky = false`
/// forwards a request there) without asking anyone. Random rather than
/// configured: a restarted node is another node, and its old sessions are
/// gone with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeTag([u8; NodeTag::BYTES]);

impl NodeTag {
    const BYTES: usize = 6;
    /// Characters of the tag at the start of a sid (base64url of 6 bytes).
    pub const LEN: usize = 8;
    /// Characters of a tagged sid: the tag, then [`generate_sid`]'s 22.
    pub const SID_LEN: usize = Self::LEN + 22;

    /// A new random tag, one that starts with a letter or a digit: a sid
    /// never starts with `-` (which a command line takes for an option,
    /// as in `roomcast audit --sid …`).
    pub fn generate() -> Self {
        loop {
            let tag = Self(rand::random());
            // base64url's 62 and 63 are `-` and `_`: the top 6 bits.
            if tag.0[0] >> 2 < 62 {
                return tag;
            }
        }
    }

    /// A new session id of this node: the tag, then 128 random bits
    /// (30 characters of base64url).
    pub fn sid(&self) -> String {
        let mut sid = self.to_string();
        sid.push_str(&generate_sid());
        sid
    }

    /// The tag a sid starts with, if it has the shape of one this server
    /// makes (a sid from elsewhere, or made up, has none).
    pub fn of_sid(sid: &str) -> Option<Self> {
        if sid.len() != Self::SID_LEN {
            return None;
        }
        Self::parse(sid.get(..Self::LEN)?)
    }

    /// The tag written by its `Display` (8 characters of base64url).
    pub fn parse(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let mut bytes = [0u8; Self::BYTES];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(text, &mut bytes)
            .ok()?;
        (n == Self::BYTES && text.len() == Self::LEN).then_some(Self(bytes))
    }
}

impl std::fmt::Display for NodeTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sid_names_the_node_that_made_it() {
        let (a, b) = (NodeTag::generate(), NodeTag::generate());
        let sid = a.sid();
        assert_eq!(sid.len(), NodeTag::SID_LEN);
        assert_eq!(NodeTag::of_sid(&sid), Some(a));
        assert_ne!(NodeTag::of_sid(&b.sid()), Some(a));
        assert_eq!(NodeTag::parse(&a.to_string()), Some(a));
        assert!(sid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        for _ in 0..1000 {
            assert!(NodeTag::generate()
                .sid()
                .starts_with(|c: char| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn a_sid_of_another_shape_names_no_node() {
        assert_eq!(NodeTag::of_sid(&generate_sid()), None);
        assert_eq!(NodeTag::of_sid(""), None);
        assert_eq!(NodeTag::of_sid(&"é".repeat(15)), None);
        assert_eq!(NodeTag::of_sid(&"*".repeat(NodeTag::SID_LEN)), None);
        assert_eq!(NodeTag::parse("AAAAAAA"), None);
    }
}
