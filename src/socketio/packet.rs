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

use std::ops::Range;

use bytestring::ByteString;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
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

/// Deepest nesting of arrays and objects the placeholder check walks
/// (serde_json's own limit for a parsed value).
const MAX_DEPTH: usize = 128;

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

/// A packet's JSON payload as the client wrote it: the text itself (a
/// slice of the Engine.IO message, not a copy) and, for an array, where
/// each element's text is. The server reads what it needs from it (an
/// event's name, a `publish`'s room) and relays the rest as it is, so a
/// subscriber gets the publisher's text byte for byte: keys in their order,
/// escapes and numbers as written, and texts that JSON's grammar allows but
/// `serde_json::Value` refuses (a lone surrogate, an integer of 400 digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    text: ByteString,
    /// Where each element of an array is in `text`; `None`: not an array.
    items: Option<Vec<Range<usize>>>,
}

impl Data {
    /// The payload `text`, which must be one JSON value.
    pub fn new(text: ByteString) -> Result<Self, ParseError> {
        let not_json = |_| ParseError::InvalidPayload("not JSON");
        let items = if first_byte(&text) == Some(b'[') {
            let items: Vec<&RawValue> = serde_json::from_str(&text).map_err(not_json)?;
            let base = text.as_ptr() as usize;
            let ranges = items.iter().map(|v| {
                let start = v.get().as_ptr() as usize - base;
                start..start + v.get().len()
            });
            Some(ranges.collect())
        } else {
            serde_json::from_str::<&RawValue>(&text).map_err(not_json)?;
            None
        };
        Ok(Self { text, items })
    }

    /// The same payload in an allocation of its own. The text received is
    /// a slice of the buffer its message was read into; a packet held while
    /// its attachments arrive would keep that whole buffer (which cannot
    /// then be reused for the next reads) for up to
    /// `limits.attachment_timeout_ms`, uncounted by the input budget.
    pub fn detached(self) -> Self {
        Self {
            text: ByteString::from(self.text.to_string()),
            items: self.items,
        }
    }

    /// The JSON text, as received.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The JSON text as the shared slice of the message it came in.
    pub fn bytes(&self) -> &ByteString {
        &self.text
    }

    /// Whether the payload is a JSON array.
    pub fn is_array(&self) -> bool {
        self.items.is_some()
    }

    /// Whether the payload is a JSON object.
    pub fn is_object(&self) -> bool {
        first_byte(&self.text) == Some(b'{')
    }

    /// The number of an array's elements (0 for anything else).
    pub fn len(&self) -> usize {
        self.items.as_ref().map_or(0, Vec::len)
    }

    /// Whether the payload is an empty array, or not an array.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An array's element `i`, as written.
    pub fn arg(&self, i: usize) -> Option<&str> {
        let range = self.items.as_ref()?.get(i)?;
        Some(&self.text[range.clone()])
    }

    /// An array's elements from `from` on, as written with the commas
    /// between them (empty when there are none): what a relay puts after
    /// elements of its own.
    pub fn rest(&self, from: usize) -> &str {
        match self.items.as_deref() {
            Some([.., last]) if from < self.len() => {
                // unwrap: `from` is an index of `items`.
                let first = self.items.as_ref().unwrap()[from].start;
                &self.text[first..last.end]
            }
            _ => "",
        }
    }
}

/// The first byte of a JSON text after its leading whitespace.
fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
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
    /// The event's name (EVENT and BINARY_EVENT: the first argument,
    /// unescaped).
    pub event: Option<String>,
    /// JSON payload, as written.
    pub data: Option<Data>,
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

/// Decodes one packet from the text of an Engine.IO message. The payload
/// stays a slice of `s` ([`Data`]).
pub fn decode(s: &ByteString, limits: &DecodeLimits) -> Result<Packet, ParseError> {
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
        Some(Data::new(s.slice_ref(&s[i..]))?)
    } else {
        None
    };

    let mut packet = Packet {
        kind,
        nsp: nsp.to_owned(),
        id,
        event: None,
        data,
        attachments,
    };
    packet.event = validate(&packet)?;
    Ok(packet)
}

