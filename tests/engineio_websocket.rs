//! Engine.IO v4 over a WebSocket-only session, end to end against a real server.
//!
//! Covers:
//! - the handshake without sid: the first frame is a text open packet with
//!   exactly the five keys and `upgrades: []`; the session is registered;
//! - messages on the echo endpoint: text `4hello` (and non-ASCII text)
//!   echoed as text, a binary frame echoed as binary, many messages echoed in
//!   order, exactly `maxPayload` accepted;
//! - what closes a WebSocket session (close frame, then the session leaves
//!   the registry): an invalid packet (`abc`), the client's close packet `1`,
//!   the client's close frame, a text or binary message above `maxPayload`
//!   (close 1009), a text frame that is not UTF-8 (close 1007, built by hand),
//!   an unmasked client frame (RFC 6455 §5.1: the server must close);
//! - a WebSocket-level ping gets a pong with the same payload;
//! - heartbeat: a `2` every `pingInterval`, the session stays alive across
//!   rounds answered with `3`; without a pong the server closes the socket
//!   after `pingTimeout`;
//! - a second WebSocket with the sid of a WebSocket session is accepted and
//!   closed at once, the first keeps working; polling requests with that sid
//!   are refused with code 3.
mod common;

use std::time::Instant;

use common::eio::{
    assert_echo, assert_echo_answering_pings, assert_open_defaults, assert_ping_delay, assert_ping_timeout_delay,
    assert_sid_shape, connect, expect_close, next, next_text, open, send,
};
use common::raw::RawWs;
use common::{quiet, registry_empties, within, ECHO, SIO};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------- handshake

#[actix_web::test]
async fn handshake_without_sid_sends_open_packet_without_upgrades() {
    let server = common::spawn(common::settings(|_| {}));
    let (_ws, open) = open(&server, SIO).await;
    assert_open_defaults(&open, json!([]));
    let sid = open["sid"].as_str().unwrap();
    assert_sid_shape(sid);
    assert_eq!(server.registry.len(), 1);
    assert!(server.registry.get(sid).is_some());
}

// ----------------------------------------------------------------- messages

#[actix_web::test]
async fn text_message_is_echoed() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, ECHO).await;
    for text in ["4hello", "4héllo ✓", "4"] {
        assert_echo(&mut ws, text).await;
    }
}

#[actix_web::test]
async fn binary_message_is_echoed_as_binary() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, ECHO).await;
    send(&mut ws, Message::binary(vec![1u8, 2, 3, 4, 0, 255])).await;
    match next(&mut ws).await {
        Message::Binary(b) => assert_eq!(&b[..], [1, 2, 3, 4, 0, 255]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[actix_web::test]
async fn many_messages_are_echoed_in_order() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, ECHO).await;
    for i in 0..200 {
        let message = if i % 3 == 0 {
            Message::binary(vec![i as u8])
        } else {
            Message::text(format!("4m{i}"))
        };
        ws.feed(message).await.unwrap();
    }
    within("flush", ws.flush()).await.unwrap();
    for i in 0..200 {
        match next(&mut ws).await {
            Message::Binary(b) if i % 3 == 0 => assert_eq!(&b[..], [i as u8]),
            Message::Text(t) if i % 3 != 0 => assert_eq!(t.as_str(), format!("4m{i}")),
            other => panic!("message {i}: got {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ closing

#[actix_web::test]
async fn invalid_packet_closes_the_socket_and_the_session() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, SIO).await;
    send(&mut ws, Message::text("abc")).await;
    expect_close(&mut ws).await;
    registry_empties(&server).await;
}

#[actix_web::test]
async fn client_close_packet_closes_the_socket_and_the_session() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, SIO).await;
    assert_eq!(server.registry.len(), 1);
    send(&mut ws, Message::text("1")).await;
    expect_close(&mut ws).await;
    registry_empties(&server).await;
}

#[actix_web::test]
async fn client_close_frame_ends_the_session() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, SIO).await;
    assert_eq!(server.registry.len(), 1);
    within("close handshake", ws.close(None)).await.unwrap();
    // The server answers the close; then the stream ends.
    loop {
        match within("the end of the socket", ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(other)) => panic!("after the close: {other:?}"),
        }
    }
    registry_empties(&server).await;
}

#[actix_web::test]
async fn text_message_above_max_payload_closes_with_1009() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_payload = 64;
    }));
    let (mut ws, open) = open(&server, ECHO).await;
    assert_eq!(open["maxPayload"], 64);
    assert_echo(&mut ws, &format!("4{}", "a".repeat(63))).await;
    send(&mut ws, format!("4{}", "a".repeat(64))).await;
    assert_eq!(expect_close(&mut ws).await, 1009);
}

