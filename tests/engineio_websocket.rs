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

use std::future::Future;
use std::time::{Duration, Instant};

use common::TestServer;
use futures_util::{SinkExt as _, StreamExt as _};
use roomcast::config::Settings;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The echo endpoint: every message is sent back.
const ECHO: &str = "/engine.io/";
/// The Socket.IO endpoint; `server.registry` holds its sessions. Only
/// Engine.IO-level input is sent to it (what it makes of messages is the
/// Socket.IO layer's business).
const SIO: &str = "/socket.io/";
/// Upper bound for anything that should happen "now".
const SOON: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Heartbeat far away, for tests that are not about it.
fn quiet(s: &mut Settings) {
    s.engine.ping_interval_ms = 60_000;
    s.engine.ping_timeout_ms = 60_000;
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits (bounded) until the Socket.IO endpoint has no session left.
async fn registry_empties(server: &TestServer) {
    let deadline = Instant::now() + SOON;
    while !server.registry.is_empty() {
        assert!(
            Instant::now() < deadline,
            "session still registered: {}",
            server.registry.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connect(server: &TestServer, path: &str, sid: Option<&str>) -> Ws {
    let mut url = format!("{}{path}?EIO=4&transport=websocket", server.ws());
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    let (ws, resp) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket handshake succeeds");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The next message; panics if the socket ended.
async fn next(ws: &mut Ws) -> Message {
    within("a WebSocket message", ws.next())
        .await
        .expect("the socket ended")
        .expect("the socket failed")
}

async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Expects the server's close frame as the next message; its code.
async fn expect_close(ws: &mut Ws) -> u16 {
    match next(ws).await {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Opens a WebSocket session; the socket and the open packet's data.
async fn open(server: &TestServer, path: &str) -> (Ws, Value) {
    let mut ws = connect(server, path, None).await;
    let text = next_text(&mut ws).await;
    assert!(text.starts_with("0{"), "first frame is not an open packet: {text:?}");
    (ws, serde_json::from_str(&text[1..]).unwrap())
}

async fn send(ws: &mut Ws, message: Message) {
    within("send", ws.send(message)).await.expect("send succeeds");
}

// ---------------------------------------------------------------- handshake

#[actix_web::test]
async fn handshake_without_sid_sends_open_packet_without_upgrades() {
    let server = common::spawn(common::settings(|_| {}));
    let (_ws, open) = open(&server, SIO).await;
    let mut keys: Vec<&str> = open.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
    let sid = open["sid"].as_str().unwrap();
    assert!(sid.len() >= 22, "{sid:?}");
    assert!(
        sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{sid:?}"
    );
    assert_eq!(server.registry.len(), 1);
    assert!(server.registry.get(sid).is_some());
}

// ----------------------------------------------------------------- messages

#[actix_web::test]
async fn text_message_is_echoed() {
    let server = common::spawn(common::settings(quiet));
    let (mut ws, _) = open(&server, ECHO).await;
    send(&mut ws, Message::text("4hello")).await;
    assert_eq!(next_text(&mut ws).await, "4hello");
    send(&mut ws, Message::text("4héllo ✓")).await;
    assert_eq!(next_text(&mut ws).await, "4héllo ✓");
    send(&mut ws, Message::text("4")).await;
    assert_eq!(next_text(&mut ws).await, "4");
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
    let exact = format!("4{}", "a".repeat(63));
    send(&mut ws, Message::text(exact.clone())).await;
    assert_eq!(next_text(&mut ws).await, exact);
    send(&mut ws, Message::text(format!("4{}", "a".repeat(64)))).await;
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

/// A raw WebSocket connection: the handshake written by hand.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(server: &TestServer, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        let request = format!(
            "GET {path}?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..head_end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let n = within("bytes from the server", self.stream.read_buf(&mut self.buf))
            .await
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        n
    }

    /// Reads one (unmasked, unfragmented) server frame: opcode and payload.
    /// `None` if the connection ended first.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let n = within("a frame", self.stream.read_buf(&mut self.buf)).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; its status code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((0x8, payload)) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Some((0x1, _)) => continue, // a text frame before the close
                Some(other) => panic!("unexpected frame {other:?}"),
                None => panic!("the connection ended without a close frame"),
            }
        }
    }
}

/// A client frame: FIN, `opcode`, masked with a fixed key unless `mask` is false.
fn client_frame(opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, payload.len() as u8 | if mask { 0x80 } else { 0 }];
    if mask {
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

#[actix_web::test]
async fn text_frame_that_is_not_utf8_closes_with_1007() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    let (opcode, open) = raw.frame().await.expect("open packet");
    assert_eq!(opcode, 0x1);
    assert!(open.starts_with(b"0{"), "{:?}", String::from_utf8_lossy(&open));
    assert_eq!(server.registry.len(), 1);
    raw.stream
        .write_all(&client_frame(0x1, &[b'4', 0xff, 0xfe, b'x'], true))
        .await
        .unwrap();
    assert_eq!(raw.close_code().await, 1007);
    registry_empties(&server).await;
}

#[actix_web::test]
async fn valid_hand_built_frame_is_echoed() {
    // The raw client itself works: a correct masked frame is echoed.
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, ECHO).await;
    raw.frame().await.expect("open packet");
    raw.stream
        .write_all(&client_frame(0x1, "4é".as_bytes(), true))
        .await
        .unwrap();
    assert_eq!(raw.frame().await, Some((0x1, "4é".as_bytes().to_vec())));
}

#[actix_web::test]
async fn unmasked_client_frame_closes_the_connection() {
    let server = common::spawn(common::settings(quiet));
    let mut raw = RawWs::connect(&server, SIO).await;
    raw.frame().await.expect("open packet");
    raw.stream
        .write_all(&client_frame(0x1, b"4hello", false))
        .await
        .unwrap();
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
    send(&mut ws, Message::text("4still")).await;
    assert_eq!(next_text(&mut ws).await, "4still");
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
        assert!(
            waited >= Duration::from_millis(250),
            "round {round}: ping after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(2000),
            "round {round}: ping after {waited:?}"
        );
        send(&mut ws, Message::text("3")).await;
        since = Instant::now();
    }
    // Three rounds last longer than pingInterval + pingTimeout: still alive.
    send(&mut ws, Message::text("4alive")).await;
    loop {
        match next_text(&mut ws).await.as_str() {
            "2" => send(&mut ws, Message::text("3")).await,
            text => break assert_eq!(text, "4alive"),
        }
    }
}

#[actix_web::test]
async fn heartbeat_without_pong_closes_the_socket() {
    let server = common::spawn(common::settings(|_| {}));
    let (mut ws, _) = open(&server, SIO).await;
    assert_eq!(next_text(&mut ws).await, "2");
    let pinged = Instant::now();
    expect_close(&mut ws).await;
    let waited = pinged.elapsed();
    assert!(waited >= Duration::from_millis(100), "closed {waited:?} after the ping");
    assert!(waited < Duration::from_millis(2000), "closed {waited:?} after the ping");
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
    send(&mut first, Message::text("4first")).await;
    assert_eq!(next_text(&mut first).await, "4first");
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
    send(&mut ws, Message::text("4ws")).await;
    assert_eq!(next_text(&mut ws).await, "4ws");
}
