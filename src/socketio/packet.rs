//! Socket.IO v5 packets: decoding what clients send, as strictly as the
//! reference parser (socket.io-parser `decodeString` / `isPayloadValid`) and
//! stricter where the protocol leaves room, and encoding what the server
//! sends.
//!
//! Spec: `socketio/socket.io-protocol`, Readme.md "Packet encoding":
//! `<type>[<attachments>-][<namespace>,][<ack id>][JSON payload]`. Every
//! packet travels as an Engine.IO message, so the encoders here return the
//! whole Engine.IO frame text, `4` included: a packet is encoded once and
//! the same bytes go to every recipient.

use serde_json::Value;
use thiserror::Error;

/// The main namespace.
pub const MAIN_NAMESPACE: &str = "/";

/// Event names a client may not emit (socket.io `RESERVED_EVENTS`).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Largest ack id: JavaScript's `Number.MAX_SAFE_INTEGER`, so ids survive a
/// round trip through a JavaScript client.
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// Packet types (spec "Packet types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// 0: connect to a namespace (client) / accepted (server).
    Connect = 0,
    /// 1: leave a namespace.
    Disconnect = 1,
    /// 2: an event.
    Event = 2,
    /// 3: an acknowledgement.
    Ack = 3,
    /// 4: connection to a namespace refused (server only).
    ConnectError = 4,
    /// 5: an event with binary attachments.
    BinaryEvent = 5,
    /// 6: an acknowledgement with binary attachments.
    BinaryAck = 6,
}

impl PacketType {
    fn from_digit(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// Whether binary attachments follow.
    pub const fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// A decoded packet (binary attachments are counted here and collected by
/// [`super::Decoder`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Type.
    pub kind: PacketType,
    /// Namespace, `/` when absent.
    pub nsp: String,
    /// Ack id.
    pub id: Option<u64>,
    /// JSON payload.
    pub data: Option<Value>,
    /// Binary attachments announced (binary types only).
    pub attachments: usize,
}

/// Why a packet from a client is refused. Any of these closes the
/// connection with `parse error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Empty packet.
    #[error("empty packet")]
    Empty,
    /// Type outside 0–6.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A type a client may not send (CONNECT_ERROR).
    #[error("packet type {0:?} is not accepted from a client")]
    WrongDirection(PacketType),
    /// Bad attachment count.
    #[error("illegal attachments")]
    IllegalAttachments,
    /// Attachments of more bytes together than allowed.
    #[error("attachments of more than {0} bytes in all")]
    AttachmentsTooLarge(usize),
    /// More attachments than allowed.
    #[error("{0} attachments, more than the {1} allowed")]
    TooManyAttachments(usize, usize),
    /// A namespace that is too long or not made of printable characters.
    #[error("invalid namespace")]
    InvalidNamespace,
    /// An ack id that is not an integer in range, or one where none belongs.
    #[error("invalid ack id")]
    InvalidAckId,
    /// Payload missing, not JSON, or of the wrong shape for the type.
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
    /// A placeholder that is not exactly `{"_placeholder":true,"num":n}` with
    /// `n` an attachment index.
    #[error("invalid binary placeholder")]
    InvalidPlaceholder,
    /// A binary message arrived while no attachment was awaited.
    #[error("binary data when no attachment was expected")]
    UnexpectedBinary,
    /// A text message arrived while attachments were awaited.
    #[error("text packet while binary attachments were expected")]
    UnexpectedText,
}

/// Bounds on what one packet may ask for.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Binary attachments per packet.
    pub max_attachments: usize,
    /// Bytes in a namespace name.
    pub max_namespace_len: usize,
    /// Bytes of one packet's attachments together.
    pub max_attachment_bytes: usize,
}

/// Decodes one packet from the text of an Engine.IO message.
pub fn decode(s: &str, limits: &DecodeLimits) -> Result<Packet, ParseError> {
    let bytes = s.as_bytes();
    let first = *bytes.first().ok_or(ParseError::Empty)?;
    let kind =
        PacketType::from_digit(first).ok_or_else(|| ParseError::UnknownType(s.chars().next().unwrap_or('\u{fffd}')))?;
    if kind == PacketType::ConnectError {
        return Err(ParseError::WrongDirection(kind));
    }
    let mut i = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 6 || bytes.get(i + digits) != Some(&b'-') {
            return Err(ParseError::IllegalAttachments);
        }
        // unwrap: 1–6 ASCII digits always parse.
        attachments = s[i..i + digits].parse::<usize>().unwrap();
        if attachments > limits.max_attachments {
            return Err(ParseError::TooManyAttachments(attachments, limits.max_attachments));
        }
        i += digits + 1;
    }

    let mut nsp = MAIN_NAMESPACE;
    if bytes.get(i) == Some(&b'/') {
        let end = s[i..].find(',').map_or(s.len(), |n| i + n);
        nsp = &s[i..end];
        if nsp.len() > limits.max_namespace_len || nsp.chars().any(char::is_control) {
            return Err(ParseError::InvalidNamespace);
        }
        i = (end + 1).min(s.len());
    }

    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let id = if digits > 0 {
        let id = s[i..i + digits].parse::<u64>().map_err(|_| ParseError::InvalidAckId)?;
        if id > MAX_ACK_ID {
            return Err(ParseError::InvalidAckId);
        }
        i += digits;
        Some(id)
    } else {
        None
    };

    let data = if i < s.len() {
        Some(serde_json::from_str::<Value>(&s[i..]).map_err(|_| ParseError::InvalidPayload("not JSON"))?)
    } else {
        None
    };

    let packet = Packet {
        kind,
        nsp: nsp.to_owned(),
        id,
        data,
        attachments,
    };
    validate(&packet)?;
    Ok(packet)
}

