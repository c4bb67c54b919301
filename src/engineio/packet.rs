//! Engine.IO v4 packets: the seven packet types, decoding what clients send and
//! the encoded frames the server sends.
//!
//! Spec: `socketio/engine.io-protocol`, README.md, "Protocol" and "Packet
//! encoding". Outgoing packets are kept in their WebSocket form ([`Frame`]):
//! a text frame is the packet-type digit followed by the data, a binary frame
//! is a binary message as is. The polling encoding is derived from that form
//! (see [`super::payload`]), so a broadcast is encoded once and the same bytes
//! serve every recipient on either transport.

use bytes::Bytes;
use bytestring::ByteString;
use thiserror::Error;

/// Packet type ids (spec "Protocol": open 0 … noop 6).
pub mod kind {
    /// `open`: the handshake, server to client.
    pub const OPEN: u8 = b'0';
    /// `close`: a transport can be closed.
    pub const CLOSE: u8 = b'1';
    /// `ping`: heartbeat (server to client in v4) and the upgrade probe.
    pub const PING: u8 = b'2';
    /// `pong`: heartbeat answer and the probe answer.
    pub const PONG: u8 = b'3';
    /// `message`: application data.
    pub const MESSAGE: u8 = b'4';
    /// `upgrade`: completes the upgrade to WebSocket.
    pub const UPGRADE: u8 = b'5';
    /// `noop`: ends a pending poll during an upgrade.
    pub const NOOP: u8 = b'6';
}

/// The data of the upgrade probe (`2probe` / `3probe`, spec "Upgrade").
pub const PROBE: &str = "probe";

/// An encoded outgoing packet, ready for a WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame: packet type digit, then the data.
    Text(ByteString),
    /// A binary message packet (type 4 implied), sent as is.
    Binary(Bytes),
}

impl Frame {
    /// `2`: a heartbeat ping.
    pub fn ping() -> Frame {
        Frame::Text(ByteString::from_static("2"))
    }
    /// `3probe`: the answer to an upgrade probe.
    pub fn pong_probe() -> Frame {
        Frame::Text(ByteString::from_static("3probe"))
    }
    /// `6`: ends a pending poll during an upgrade.
    pub fn noop() -> Frame {
        Frame::Text(ByteString::from_static("6"))
    }
    /// `1`: the server closes the session.
    pub fn close() -> Frame {
        Frame::Text(ByteString::from_static("1"))
    }
    /// `0{…}`: the open packet with its JSON handshake data.
    pub fn open(json: &str) -> Frame {
        Frame::Text(prefixed(kind::OPEN, json))
    }
    /// `4…`: a text message.
    pub fn message_text(data: &str) -> Frame {
        Frame::Text(prefixed(kind::MESSAGE, data))
    }
    /// A binary message.
    pub fn message_binary(data: Bytes) -> Frame {
        Frame::Binary(data)
    }

    /// The size this frame counts for in an outgoing buffer.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Never true for a valid frame (a text frame has at least its type).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prefixed(kind: u8, data: &str) -> ByteString {
    let mut s = String::with_capacity(1 + data.len());
    s.push(kind as char);
    s.push_str(data);
    ByteString::from(s)
}

/// The data of a message packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// UTF-8 text.
    Text(ByteString),
    /// Bytes (a binary WebSocket frame, or `b<base64>` in a polling payload).
    Binary(Bytes),
}

/// A packet received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: never valid from a client; decoded so the session can say so.
    Open,
    /// `1`: the client closes the session.
    Close,
    /// `2…`: a ping; from a v4 client only `2probe` during an upgrade is valid.
    Ping(ByteString),
    /// `3…`: a heartbeat answer.
    Pong(ByteString),
    /// `4…` or binary: application data.
    Message(Payload),
    /// `5`: completes an upgrade.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why input from a client did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// An empty packet (no type).
    #[error("empty packet")]
    Empty,
    /// A type character outside `0`–`6` (and not the binary prefix `b`).
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// `b` followed by something that is not standard base64.
    #[error("invalid base64 after the binary prefix")]
    InvalidBase64,
    /// The body of a polling request is not UTF-8.
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    /// More packets in one polling payload than configured.
    #[error("more than {0} packets in one payload")]
    TooManyPackets(usize),
}

