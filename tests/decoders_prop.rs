//! Property tests of the protocol decoders (proptest; the fuzz targets in
//! `fuzz/` check the same properties with coverage guidance).
//!
//! Covers:
//! - Engine.IO packets: every packet a client can send, written as a
//!   WebSocket text frame or a polling record (binary as `b` + base64),
//!   decodes to itself; a binary frame is always a message;
//! - Engine.IO payloads: any list of packets joined with `\x1e` decodes to
//!   that list, the packet limit is exact, and what `encode_payload` writes
//!   for the server's frames decodes to the same messages;
//! - Socket.IO packets: every valid packet (each type a client may send, a
//!   namespace, an ack id up to `MAX_ACK_ID`, JSON data of the right shape,
//!   compact or pretty-printed, placeholders for its attachments) survives
//!   `encode_raw` then `decode` with its payload's text byte for byte, and
//!   through `Decoder` with its attachments reassembles to itself;
//! - no panic on arbitrary input for `body_text`, `decode_payload`,
//!   `decode_text`, `decode`, `check_placeholders` and the reassembling
//!   `Decoder` (arbitrary bytes and text made of the protocol's own pieces).

use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;
use roomcast::engineio::packet::{decode_binary, decode_text, DecodeError};
use roomcast::engineio::payload::{body_text, decode_payload, encode_payload, SEPARATOR};
use roomcast::engineio::{Frame, Packet as EioPacket, Payload};
use roomcast::socketio::packet::{check_placeholders, decode, encode_raw, MAX_ACK_ID, RESERVED_EVENTS};
use roomcast::socketio::{Data, DecodeLimits, Decoder, Message, Packet, PacketType};
use serde_json::{json, Map, Value};

const LIMITS: DecodeLimits = DecodeLimits {
    max_attachments: 10,
    max_namespace_len: 128,
    max_attachment_bytes: 4_000_000,
};

// ---------------------------------------------------------------- Engine.IO

/// Text without the record separator (it cannot occur inside a record).
fn record_text() -> impl Strategy<Value = String> {
    "[^\x1e]{0,40}"
}

fn eio_packet() -> impl Strategy<Value = EioPacket> {
    prop_oneof![
        Just(EioPacket::Open),
        Just(EioPacket::Close),
        record_text().prop_map(|s| EioPacket::Ping(s.into())),
        record_text().prop_map(|s| EioPacket::Pong(s.into())),
        record_text().prop_map(|s| EioPacket::Message(Payload::Text(s.into()))),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| EioPacket::Message(Payload::Binary(Bytes::from(b)))),
        Just(EioPacket::Upgrade),
        Just(EioPacket::Noop),
    ]
}

/// What a client sends for `packet` (binary as a polling record).
fn eio_text(packet: &EioPacket) -> String {
    match packet {
        EioPacket::Open => "0".into(),
        EioPacket::Close => "1".into(),
        EioPacket::Ping(d) => format!("2{d}"),
        EioPacket::Pong(d) => format!("3{d}"),
        EioPacket::Message(Payload::Text(d)) => format!("4{d}"),
        EioPacket::Message(Payload::Binary(b)) => {
            format!("b{}", base64::engine::general_purpose::STANDARD.encode(b))
        }
        EioPacket::Upgrade => "5".into(),
        EioPacket::Noop => "6".into(),
    }
}

