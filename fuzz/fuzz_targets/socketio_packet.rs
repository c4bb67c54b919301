//! `socketio::packet::decode` on arbitrary text: no panic, a decoded packet
//! respects the limits and the protocol's shape rules, its payload is the
//! end of the text as received (byte for byte), `check_placeholders` takes
//! its data, and `encode_raw` then `decode` gives the same packet back, and
//! the same text again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::socketio::packet::{check_placeholders, decode, encode_raw, MAX_ACK_ID};
use roomcast::socketio::{Data, PacketType};
use roomcast_fuzz::SIO_LIMITS;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packet) = decode(&text.into(), &SIO_LIMITS) else {
        return;
    };
    assert_ne!(
        packet.kind,
        PacketType::ConnectError,
        "a client cannot send CONNECT_ERROR"
    );
    assert!(packet.attachments <= SIO_LIMITS.max_attachments);
    assert!(packet.attachments == 0 || packet.kind.is_binary());
    assert!(
        packet.nsp.starts_with('/') && !packet.nsp.contains(','),
        "{:?}",
        packet.nsp
    );
    assert!(packet.nsp.len() <= SIO_LIMITS.max_namespace_len);
    assert!(packet.id.is_none_or(|id| id <= MAX_ACK_ID));
    let payload = packet.data.as_ref().map_or("", Data::text);
    assert!(text.ends_with(payload), "the payload is the text received");
    assert_eq!(
        packet.event.is_some(),
        matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent)
    );
    if let Some(data) = &packet.data {
        let _ = check_placeholders(data.text(), packet.attachments);
    }

    let out = encode_raw(packet.kind, &packet.nsp, packet.id, payload, packet.attachments);
    let inner = out.strip_prefix('4').expect("encode returns an Engine.IO message");
    let back = decode(&inner.into(), &SIO_LIMITS).unwrap_or_else(|e| panic!("{inner:?} does not decode: {e}"));
    assert_eq!(back, packet, "{inner:?}");
    let again = encode_raw(
        back.kind,
        &back.nsp,
        back.id,
        back.data.as_ref().map_or("", Data::text),
        back.attachments,
    );
    assert_eq!(again, out, "encoded twice, the same text");
});
