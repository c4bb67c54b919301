//! `socketio::packet::decode` on arbitrary text: no panic, a decoded packet
//! respects the limits and the protocol's shape rules, `check_placeholders`
//! takes its data, and `encode` then `decode` gives the same packet back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::socketio::packet::{check_placeholders, decode, encode, MAX_ACK_ID};
use roomcast::socketio::PacketType;
use roomcast_fuzz::SIO_LIMITS;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packet) = decode(text, &SIO_LIMITS) else {
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
    if let Some(data) = &packet.data {
        let _ = check_placeholders(data, packet.attachments);
    }

    let out = encode(
        packet.kind,
        &packet.nsp,
        packet.id,
        packet.data.as_ref(),
        packet.attachments,
    );
    let inner = out.strip_prefix('4').expect("encode returns an Engine.IO message");
    let back = decode(inner, &SIO_LIMITS).unwrap_or_else(|e| panic!("{inner:?} does not decode: {e}"));
    assert_eq!(back, packet, "{inner:?}");
});