proptest! {
    #[test]
    fn engineio_packets_round_trip(packet in eio_packet()) {
        let text = ByteString::from(eio_text(&packet));
        let binary = matches!(packet, EioPacket::Message(Payload::Binary(_)));
        // Polling record: everything, binary included.
        prop_assert_eq!(decode_text(&text, true), Ok(packet.clone()));
        // WebSocket text frame: `b` is no packet type there.
        if binary {
            prop_assert_eq!(decode_text(&text, false), Err(DecodeError::UnknownType('b')));
        } else {
            prop_assert_eq!(decode_text(&text, false), Ok(packet));
        }
    }

    #[test]
    fn binary_frames_are_messages(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let bytes = Bytes::from(bytes);
        prop_assert_eq!(decode_binary(bytes.clone()), EioPacket::Message(Payload::Binary(bytes)));
    }

    #[test]
    fn engineio_payloads_round_trip(packets in proptest::collection::vec(eio_packet(), 1..24)) {
        let body: Vec<String> = packets.iter().map(eio_text).collect();
        let body = ByteString::from(body.join(&SEPARATOR.to_string()));
        prop_assert_eq!(decode_payload(&body, packets.len()), Ok(packets.clone()));
        if packets.len() > 1 {
            let limit = packets.len() - 1;
            prop_assert_eq!(decode_payload(&body, limit), Err(DecodeError::TooManyPackets(limit)));
        }
    }

    #[test]
    fn server_payloads_decode_to_their_frames(
        frames in proptest::collection::vec(
            prop_oneof![
                record_text().prop_map(|s| Frame::message_text(&s)),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Frame::message_binary(Bytes::from(b))),
                Just(Frame::ping()),
                Just(Frame::noop()),
                Just(Frame::close()),
            ],
            1..24,
        )
    ) {
        let body = ByteString::from(encode_payload(&frames));
        let decoded = decode_payload(&body, frames.len()).unwrap();
        for (frame, packet) in frames.iter().zip(decoded) {
            let expected = match frame {
                Frame::Text(t) => decode_text(t, false).unwrap(),
                Frame::Binary(b) => EioPacket::Message(Payload::Binary(b.clone())),
            };
            prop_assert_eq!(packet, expected);
        }
    }

    #[test]
    fn engineio_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), limit in 1usize..32) {
        let _ = decode_binary(Bytes::from(bytes.clone()));
        if let Ok(text) = body_text(Bytes::from(bytes)) {
            let _ = decode_payload(&text, limit);
            let _ = decode_text(&text, true);
            let _ = decode_text(&text, false);
        }
    }

    #[test]
    fn engineio_decoders_never_panic_on_packet_like_text(
        records in proptest::collection::vec("[0-9b]?[A-Za-z0-9+/=!é\u{0}]{0,12}", 1..12),
        limit in 1usize..16,
    ) {
        let body = ByteString::from(records.join(&SEPARATOR.to_string()));
        let _ = decode_payload(&body, limit);
        let _ = decode_text(&body, true);
    }
}

// ---------------------------------------------------------------- Socket.IO

/// Any JSON value (finite numbers only: JSON has no others).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            // Objects never look like placeholders.
            proptest::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn event_name() -> impl Strategy<Value = String> {
    ".{0,16}".prop_filter("not reserved", |s| !RESERVED_EVENTS.contains(&s.as_str()))
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_string()), "/[A-Za-z0-9_.~é-]{1,30}"]
}

/// A valid client packet and its attachments.
fn sio_message() -> impl Strategy<Value = Message> {
    let kind = prop_oneof![
        Just(PacketType::Connect),
        Just(PacketType::Disconnect),
        Just(PacketType::Event),
        Just(PacketType::Ack),
        Just(PacketType::BinaryEvent),
        Just(PacketType::BinaryAck),
    ];
    (
        kind,
        namespace(),
        0..=MAX_ACK_ID,
        any::<bool>(),
        event_name(),
        proptest::collection::vec(json_value(), 0..5),
        proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..16),
            0..=LIMITS.max_attachments,
        ),
        any::<bool>(),
    )
        .prop_map(|(kind, nsp, id, with, name, args, attachments, pretty)| {
            use PacketType::*;
            let attachments: Vec<Bytes> = if kind.is_binary() {
                attachments.into_iter().map(Bytes::from).collect()
            } else {
                Vec::new()
            };
            let mut args = Value::Array(args);
            if let Value::Array(items) = &mut args {
                // Every attachment is referenced, in reverse order for variety.
                for n in (0..attachments.len()).rev() {
                    items.push(json!({"_placeholder": true, "num": n}));
                }
            }
            let (id, event, data) = match kind {
                Connect => (None, None, with.then(|| json!({"token": name}))),
                Disconnect => (None, None, None),
                Event | BinaryEvent => {
                    let Value::Array(mut items) = args else { unreachable!() };
                    items.insert(0, Value::String(name.clone()));
                    (with.then_some(id), Some(name), Some(Value::Array(items)))
                }
                Ack | BinaryAck => (Some(id), None, Some(args)),
                ConnectError => unreachable!("not generated"),
            };
            let text = |v: &Value| {
                if pretty {
                    serde_json::to_string_pretty(v)
                } else {
                    serde_json::to_string(v)
                }
            };
            let data = data.map(|v| Data::new(text(&v).unwrap().into()).unwrap());
            Message {
                packet: Packet {
                    kind,
                    nsp,
                    id,
                    event,
                    data,
                    attachments: attachments.len(),
                },
                attachments,
            }
        })
}