/// Decodes one packet from a WebSocket text frame (or one record of a polling
/// payload, base64 binary included when `allow_base64` is set).
pub fn decode_text(frame: &ByteString, allow_base64: bool) -> Result<Packet, DecodeError> {
    let first = *frame.as_bytes().first().ok_or(DecodeError::Empty)?;
    if allow_base64 && first == b'b' {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&frame.as_bytes()[1..])
            .map_err(|_| DecodeError::InvalidBase64)?;
        return Ok(Packet::Message(Payload::Binary(Bytes::from(decoded))));
    }
    let data = || frame.slice_ref(&frame[1..]);
    Ok(match first {
        kind::OPEN => Packet::Open,
        kind::CLOSE => Packet::Close,
        kind::PING => Packet::Ping(data()),
        kind::PONG => Packet::Pong(data()),
        kind::MESSAGE => Packet::Message(Payload::Text(data())),
        kind::UPGRADE => Packet::Upgrade,
        kind::NOOP => Packet::Noop,
        _ => {
            // Report the character, not a byte of it.
            let c = frame.chars().next().unwrap_or('\u{fffd}');
            return Err(DecodeError::UnknownType(c));
        }
    })
}

/// A binary WebSocket frame is always a message packet.
pub fn decode_binary(frame: Bytes) -> Packet {
    Packet::Message(Payload::Binary(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> ByteString {
        ByteString::from_static(s)
    }

    #[test]
    fn spec_examples_decode() {
        // README "WebSocket" example and the heartbeat/upgrade packets.
        assert_eq!(
            decode_text(&text("4hello"), false),
            Ok(Packet::Message(Payload::Text(text("hello"))))
        );
        assert_eq!(decode_text(&text("2probe"), false), Ok(Packet::Ping(text("probe"))));
        assert_eq!(decode_text(&text("3"), false), Ok(Packet::Pong(text(""))));
        assert_eq!(decode_text(&text("5"), false), Ok(Packet::Upgrade));
        assert_eq!(decode_text(&text("6"), false), Ok(Packet::Noop));
        assert_eq!(decode_text(&text("1"), false), Ok(Packet::Close));
        assert_eq!(decode_text(&text("0"), false), Ok(Packet::Open));
        assert_eq!(
            decode_text(&text("bAQIDBA=="), true),
            Ok(Packet::Message(Payload::Binary(Bytes::from_static(&[1, 2, 3, 4]))))
        );
    }

    #[test]
    fn invalid_packets_are_errors() {
        assert_eq!(decode_text(&text(""), false), Err(DecodeError::Empty));
        assert_eq!(decode_text(&text("abc"), false), Err(DecodeError::UnknownType('a')));
        assert_eq!(decode_text(&text("9"), false), Err(DecodeError::UnknownType('9')));
        assert_eq!(decode_text(&text("é"), false), Err(DecodeError::UnknownType('é')));
        // `b` is only the binary prefix inside a polling payload.
        assert_eq!(decode_text(&text("bAQ=="), false), Err(DecodeError::UnknownType('b')));
        assert_eq!(decode_text(&text("b!!"), true), Err(DecodeError::InvalidBase64));
    }

    #[test]
    fn frames_encode_as_the_spec_shows() {
        assert_eq!(Frame::message_text("hello"), Frame::Text(text("4hello")));
        assert_eq!(Frame::ping(), Frame::Text(text("2")));
        assert_eq!(Frame::pong_probe(), Frame::Text(text("3probe")));
        assert_eq!(Frame::noop(), Frame::Text(text("6")));
        assert_eq!(Frame::close(), Frame::Text(text("1")));
        assert_eq!(Frame::open("{}"), Frame::Text(text("0{}")));
    }
}
