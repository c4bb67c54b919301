//! The raw WebSocket echo endpoint (`server.ws_echo_path`), the target of
//! scripts/autobahn, with frames written by hand.
//!
//! Covers:
//! - off by default (404); a request that is not a WebSocket handshake
//!   gets 400; the path is served with and without its trailing slash;
//! - text (non-ASCII) and binary messages echoed as received, a fragmented
//!   message echoed whole, with a ping between its fragments answered first;
//! - pings answered with their payload; a close frame answered with the
//!   same code (1000, 4000) or with none when it had none;
//! - close 1007 for text that is not UTF-8 (one frame or fragmented);
//! - close 1002 for reserved bits, an unknown opcode, a continuation with
//!   nothing to continue, a reserved close code, a one-byte close payload,
//!   a ping above 125 bytes, a fragmented ping;
//! - close 1009 for a frame above `engine.max_payload`, and for a message
//!   whose fragments add up to more (the text actix-ws reports it with).
mod common;

use common::raw::{raw_request, ws_request, RawWs};
use common::TestServer;
use tokio::io::AsyncWriteExt as _;

const PATH: &str = "/autobahn/";
const MAX_PAYLOAD: usize = 1000;

fn server() -> TestServer {
    common::spawn(common::settings(|s| {
        s.server.ws_echo_path = PATH.into();
        s.engine.max_payload = MAX_PAYLOAD;
    }))
}

/// A masked client frame: first byte `b0` (FIN, RSV, opcode) and payload.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![b0];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

async fn send(ws: &mut RawWs, bytes: &[u8]) {
    ws.stream.write_all(bytes).await.unwrap();
}

/// Sends `frames` on a new connection and returns the close code the
/// server answers with.
async fn close_code_after(server: &TestServer, frames: &[Vec<u8>]) -> u16 {
    let mut ws = RawWs::connect(server, PATH).await;
    for f in frames {
        send(&mut ws, f).await;
    }
    ws.close_code().await
}

#[actix_web::test]
async fn disabled_by_default_and_refuses_plain_requests() {
    let off = common::spawn(common::settings(|_| {}));
    let resp = raw_request(&off, &ws_request(PATH)).await;
    assert_eq!(resp.status, 404, "{}", resp.head);

    let server = server();
    let resp = raw_request(&server, "GET /autobahn/ HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{}", resp.head);
    let resp = raw_request(&server, &ws_request("/autobahn")).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
}

#[actix_web::test]
async fn messages_are_echoed_as_received() {
    let server = server();
    let mut ws = RawWs::connect(&server, PATH).await;
    send(&mut ws, &frame(FIN | TEXT, "héllo".as_bytes())).await;
    assert_eq!(ws.frame().await, Some((TEXT, "héllo".as_bytes().to_vec())));
    send(&mut ws, &frame(FIN | BINARY, &[0, 0xff, 1])).await;
    assert_eq!(ws.frame().await, Some((BINARY, vec![0, 0xff, 1])));
    send(&mut ws, &frame(FIN | TEXT, b"")).await;
    assert_eq!(ws.frame().await, Some((TEXT, vec![])));
    // Exactly max_payload is accepted.
    let big = vec![b'x'; MAX_PAYLOAD];
    send(&mut ws, &frame(FIN | BINARY, &big)).await;
    assert_eq!(ws.frame().await, Some((BINARY, big)));

    // A fragmented message comes back whole; the ping between its
    // fragments is answered at once.
    let mut bytes = frame(TEXT, b"frag");
    bytes.extend(frame(FIN | PING, b"p"));
    bytes.extend(frame(CONT, b"men"));
    bytes.extend(frame(FIN | CONT, "té".as_bytes()));
    send(&mut ws, &bytes).await;
    assert_eq!(ws.frame().await, Some((PONG, b"p".to_vec())));
    assert_eq!(ws.frame().await, Some((TEXT, "fragmenté".as_bytes().to_vec())));

    // Pongs are ignored; pings answered with their payload.
    send(&mut ws, &frame(FIN | PONG, b"unsolicited")).await;
    send(&mut ws, &frame(FIN | PING, b"ping payload")).await;
    assert_eq!(ws.frame().await, Some((PONG, b"ping payload".to_vec())));
}

#[actix_web::test]
async fn close_frames_are_answered_with_their_code() {
    let server = server();
    for code in [1000u16, 1001, 3000, 4000, 4999] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let got = close_code_after(&server, &[frame(FIN | CLOSE, &payload)]).await;
        assert_eq!(got, code);
    }
    // A close without a code is answered without one, and the connection
    // ends.
    let mut ws = RawWs::connect(&server, PATH).await;
    send(&mut ws, &frame(FIN | CLOSE, b"")).await;
    assert_eq!(ws.frame().await, Some((CLOSE, vec![])));
    assert_eq!(ws.frame().await, None);
}

#[actix_web::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = server();
    let bad = [0xce, 0xba, 0xed, 0xa0, 0x80, b'x'];
    assert_eq!(close_code_after(&server, &[frame(FIN | TEXT, &bad)]).await, 1007);
    let fragments = [frame(TEXT, &bad[..3]), frame(FIN | CONT, &bad[3..])];
    assert_eq!(close_code_after(&server, &fragments).await, 1007);
}

#[actix_web::test]
async fn protocol_errors_close_with_1002() {
    let server = server();
    let cases: [(&str, Vec<u8>); 7] = [
        ("reserved bits", frame(FIN | 0x40 | TEXT, b"x")),
        ("unknown opcode", frame(FIN | 0x3, b"x")),
        ("continuation of nothing", frame(FIN | CONT, b"x")),
        ("reserved close code", frame(FIN | CLOSE, &1005u16.to_be_bytes())),
        ("one-byte close payload", frame(FIN | CLOSE, &[3])),
        ("ping above 125 bytes", frame(FIN | PING, &[b'p'; 126])),
        ("fragmented ping", frame(PING, b"p")),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_after(&server, &[bytes]).await, 1002, "{what}");
    }
}

#[actix_web::test]
async fn messages_above_max_payload_close_with_1009() {
    let server = server();
    let big = vec![b'x'; MAX_PAYLOAD + 1];
    assert_eq!(close_code_after(&server, &[frame(FIN | BINARY, &big)]).await, 1009);
    // Fragments of at most max_payload each, more in all.
    let half = vec![b'x'; MAX_PAYLOAD / 2 + 1];
    let fragments = [frame(TEXT, &half), frame(FIN | CONT, &half)];
    assert_eq!(close_code_after(&server, &fragments).await, 1009);
}