/// The payload shape each type requires (socket.io-parser `isPayloadValid`,
/// and an EVENT must have a payload at all).
fn validate(p: &Packet) -> Result<(), ParseError> {
    use PacketType::*;
    match p.kind {
        Connect | Disconnect if p.id.is_some() => return Err(ParseError::InvalidAckId),
        Ack | BinaryAck if p.id.is_none() => return Err(ParseError::InvalidAckId),
        _ => {}
    }
    match (p.kind, &p.data) {
        (Connect, None) | (Connect, Some(Value::Object(_))) => Ok(()),
        (Connect, Some(_)) => Err(ParseError::InvalidPayload("CONNECT data must be an object")),
        (Disconnect, None) => Ok(()),
        (Disconnect, Some(_)) => Err(ParseError::InvalidPayload("DISCONNECT takes no data")),
        (Event | BinaryEvent, Some(Value::Array(args))) => match args.first() {
            Some(Value::String(name)) if !RESERVED_EVENTS.contains(&name.as_str()) => Ok(()),
            Some(Value::String(_)) => Err(ParseError::InvalidPayload("reserved event name")),
            _ => Err(ParseError::InvalidPayload("an event starts with its name")),
        },
        (Event | BinaryEvent, _) => Err(ParseError::InvalidPayload("EVENT data must be an array")),
        (Ack | BinaryAck, Some(Value::Array(_))) => Ok(()),
        (Ack | BinaryAck, _) => Err(ParseError::InvalidPayload("ACK data must be an array")),
        (ConnectError, _) => Err(ParseError::WrongDirection(ConnectError)),
    }
}

/// Checks every binary placeholder in `data`: exactly
/// `{"_placeholder":true,"num":n}` with `n < attachments`.
pub fn check_placeholders(data: &Value, attachments: usize) -> Result<(), ParseError> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|v| check_placeholders(v, attachments)),
        Value::Object(map) if map.contains_key("_placeholder") => {
            let exact = map.len() == 2
                && map.get("_placeholder") == Some(&Value::Bool(true))
                && map
                    .get("num")
                    .and_then(Value::as_u64)
                    .is_some_and(|n| (n as usize) < attachments);
            if exact {
                Ok(())
            } else {
                Err(ParseError::InvalidPlaceholder)
            }
        }
        Value::Object(map) => map.values().try_for_each(|v| check_placeholders(v, attachments)),
        _ => Ok(()),
    }
}