#[actix_web::test]
async fn binary_message_above_max_payload_closes_with_1009() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_payload = 64;
    }));
    let (mut ws, _) = open(&server, SIO).await;
    send(&mut ws, Message::binary(vec![7u8; 65])).await;
    assert_eq!(expect_close(&mut ws).await, 1009);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn fragmented_message_above_max_payload_closes_with_1009() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_payload = 64;
    }));
    let mut raw = RawWs::connect(&server, SIO).await;
    raw.frame().await.expect("open packet");
    // Each fragment is within the limit; the message they make is not.
    raw.send_frame_with(0x1, format!("4{}", "a".repeat(39)).as_bytes(), true)
        .await;
    raw.send_frame_with(0x80, "b".repeat(40).as_bytes(), true).await;
    assert_eq!(raw.close_code().await, 1009);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn frame_header_declaring_more_than_max_payload_closes_before_its_payload() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    raw.frame().await.expect("open packet");
    // A binary frame announcing 2^40 bytes, masked, then a little of it: the
    // server must refuse it from the header, not wait to hold it all.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_bytes(&header).await;
    raw.send_bytes(&[0u8; 4096]).await;
    assert_eq!(raw.close_code().await, 1009);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn message_in_more_than_max_fragments_closes_with_1009() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.websocket.max_fragments = 4;
    }));
    let mut raw = RawWs::connect(&server, ECHO).await;
    raw.frame().await.expect("open packet");
    // Four fragments make a message, which is echoed.
    for (first, part) in [(0x1, "4a"), (0x0, "b"), (0x0, "c"), (0x80, "d")] {
        raw.send_frame_with(first, part.as_bytes(), true).await;
    }
    assert_eq!(raw.frame().await, Some((0x1, b"4abcd".to_vec())));
    // Five are one too many, however small.
    for (first, part) in [(0x1, "4a"), (0x0, ""), (0x0, ""), (0x0, ""), (0x80, "")] {
        raw.send_frame_with(first, part.as_bytes(), true).await;
    }
    assert_eq!(raw.close_code().await, 1009);
}

#[actix_web::test]
async fn frame_with_reserved_bits_closes_with_1002() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    raw.frame().await.expect("open packet");
    // RSV1 without a negotiated extension: a protocol error, not bad UTF-8.
    raw.send_frame_with(0x80 | 0x40 | 0x1, b"4x", true).await;
    assert_eq!(raw.close_code().await, 1002);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn text_frame_that_is_not_utf8_closes_with_1007() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    let (opcode, open) = raw.frame().await.expect("open packet");
    assert_eq!(opcode, 0x1);
    assert!(open.starts_with(b"0{"), "{:?}", String::from_utf8_lossy(&open));
    assert_eq!(server.registry.len(), 1);
    raw.send_frame(0x1, &[b'4', 0xff, 0xfe, b'x'], true).await;
    assert_eq!(raw.close_code().await, 1007);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn valid_hand_built_frame_is_echoed() {
    // The raw client itself works: a correct masked frame is echoed.
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, ECHO).await;
    raw.frame().await.expect("open packet");
    raw.send_frame(0x1, "4é".as_bytes(), true).await;
    assert_eq!(raw.frame().await, Some((0x1, "4é".as_bytes().to_vec())));
}

#[actix_web::test]
async fn unmasked_client_frame_closes_the_connection() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    raw.frame().await.expect("open packet");
    raw.send_frame(0x1, b"4hello", false).await;
    // RFC 6455 §5.1: the server must close (a close frame is optional).
    match raw.frame().await {
        None | Some((0x8, _)) => {}
        Some(other) => panic!("an unmasked frame was not refused: {other:?}"),
    }
    registry_empties(&server).await;
}

#[actix_web::test]
async fn websocket_ping_gets_a_pong() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, ECHO).await;
    send(&mut ws, Message::Ping(b"are you there"[..].into())).await;
    match next(&mut ws).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // A WebSocket ping is not an Engine.IO packet: the session carries on.
    assert_echo(&mut ws, "4still").await;
}

// ---------------------------------------------------------------- heartbeat

#[actix_web::test]
async fn heartbeat_pings_every_interval_and_pongs_keep_the_session() {
    let server = common::spawn(common::settings(|_| {}));
    let mut since = Instant::now();
    let (mut ws, _) = open(&server, ECHO).await;
    for round in 0..3 {
        let text = next_text(&mut ws).await;
        let waited = since.elapsed();
        assert_eq!(text, "2", "round {round}");
        assert_ping_delay(round, waited);
        send(&mut ws, "3").await;
        since = Instant::now();
    }
    // Three rounds last longer than pingInterval + pingTimeout: still alive.
    assert_echo_answering_pings(&mut ws, "4alive").await;
}

#[actix_web::test]
async fn heartbeat_without_pong_closes_the_socket() {
    let server = common::spawn(common::settings(|_| {}));
    let (mut ws, _) = open(&server, SIO).await;
    assert_eq!(next_text(&mut ws).await, "2");
    let pinged = Instant::now();
    expect_close(&mut ws).await;
    assert_ping_timeout_delay(pinged.elapsed());
    registry_empties(&server).await;
}

// ------------------------------------------- one WebSocket per session only

#[actix_web::test]
async fn second_websocket_for_a_websocket_session_is_closed_at_once() {
    let server = common::spawn(common::settings(quiet));
    let (mut first, open) = open(&server, ECHO).await;
    let sid = open["sid"].as_str().unwrap();
    let mut second = connect(&server, ECHO, Some(sid)).await;
    expect_close(&mut second).await;
    assert_echo(&mut first, "4first").await;
}

#[actix_web::test]
async fn polling_with_the_sid_of_a_websocket_session_is_refused() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, open) = open(&server, ECHO).await;
    let url = format!(
        "{}{ECHO}?EIO=4&transport=polling&sid={}",
        server.http(),
        open["sid"].as_str().unwrap()
    );
    let client = reqwest::Client::new();
    for resp in [
        within("GET", client.get(&url).send()).await.unwrap(),
        within("POST", client.post(&url).body("4x").send()).await.unwrap(),
    ] {
        assert_eq!(resp.status().as_u16(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v, json!({"code": 3, "message": "Bad request"}));
    }
    // Neither the refused GET nor the POST's message reached the session.
    assert_echo(&mut ws, "4ws").await;
}
