//! `engineio::packet::decode_text` and `decode_binary` on arbitrary input:
//! no panic, the error says what was wrong, and what decodes encodes back to
//! text that decodes to the same packet.
#![no_main]

use bytes::Bytes;
use bytestring::ByteString;
use libfuzzer_sys::fuzz_target;
use roomcast::engineio::packet::{decode_binary, decode_text, DecodeError};
use roomcast::engineio::{Frame, Packet, Payload};
use roomcast_fuzz::packet_text;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    assert_eq!(decode_binary(bytes.clone()), Packet::Message(Payload::Binary(bytes)));

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = ByteString::from(text);
    for allow_base64 in [false, true] {
        match decode_text(&frame, allow_base64) {
            Ok(packet) => {
                let again = ByteString::from(packet_text(&packet));
                assert_eq!(decode_text(&again, allow_base64).as_ref(), Ok(&packet), "{again:?}");
                if let Packet::Message(Payload::Text(data)) = &packet {
                    // The server's encoding of a text message.
                    let Frame::Text(out) = Frame::message_text(data) else {
                        panic!("a text message encodes as a text frame");
                    };
                    assert_eq!(decode_text(&out, false).as_ref(), Ok(&packet));
                }
            }
            Err(DecodeError::Empty) => assert!(text.is_empty()),
            Err(DecodeError::UnknownType(c)) => assert_eq!(text.chars().next(), Some(c)),
            Err(DecodeError::InvalidBase64) => assert!(allow_base64 && text.starts_with('b')),
            Err(e) => panic!("decode_text failed with {e:?}"),
        }
    }
});