/// The payload shape each type requires (socket.io-parser `isPayloadValid`,
/// and an EVENT must have a payload at all); an event's name.
fn validate(p: &Packet) -> Result<Option<String>, ParseError> {
    use PacketType::*;
    match p.kind {
        Connect | Disconnect if p.id.is_some() => return Err(ParseError::InvalidAckId),
        Ack | BinaryAck if p.id.is_none() => return Err(ParseError::InvalidAckId),
        _ => {}
    }
    let data = p.data.as_ref();
    match (p.kind, data) {
        (Connect, None) => Ok(None),
        // The one payload the server reads as a whole (the JWT, the
        // connect hook): it must be a value serde_json can hold.
        (Connect, Some(d)) if d.is_object() => match serde_json::from_str::<serde_json::Map<String, Value>>(d.text()) {
            Ok(_) => Ok(None),
            Err(_) => Err(ParseError::InvalidPayload("not JSON")),
        },
        (Connect, Some(_)) => Err(ParseError::InvalidPayload("CONNECT data must be an object")),
        (Disconnect, None) => Ok(None),
        (Disconnect, Some(_)) => Err(ParseError::InvalidPayload("DISCONNECT takes no data")),
        (Event | BinaryEvent, Some(d)) if d.is_array() => match d.arg(0).map(serde_json::from_str::<String>) {
            Some(Ok(name)) if !RESERVED_EVENTS.contains(&name.as_str()) => Ok(Some(name)),
            Some(Ok(_)) => Err(ParseError::InvalidPayload("reserved event name")),
            _ => Err(ParseError::InvalidPayload("an event starts with its name")),
        },
        (Event | BinaryEvent, _) => Err(ParseError::InvalidPayload("EVENT data must be an array")),
        (Ack | BinaryAck, Some(d)) if d.is_array() => Ok(None),
        (Ack | BinaryAck, _) => Err(ParseError::InvalidPayload("ACK data must be an array")),
        (ConnectError, _) => Err(ParseError::WrongDirection(ConnectError)),
    }
}

/// Checks every binary placeholder in the JSON `text`: exactly
/// `{"_placeholder":true,"num":n}` (members in either order) with
/// `n < attachments`. Reads the text as written, without making a value of
/// it: only the arrays' and objects' structure and the members of objects
/// with a `_placeholder` key are looked at, so strings and numbers that
/// `serde_json::Value` cannot hold pass.
pub fn check_placeholders(text: &str, attachments: usize) -> Result<(), ParseError> {
    check_value(text, attachments, 0)
}

fn check_value(text: &str, attachments: usize, depth: usize) -> Result<(), ParseError> {
    let not_json = |_| ParseError::InvalidPayload("not JSON");
    match first_byte(text) {
        Some(b'[' | b'{') if depth >= MAX_DEPTH => Err(ParseError::InvalidPayload("nested too deep")),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(not_json)?;
            items
                .iter()
                .try_for_each(|item| check_value(item.get(), attachments, depth + 1))
        }
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text).map_err(not_json)?;
            if !members.iter().any(|(key, _)| *key == Key::Placeholder) {
                return members
                    .iter()
                    .try_for_each(|(_, value)| check_value(value.get(), attachments, depth + 1));
            }
            let has = |key: Key, ok: &dyn Fn(&str) -> bool| members.iter().any(|(k, v)| *k == key && ok(v.get()));
            let index = |num: &str| {
                num.parse::<i64>()
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .is_some_and(|n| n < attachments)
            };
            if members.len() == 2 && has(Key::Placeholder, &|v| v == "true") && has(Key::Num, &index) {
                Ok(())
            } else {
                Err(ParseError::InvalidPlaceholder)
            }
        }
        _ => Ok(()),
    }
}

/// The members of a JSON object as written: keys that matter to a
/// placeholder, and each value's text.
struct Members<'a>(Vec<(Key, &'a RawValue)>);

