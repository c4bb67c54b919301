//! Helpers shared by the fuzz targets in `fuzz_targets/`:
//!
//! - `engineio_packet`: `engineio::packet::decode_text` (with and without the
//!   polling `b` prefix) and `decode_binary`; a decoded packet encodes back to
//!   text that decodes to the same packet.
//! - `engineio_payload`: `engineio::payload::body_text` and `decode_payload`;
//!   one packet per record, the packet limit, and the round trip through
//!   `encode_payload` for messages.
//! - `socketio_packet`: `socketio::packet::decode` with `DecodeLimits`; what
//!   decodes respects the limits, keeps its payload's text, and survives
//!   `encode_raw` then `decode`.
//! - `socketio_binary`: the reassembly of binary packets (`socketio::Decoder`,
//!   which calls `check_placeholders`) over a sequence of text and binary
//!   messages; a complete message has exactly its announced attachments.
//!
//! Seeds live in `corpus/<target>/` (small files written by hand, the bad
//! input matrix of issue 10); scripts/fuzz keeps what the fuzzer finds in
//! `work/<target>/`, out of version control.

use base64::Engine as _;
use bytes::Bytes;
use roomcast::engineio::{Packet, Payload};
use roomcast::socketio::DecodeLimits;

/// The limits the Socket.IO targets decode with: the defaults of
/// config/default.toml (`socketio.max_attachments`, `max_namespace_len`).
pub const SIO_LIMITS: DecodeLimits = DecodeLimits {
    max_attachments: 10,
    max_namespace_len: 128,
    max_attachment_bytes: 4_000_000,
};

/// The text a client sends for `packet` (a WebSocket text frame, or one
/// record of a polling payload: binary as `b` + base64).
pub fn packet_text(packet: &Packet) -> String {
    match packet {
        Packet::Open => "0".into(),
        Packet::Close => "1".into(),
        Packet::Ping(data) => format!("2{data}"),
        Packet::Pong(data) => format!("3{data}"),
        Packet::Message(Payload::Text(data)) => format!("4{data}"),
        Packet::Message(Payload::Binary(data)) => binary_record(data),
        Packet::Upgrade => "5".into(),
        Packet::Noop => "6".into(),
    }
}

/// `b` + standard base64, as a polling payload carries binary.
pub fn binary_record(data: &Bytes) -> String {
    format!("b{}", base64::engine::general_purpose::STANDARD.encode(data))
}

/// Splits fuzz input into messages for the Socket.IO reassembly target:
/// records separated by `\x1e`; a record starting with `b` is a binary
/// message (the bytes after it), any other a text message (skipped when
/// not UTF-8).
pub fn messages(data: &[u8]) -> impl Iterator<Item = Result<&str, &[u8]>> {
    data.split(|b| *b == 0x1e)
        .filter_map(|record| match record.strip_prefix(b"b") {
            Some(bin) => Some(Err(bin)),
            None => std::str::from_utf8(record).ok().map(Ok),
        })
}
