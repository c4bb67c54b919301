//! The HTTP long-polling payload: packets separated by the record separator
//! `\x1e`, binary messages as `b` + base64 (spec "Packet encoding / HTTP
//! long-polling"; v4 always uses base64 for binary on polling).

use base64::Engine as _;
use bytestring::ByteString;

use super::packet::{decode_text, DecodeError, Frame, Packet};

/// The record separator between packets of one payload.
pub const SEPARATOR: char = '\x1e';

/// Decodes a polling request body. `max_packets` bounds the work one request
/// can cause; exceeding it is an error, not a truncation.
pub fn decode_payload(body: &ByteString, max_packets: usize) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    for record in body.split(SEPARATOR) {
        if packets.len() == max_packets {
            return Err(DecodeError::TooManyPackets(max_packets));
        }
        packets.push(decode_text(&body.slice_ref(record), true)?);
    }
    Ok(packets)
}

/// Checks and converts a request body to text.
pub fn body_text(body: bytes::Bytes) -> Result<ByteString, DecodeError> {
    ByteString::try_from(body).map_err(|_| DecodeError::InvalidUtf8)
}

/// Encodes frames into one polling response body.
pub fn encode_payload<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> String {
    let mut out = String::new();
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match frame {
            Frame::Text(s) => out.push_str(s),
            Frame::Binary(b) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(b, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::packet::Payload;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn spec_example_payload_round_trips() {
        // README: "4hello\x1e2\x1e4world" and "4hello\x1ebAQIDBA==".
        let body = ByteString::from_static("4hello\x1e2\x1e4world");
        let packets = decode_payload(&body, 100).unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::Message(Payload::Text("hello".into())),
                Packet::Ping("".into()),
                Packet::Message(Payload::Text("world".into())),
            ]
        );
        let frames = [
            Frame::message_text("hello"),
            Frame::message_binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        assert_eq!(encode_payload(&frames), "4hello\x1ebAQIDBA==");
        let back = decode_payload(&ByteString::from(encode_payload(&frames)), 10).unwrap();
        assert_eq!(
            back[1],
            Packet::Message(Payload::Binary(Bytes::from_static(&[1, 2, 3, 4])))
        );
    }

    #[test]
    fn limits_and_errors() {
        let body = ByteString::from("4\x1e".repeat(10) + "4");
        assert_eq!(decode_payload(&body, 10), Err(DecodeError::TooManyPackets(10)));
        assert_eq!(decode_payload(&body, 11).unwrap().len(), 11);
        assert_eq!(
            decode_payload(&ByteString::from_static("4a\x1e\x1e4b"), 10),
            Err(DecodeError::Empty)
        );
        assert_eq!(
            decode_payload(&ByteString::from_static(""), 10),
            Err(DecodeError::Empty)
        );
        assert_eq!(
            body_text(Bytes::from_static(&[0xff, 0x34])),
            Err(DecodeError::InvalidUtf8)
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(text) = body_text(Bytes::from(bytes)) {
                let _ = decode_payload(&text, 64);
                let _ = decode_text(&text, false);
            }
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(s in "\\PC{0,256}") {
            let text = ByteString::from(s);
            let _ = decode_payload(&text, 64);
            let _ = decode_text(&text, true);
        }

        #[test]
        fn encoded_payloads_decode_to_what_was_sent(
            items in proptest::collection::vec(
                prop_oneof![
                    "[^\x1e]{0,40}".prop_map(|s| Frame::message_text(&s)),
                    proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Frame::message_binary(Bytes::from(b))),
                ],
                1..20,
            )
        ) {
            let body = ByteString::from(encode_payload(&items));
            let decoded = decode_payload(&body, 100).unwrap();
            prop_assert_eq!(decoded.len(), items.len());
            for (frame, packet) in items.iter().zip(decoded) {
                match (frame, packet) {
                    (Frame::Text(s), Packet::Message(Payload::Text(d))) => prop_assert_eq!(&s[1..], &d[..]),
                    (Frame::Binary(b), Packet::Message(Payload::Binary(d))) => prop_assert_eq!(b, &d),
                    (f, p) => prop_assert!(false, "{:?} decoded as {:?}", f, p),
                }
            }
        }
    }
}