fn encoded(p: &Packet) -> ByteString {
    let text = encode_raw(
        p.kind,
        &p.nsp,
        p.id,
        p.data.as_ref().map_or("", Data::text),
        p.attachments,
    );
    // The Engine.IO message type comes first; the Socket.IO packet follows.
    assert_eq!(text.as_bytes()[0], b'4');
    text[1..].into()
}

/// Pieces of the Socket.IO packet syntax, so that random text gets past
/// the first checks often.
fn sio_like_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[0-9]",
        "[0-9]{1,20}",
        Just("-".to_string()),
        Just(",".to_string()),
        "/[a-z,]{0,4}",
        Just(r#"{"_placeholder":true,"num":0}"#.to_string()),
        Just(r#""_placeholder""#.to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(r#""e","#.to_string()),
        Just(r#""num":"#.to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        ".{0,3}",
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn socketio_packets_round_trip(m in sio_message()) {
        let text = encoded(&m.packet);
        let back = decode(&text, &LIMITS);
        prop_assert_eq!(&back, &Ok(m.packet.clone()), "{}", text);
        // The payload is the text sent, byte for byte.
        let sent = m.packet.data.as_ref().map(Data::text);
        let back = back.unwrap();
        prop_assert_eq!(back.data.as_ref().map(Data::text), sent);
        prop_assert!(text.ends_with(sent.unwrap_or_default()));
    }

    #[test]
    fn socketio_messages_reassemble(m in sio_message()) {
        let mut decoder = Decoder::new(LIMITS);
        let mut result = decoder.text(&encoded(&m.packet)).unwrap();
        for a in &m.attachments {
            prop_assert!(result.is_none() && decoder.is_waiting());
            result = decoder.binary(a.clone()).unwrap();
        }
        prop_assert!(!decoder.is_waiting());
        prop_assert_eq!(result, Some(m));
    }

    #[test]
    fn socketio_decoders_never_panic(text in ".{0,256}") {
        let text = ByteString::from(text);
        let _ = decode(&text, &LIMITS);
        let _ = Decoder::new(LIMITS).text(&text);
    }

    #[test]
    fn socketio_decoders_never_panic_on_packet_like_text(text in sio_like_text()) {
        if let Ok(p) = decode(&text.into(), &LIMITS) {
            // Whatever decodes is within the limits and encodes back.
            prop_assert!(p.attachments <= LIMITS.max_attachments);
            prop_assert!(p.id.is_none_or(|id| id <= MAX_ACK_ID));
            prop_assert_eq!(decode(&encoded(&p), &LIMITS), Ok(p));
        }
    }

    #[test]
    fn check_placeholders_never_panics(value in json_value(), attachments in 0usize..12) {
        let _ = check_placeholders(&value.to_string(), attachments);
    }

    #[test]
    fn check_placeholders_never_panics_on_packet_like_text(text in sio_like_text(), attachments in 0usize..12) {
        let _ = check_placeholders(&text, attachments);
    }

    #[test]
    fn reassembly_never_panics(
        messages in proptest::collection::vec(
            prop_oneof![
                sio_like_text().prop_map(Ok),
                proptest::collection::vec(any::<u8>(), 0..8).prop_map(Err),
            ],
            0..12,
        )
    ) {
        let mut decoder = Decoder::new(LIMITS);
        for message in messages {
            let result = match message {
                Ok(text) => decoder.text(&text.into()),
                Err(bytes) => decoder.binary(Bytes::from(bytes)),
            };
            match result {
                Ok(Some(m)) => prop_assert_eq!(m.attachments.len(), m.packet.attachments),
                Ok(None) => prop_assert!(decoder.is_waiting()),
                Err(_) => break,
            }
        }
    }
}
