//! Binary reassembly (`socketio::Decoder`, with `check_placeholders`) over a
//! sequence of text and binary messages (records separated by `\x1e`; `b`
//! starts a binary one): no panic, a complete message carries exactly the
//! attachments its packet announced and only valid placeholders, the decoder
//! waits exactly while attachments are missing, and a complete message
//! encoded again (text then attachments) reassembles to the same message,
//! its payload the same text.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast::socketio::packet::{check_placeholders, encode_raw};
use roomcast::socketio::{Data, Decoder, Message};
use roomcast_fuzz::{messages, SIO_LIMITS};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(SIO_LIMITS);
    for message in messages(data) {
        let result = match message {
            Ok(text) => decoder.text(&text.into()),
            Err(bin) => decoder.binary(Bytes::copy_from_slice(bin)),
        };
        match result {
            Ok(Some(complete)) => {
                assert!(!decoder.is_waiting());
                check(&complete);
            }
            Ok(None) => assert!(decoder.is_waiting()),
            // The connection closes with "parse error": nothing follows.
            Err(_) => return,
        }
    }
});

fn check(m: &Message) {
    let p = &m.packet;
    assert_eq!(m.attachments.len(), p.attachments);
    if p.kind.is_binary() {
        if let Some(data) = &p.data {
            assert_eq!(check_placeholders(data.text(), p.attachments), Ok(()));
        }
    }
    let text = encode_raw(
        p.kind,
        &p.nsp,
        p.id,
        p.data.as_ref().map_or("", Data::text),
        p.attachments,
    );
    let mut again = Decoder::new(SIO_LIMITS);
    let mut result = again.text(&text[1..].into()).expect("an encoded packet decodes");
    for a in &m.attachments {
        assert!(result.is_none(), "complete before its attachments");
        result = again.binary(Bytes::clone(a)).expect("an announced attachment is taken");
    }
    assert_eq!(result.as_ref(), Some(m));
}