/// An object key, as far as placeholders are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Placeholder,
    Num,
    Other,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key_seed(KeySeed::<Key>::new())? {
                    members.push((key, map.next_value::<&RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl MemberKey for Key {
    fn of(key: &[u8]) -> Self {
        match key {
            b"_placeholder" => Key::Placeholder,
            b"num" => Key::Num,
            _ => Key::Other,
        }
    }
}

/// What an object key means to the code reading the object, told from its
/// unescaped bytes.
pub trait MemberKey: Sized {
    /// The meaning of `key`.
    fn of(key: &[u8]) -> Self;
}

/// Reads an object key as bytes (unescaped, lone surrogates allowed) into
/// a `K`: `map.next_key_seed(KeySeed::<K>::new())` in a map visitor.
pub struct KeySeed<K>(std::marker::PhantomData<K>);

impl<K> KeySeed<K> {
    /// A seed for one key.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<K> Default for KeySeed<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'de, K: MemberKey> DeserializeSeed<'de> for KeySeed<K> {
    type Value = K;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de, K: MemberKey> Visitor<'de> for KeySeed<K> {
    type Value = K;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<K, E> {
        Ok(K::of(key))
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<K, E> {
        Ok(K::of(key.as_bytes()))
    }
}

/// The header of a packet's Engine.IO frame (`4`, the type, the attachment
/// count, the namespace, the ack id), with room for `more` bytes.
fn header(kind: PacketType, nsp: &str, id: Option<u64>, attachments: usize, more: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(24 + nsp.len() + more);
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
    out
}

/// The length of the header [`encode_raw`] and [`encode_event`] write
/// before a packet's payload.
pub fn header_len(kind: PacketType, nsp: &str, id: Option<u64>, attachments: usize) -> usize {
    let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let mut len = 2;
    if kind.is_binary() {
        len += digits(attachments as u64) + 1;
    }
    if nsp != MAIN_NAMESPACE {
        len += nsp.len() + 1;
    }
    len + id.map_or(0, digits)
}

/// Encodes a packet as the text of an Engine.IO message frame (`4` first).
pub fn encode(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<&Value>, attachments: usize) -> String {
    match data {
        // unwrap: a Value always serializes.
        Some(data) => encode_raw(kind, nsp, id, &serde_json::to_string(data).unwrap(), attachments),
        None => encode_raw(kind, nsp, id, "", attachments),
    }
}

/// Encodes a packet whose payload is the JSON `text` as it is (empty: no
/// payload): the header, then the text.
pub fn encode_raw(kind: PacketType, nsp: &str, id: Option<u64>, text: &str, attachments: usize) -> String {
    let mut out = header(kind, nsp, id, attachments, text.len());
    out.push_str(text);
    out
}

/// Encodes an event (or an ack) whose arguments are `name` (written as a
/// JSON string) and then `rest`, the JSON text of further arguments as it
/// is, comma separated (empty: none): `4<type>…["name",rest]`.
pub fn encode_event(
    kind: PacketType,
    nsp: &str,
    id: Option<u64>,
    name: &str,
    rest: &str,
    attachments: usize,
) -> String {
    let mut out = header(kind, nsp, id, attachments, name.len() + rest.len() + 8);
    out.push('[');
    // unwrap: a str always serializes.
    out.push_str(&serde_json::to_string(name).unwrap());
    if !rest.is_empty() {
        out.push(',');
        out.push_str(rest);
    }
    out.push(']');
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
        decode(&s.into(), &LIMITS).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn text(p: &Packet) -> Option<&str> {
        p.data.as_ref().map(Data::text)
    }

    #[test]
    fn spec_examples_decode() {
        let p = ok("0");
        assert_eq!((p.kind, p.nsp.as_str(), text(&p)), (PacketType::Connect, "/", None));
        let p = ok(r#"0/admin,{"token":"x"}"#);
        assert_eq!(p.nsp, "/admin");
        assert_eq!(text(&p), Some(r#"{"token":"x"}"#));
        assert_eq!(ok("0/random").nsp, "/random");
        let p = ok(r#"2["foo"]"#);
        assert_eq!((text(&p), p.event.as_deref()), (Some(r#"["foo"]"#), Some("foo")));
        assert_eq!(ok(r#"2/admin,["bar"]"#).nsp, "/admin");
        let p = ok(r#"51-["baz",{"_placeholder":true,"num":0}]"#);
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        let p = ok(r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
        assert_eq!((p.nsp.as_str(), p.attachments), ("/admin", 2));
        assert_eq!(ok(r#"212["foo"]"#).id, Some(12));
        let p = ok(r#"3/admin,13["bar"]"#);
        assert_eq!((p.kind, p.id, p.event), (PacketType::Ack, Some(13), None));
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
        assert_eq!(
            encode_raw(PacketType::Event, "/admin", Some(7), r#"["a",{"z":1,"a":2}]"#, 0),
            r#"42/admin,7["a",{"z":1,"a":2}]"#
        );
        assert_eq!(
            encode_event(PacketType::BinaryEvent, "/", None, "b\"", r#"{"z":1},2"#, 1),
            r#"451-["b\"",{"z":1},2]"#
        );
        assert_eq!(encode_event(PacketType::Event, "/", None, "e", "", 0), r#"42["e"]"#);
        for (kind, nsp, id, n) in [
            (PacketType::Event, "/", None, 0),
            (PacketType::BinaryEvent, "/admin", Some(0), 10),
            (PacketType::BinaryAck, "/", Some(MAX_ACK_ID), 9),
            (PacketType::Ack, "/x", Some(10), 0),
        ] {
            assert_eq!(header_len(kind, nsp, id, n), encode_raw(kind, nsp, id, "", n).len());
        }
    }

    #[test]
    fn invalid_packets_are_refused() {
        let err = |s: &str| decode(&s.into(), &LIMITS).unwrap_err();
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("abc"), ParseError::UnknownType('a'));
        assert_eq!(err("7"), ParseError::UnknownType('7'));
        assert!(matches!(err("2{}"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2[]"), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2[1]"), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2["disconnect"]"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2abc["message"]"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2["a",]"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2["a"] x"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"2["a","\x"]"#), ParseError::InvalidPayload(_)));
        assert!(matches!(err("2[\"a\",\"\u{1}\"]"), ParseError::InvalidPayload(_)));
        assert!(
            matches!(err(r#"2["\ud83d"]"#), ParseError::InvalidPayload(_)),
            "no name"
        );
        assert_eq!(err(r#"299999999999999999999["a"]"#), ParseError::InvalidAckId);
        assert_eq!(err(r#"29007199254740992["a"]"#), ParseError::InvalidAckId);
        assert!(matches!(err(r#"0"str""#), ParseError::InvalidPayload(_)));
        assert!(matches!(err(r#"0{"a":"\ud83d"}"#), ParseError::InvalidPayload(_)));
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
    fn payloads_stay_as_written() {
        // Keys in their order, escapes and numbers as written, and what
        // serde_json::Value refuses: a lone surrogate, 10^400.
        let huge = format!("1{}", "0".repeat(400));
        let args = format!(r#"["e",{{"z":1,"a":[1.0,1e3,-0]}},"\u00e9\/","\ud83d",{huge},null , {{"10":1,"2":2}}]"#);
        let p = ok(&format!("2{args}"));
        let d = p.data.as_ref().unwrap();
        assert_eq!(d.text(), args);
        assert_eq!(d.len(), 7);
        assert_eq!(d.arg(0), Some(r#""e""#));
        assert_eq!(d.arg(1), Some(r#"{"z":1,"a":[1.0,1e3,-0]}"#));
        assert_eq!(d.arg(3), Some(r#""\ud83d""#));
        assert_eq!(d.arg(4), Some(huge.as_str()));
        assert_eq!(d.arg(7), None);
        assert_eq!(d.rest(5), r#"null , {"10":1,"2":2}"#);
        assert_eq!(d.rest(6), r#"{"10":1,"2":2}"#);
        assert_eq!(d.rest(7), "");
        // Encoded again: the same text.
        let again = encode_raw(p.kind, &p.nsp, p.id, d.text(), 0);
        assert_eq!(again, format!("42{args}"));
        assert_eq!(ok(&again[1..]), p);
        // Not a copy: a slice of the message.
        let message = ByteString::from(format!("2{args}"));
        let p = decode(&message, &LIMITS).unwrap();
        assert_eq!(p.data.unwrap().bytes().as_ptr(), message[1..].as_ptr());
    }

    #[test]
    fn placeholders_must_be_exact_and_in_range() {
        let good =
            r#"["a",{"_placeholder":true,"num":1},{"x":[{"num":0,"_placeholder":true}],"s":"\ud83d","n":1e400}]"#;
        assert_eq!(check_placeholders(good, 2), Ok(()));
        assert_eq!(check_placeholders(r#"{"\u005fplaceholder":true,"num":0}"#, 1), Ok(()));
        for bad in [
            r#"[{"_placeholder":true,"num":2}]"#,
            r#"[{"_placeholder":true,"num":-1}]"#,
            r#"[{"_placeholder":true,"num":"0"}]"#,
            r#"[{"_placeholder":true,"num":0.0}]"#,
            r#"[{"_placeholder":false,"num":0}]"#,
            r#"[{"_placeholder":true,"num":0,"extra":1}]"#,
            r#"[{"_placeholder":true}]"#,
            r#"[{"_placeholder":true,"_placeholder":true}]"#,
            r#"{"a":{"b":[{"\u005fplaceholder":1,"num":0}]}}"#,
        ] {
            assert_eq!(check_placeholders(bad, 2), Err(ParseError::InvalidPlaceholder), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            check_placeholders(&deep, 0),
            Err(ParseError::InvalidPayload(_))
        ));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(check_placeholders(&deep, 0), Ok(()));
    }
}
