//! `engineio::payload::body_text` and `decode_payload` on arbitrary bodies:
//! no panic, one packet per `\x1e` record and at most `MAX_PACKETS`, the
//! packets encode back to a body that decodes to the same packets, and the
//! server's `encode_payload` of the messages decodes to those messages.
#![no_main]

use bytes::Bytes;
use bytestring::ByteString;
use libfuzzer_sys::fuzz_target;
use roomcast::engineio::packet::DecodeError;
use roomcast::engineio::payload::{body_text, decode_payload, encode_payload, SEPARATOR};
use roomcast::engineio::{Frame, Packet, Payload};
use roomcast_fuzz::packet_text;

/// Small, so that the limit is reached often.
const MAX_PACKETS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let body = match body_text(Bytes::copy_from_slice(data)) {
        Ok(body) => body,
        Err(e) => {
            assert_eq!(e, DecodeError::InvalidUtf8);
            assert!(std::str::from_utf8(data).is_err());
            return;
        }
    };
    let records = body.split(SEPARATOR).count();
    let packets = match decode_payload(&body, MAX_PACKETS) {
        Ok(packets) => packets,
        Err(DecodeError::TooManyPackets(n)) => {
            assert_eq!(n, MAX_PACKETS);
            assert!(records > MAX_PACKETS);
            return;
        }
        Err(_) => return,
    };
    assert_eq!(packets.len(), records);

    let again: Vec<String> = packets.iter().map(packet_text).collect();
    let again = ByteString::from(again.join(&SEPARATOR.to_string()));
    assert_eq!(decode_payload(&again, MAX_PACKETS).as_ref(), Ok(&packets), "{again:?}");

    let messages: Vec<&Packet> = packets.iter().filter(|p| matches!(p, Packet::Message(_))).collect();
    let frames: Vec<Frame> = messages
        .iter()
        .map(|p| match p {
            Packet::Message(Payload::Text(t)) => Frame::message_text(t),
            Packet::Message(Payload::Binary(b)) => Frame::message_binary(b.clone()),
            _ => unreachable!("only messages were kept"),
        })
        .collect();
    if !frames.is_empty() {
        let body = ByteString::from(encode_payload(&frames));
        let back = decode_payload(&body, frames.len()).expect("an encoded payload decodes");
        assert_eq!(back.iter().collect::<Vec<_>>(), messages);
    }
});