/// Encodes a packet as the text of an Engine.IO message frame (`4` first).
pub fn encode(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<&Value>, attachments: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(32);
    out.push('4');
    out.push((b'0' + kind as u8) as char);
    if kind.is_binary() {
        // unwrap: writing to a String cannot fail.
        write!(out, "{attachments}-").unwrap();
    }
    if nsp != MAIN_NAMESPACE {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        // unwrap: writing to a String cannot fail.
        write!(out, "{id}").unwrap();
    }
    if let Some(data) = data {
        // unwrap: a Value always serializes.
        out.push_str(&serde_json::to_string(data).unwrap());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_attachments: 10,
        max_namespace_len: 64,
        max_attachment_bytes: 1000,
    };

    fn ok(s: &str) -> Packet {
        decode(s, &LIMITS).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn spec_examples_decode() {
        let p = ok("0");
        assert_eq!((p.kind, p.nsp.as_str(), p.data), (PacketType::Connect, "/", None));
        let p = ok(r#"0/admin,{"token":"x"}"#);
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token": "x"})));
        assert_eq!(ok("0/random").nsp, "/random");
        assert_eq!(ok(r#"2["foo"]"#).data, Some(json!(["foo"])));
        assert_eq!(ok(r#"2/admin,["bar"]"#).nsp, "/admin");
        let p = ok(r#"51-["baz",{"_placeholder":true,"num":0}]"#);
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        let p = ok(r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
        assert_eq!((p.nsp.as_str(), p.attachments), ("/admin", 2));
        assert_eq!(ok(r#"212["foo"]"#).id, Some(12));
        let p = ok(r#"3/admin,13["bar"]"#);
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(13)));
        let p = ok(r#"61-15["bar",{"_placeholder":true,"num":0}]"#);
        assert_eq!((p.kind, p.id, p.attachments), (PacketType::BinaryAck, Some(15), 1));
        assert_eq!(ok("1").kind, PacketType::Disconnect);
        assert_eq!(ok("1/admin,").nsp, "/admin");
    }

    #[test]
    fn spec_examples_encode() {
        assert_eq!(encode(PacketType::Connect, "/", None, None, 0), "40");
        assert_eq!(
            encode(PacketType::Connect, "/admin", None, Some(&json!({"sid": "x"})), 0),
            r#"40/admin,{"sid":"x"}"#
        );
        assert_eq!(
            encode(
                PacketType::ConnectError,
                "/",
                None,
                Some(&json!({"message": "Not authorized"})),
                0
            ),
            r#"44{"message":"Not authorized"}"#
        );
        assert_eq!(
            encode(PacketType::Event, "/", Some(12), Some(&json!(["foo"])), 0),
            r#"4212["foo"]"#
        );
        assert_eq!(
            encode(PacketType::BinaryEvent, "/admin", None, Some(&json!(["baz"])), 2),
            r#"452-/admin,["baz"]"#
        );
        assert_eq!(
            encode(PacketType::Ack, "/admin", Some(13), Some(&json!(["bar"])), 0),
            r#"43/admin,13["bar"]"#
        );
        assert_eq!(encode(PacketType::Disconnect, "/admin", None, None, 0), "41/admin,");
    }

    #[test]
    fn invalid_packets_are_refused() {
        let err = |s: &str| decode(s, &LIMITS).unwrap_err();
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("abc"), ParseError::UnknownType('a'));
        assert_eq!(err("7"), ParseError::UnknownType('7'));
        assert!(matches!(err("2{}"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2[]"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2[1]"), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2["disconnect"]"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2abc["message"]"#), ParseError::InvalidPayload(_)));
        assert_eq!(err(r#"299999999999999999999["a"]"#), ParseError::InvalidAckId);
        assert_eq!(err(r#"29007199254740992["a"]"#), ParseError::InvalidAckId);
        assert!(matches!(err(r#"0"str""#), ParseError::InvalidPayload(_)));
        assert!(matches!(err("1{}"), ParseError::InvalidPayload(_)));
        assert_eq!(err("4{}"), ParseError::WrongDirection(PacketType::ConnectError));
        assert_eq!(err(r#"5["a"]"#), ParseError::IllegalAttachments);
        assert_eq!(err(r#"5x-["a"]"#), ParseError::IllegalAttachments);
        assert_eq!(err(r#"511-["a"]"#), ParseError::TooManyAttachments(11, 10));
        assert_eq!(err("3[]"), ParseError::InvalidAckId);
        assert_eq!(err("05{}"), ParseError::InvalidAckId);
        assert_eq!(err(&format!("0/{}", "a".repeat(100))), ParseError::InvalidNamespace);
    }

    #[test]
    fn relayed_numbers_keep_their_value() {
        // Found by fuzz/socketio_packet (corpus/socketio_packet/float-round-trip):
        // without serde_json's float_roundtrip, "1.7976931348623157" parsed
        // to the double next to it, so an event relayed by the server
        // (decoded, encoded again) changed its numbers.
        let text = r#"2["e",1.7976931348623157,0.1,5e-324,1e308,-0.0,18446744073709551616]"#;
        let p = ok(text);
        let args = p.data.as_ref().unwrap().as_array().unwrap();
        assert_eq!(args[1].as_f64(), Some(1.797_693_134_862_315_7));
        assert_eq!(args[3].as_f64(), Some(5e-324));
        let again = encode(p.kind, &p.nsp, p.id, p.data.as_ref(), 0);
        assert_eq!(ok(&again[1..]), p);
        assert_eq!(encode(p.kind, "/", None, ok(&again[1..]).data.as_ref(), 0), again);
    }

    #[test]
    fn placeholders_must_be_exact_and_in_range() {
        let good = json!(["a", {"_placeholder": true, "num": 1}, {"x": [{"_placeholder": true, "num": 0}]}]);
        assert_eq!(check_placeholders(&good, 2), Ok(()));
        for bad in [
            json!([{"_placeholder": true, "num": 2}]),
            json!([{"_placeholder": true, "num": -1}]),
            json!([{"_placeholder": true, "num": "0"}]),
            json!([{"_placeholder": false, "num": 0}]),
            json!([{"_placeholder": true, "num": 0, "extra": 1}]),
            json!([{"_placeholder": true}]),
        ] {
            assert_eq!(
                check_placeholders(&bad, 2),
                Err(ParseError::InvalidPlaceholder),
                "{bad}"
            );
        }
    }
}
