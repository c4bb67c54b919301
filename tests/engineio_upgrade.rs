//! Engine.IO v4 upgrade from HTTP long-polling to WebSocket, end to end.
//!
//! Covers:
//! - the happy path: a WebSocket with the sid, `2probe` → `3probe`, a GET
//!   pending at probe time is answered with the noop `6`, `5` completes the
//!   upgrade, then `4hello` on the WebSocket is echoed on the WebSocket;
//! - messages buffered for the client before the upgrade completes (before
//!   the probe, and POSTed while polling is paused) arrive on the WebSocket
//!   after `5`, in order, none lost; a GET while paused gets only `6`;
//! - after the upgrade: polling GET and POST are refused (400 code 3), a
//!   second WebSocket with the sid gets `101` and is closed at once while the
//!   first keeps working, the heartbeat runs on the WebSocket;
//! - a second WebSocket while an upgrade is under way is closed, the probe
//!   still completes;
//! - failed upgrades leave the polling session working: a probe that sends
//!   garbage instead of `2probe`, one that sends garbage instead of `5`
//!   (data POSTed while paused then goes to polling), one that never sends
//!   `5` (closed after `upgrade_timeout_ms`), one the client closes; the
//!   session can upgrade again afterwards;
//! - a WebSocket with an unknown sid: 400 code 1, no socket.
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

async fn assert_error(resp: reqwest::Response, status: u16, code: u8, message: &str) {
    assert_eq!(resp.status().as_u16(), status, "status for expected code {code}");
    let body = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v, json!({"code": code, "message": message}), "body {body}");
}

/// A polling client of one session.
struct Polling {
    client: reqwest::Client,
    base: String,
    sid: String,
}

impl Polling {
    async fn open(server: &TestServer, path: &str) -> Polling {
        let client = reqwest::Client::new();
        let base = format!("{}{}", server.http(), path);
        let body = within(
            "handshake",
            client.get(format!("{base}?EIO=4&transport=polling")).send(),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        assert!(body.starts_with("0{"), "{body:?}");
        let open: Value = serde_json::from_str(&body[1..]).unwrap();
        assert_eq!(open["upgrades"], json!(["websocket"]));
        let sid = open["sid"].as_str().unwrap().to_owned();
        Polling { client, base, sid }
    }

    fn url(&self) -> String {
        format!("{}?EIO=4&transport=polling&sid={}", self.base, self.sid)
    }

    fn get(&self) -> impl Future<Output = reqwest::Response> + Send + 'static {
        let req = self.client.get(self.url()).send();
        async move { within("GET", req).await.expect("GET completes") }
    }

    async fn get_ok(&self) -> String {
        let resp = self.get().await;
        assert_eq!(resp.status().as_u16(), 200, "GET status");
        resp.text().await.unwrap()
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        within("POST", self.client.post(self.url()).body(body).send())
            .await
            .expect("POST completes")
    }

    async fn post_ok(&self, body: impl Into<reqwest::Body>) {
        let resp = self.post(body).await;
        assert_eq!(resp.status().as_u16(), 200, "POST status");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }

    /// Opens a WebSocket with this session's sid.
    async fn websocket(&self, server: &TestServer, path: &str) -> Ws {
        let url = format!("{}{path}?EIO=4&transport=websocket&sid={}", server.ws(), self.sid);
        let (ws, resp) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket handshake succeeds");
        assert_eq!(resp.status().as_u16(), 101);
        ws
    }

    /// Probes and completes an upgrade on a new WebSocket.
    async fn upgrade(&self, server: &TestServer, path: &str) -> Ws {
        let mut ws = self.websocket(server, path).await;
        send(&mut ws, "2probe").await;
        assert_eq!(next_text(&mut ws).await, "3probe");
        send(&mut ws, "5").await;
        ws
    }
}

/// Asserts that a spawned request has not completed within 100 ms.
async fn assert_held<T>(task: &mut tokio::task::JoinHandle<T>) {
    let waited = tokio::time::timeout(Duration::from_millis(100), task).await;
    assert!(waited.is_err(), "the GET was answered although nothing was sent");
}

async fn send(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text)))
        .await
        .expect("send succeeds");
}

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

async fn expect_close(ws: &mut Ws) -> u16 {
    match next(ws).await {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Polling works: a POSTed message comes back on the next GET.
async fn polling_works(p: &Polling, text: &str) {
    p.post_ok(format!("4{text}")).await;
    assert_eq!(p.get_ok().await, format!("4{text}"));
}

// --------------------------------------------------------------- happy path

#[actix_web::test]
async fn upgrade_completes_and_a_pending_get_gets_noop() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut pending = tokio::spawn(p.get());
    assert_held(&mut pending).await;
    let mut ws = p.websocket(&server, ECHO).await;
    send(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    let held = within("the pending GET", pending).await.unwrap();
    assert_eq!(held.status().as_u16(), 200);
    assert_eq!(held.text().await.unwrap(), "6");
    send(&mut ws, "5").await;
    send(&mut ws, "4hello").await;
    assert_eq!(next_text(&mut ws).await, "4hello");
    ws.send(Message::binary(vec![9u8, 8, 7])).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert_eq!(&b[..], [9, 8, 7]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[actix_web::test]
async fn upgrade_keeps_the_session_in_the_registry() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    let mut ws = p.upgrade(&server, SIO).await;
    // A WebSocket ping is answered by the session after it handled the `5`
    // read before it: once the pong is back, the upgrade is done.
    within("ping", ws.send(Message::Ping(b"sync"[..].into())))
        .await
        .unwrap();
    match next(&mut ws).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"sync"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert_eq!(server.registry.len(), 1);
    assert!(server.registry.get(&p.sid).is_some());
    assert_error(p.get().await, 400, 3, "Bad request").await;
}

#[actix_web::test]
async fn messages_buffered_before_the_upgrade_arrive_on_the_websocket_in_order() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    // Echoed while nobody polls: buffered.
    p.post_ok("4before").await;
    let mut ws = p.websocket(&server, ECHO).await;
    send(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    // Polling is paused now: POSTs still go in, their echoes wait.
    p.post_ok("4during1\x1e4during2").await;
    p.post_ok("bAQID").await;
    // A GET while paused gets a noop, not the data.
    assert_eq!(p.get_ok().await, "6");
    send(&mut ws, "5").await;
    assert_eq!(next_text(&mut ws).await, "4before");
    assert_eq!(next_text(&mut ws).await, "4during1");
    assert_eq!(next_text(&mut ws).await, "4during2");
    match next(&mut ws).await {
        Message::Binary(b) => assert_eq!(&b[..], [1, 2, 3]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    send(&mut ws, "4after").await;
    assert_eq!(next_text(&mut ws).await, "4after");
}

// ------------------------------------------------------------ after upgrade

#[actix_web::test]
async fn polling_after_the_upgrade_is_refused_with_code_3() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    // Once "5" was processed (its effect observed), polling is over.
    send(&mut ws, "4sync").await;
    assert_eq!(next_text(&mut ws).await, "4sync");
    assert_error(p.get().await, 400, 3, "Bad request").await;
    assert_error(p.post("4lost").await, 400, 3, "Bad request").await;
    // The session is still fine, and the refused POST's message never got in.
    send(&mut ws, "4ws").await;
    assert_eq!(next_text(&mut ws).await, "4ws");
}

#[actix_web::test]
async fn second_websocket_after_the_upgrade_is_closed_and_the_first_keeps_working() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    send(&mut ws, "4sync").await;
    assert_eq!(next_text(&mut ws).await, "4sync");
    let mut second = p.websocket(&server, ECHO).await;
    expect_close(&mut second).await;
    send(&mut ws, "4first").await;
    assert_eq!(next_text(&mut ws).await, "4first");
}

#[actix_web::test]
async fn second_websocket_during_an_upgrade_is_closed_and_the_probe_completes() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut probe = p.websocket(&server, ECHO).await;
    send(&mut probe, "2probe").await;
    assert_eq!(next_text(&mut probe).await, "3probe");
    let mut second = p.websocket(&server, ECHO).await;
    expect_close(&mut second).await;
    send(&mut probe, "5").await;
    send(&mut probe, "4hello").await;
    assert_eq!(next_text(&mut probe).await, "4hello");
}

#[actix_web::test]
async fn heartbeat_runs_on_the_websocket_after_the_upgrade() {
    let server = common::spawn(common::settings(|_| {}));
    let p = Polling::open(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    // Three pings answered on the WebSocket outlast pingInterval + pingTimeout.
    for round in 0..3 {
        assert_eq!(next_text(&mut ws).await, "2", "round {round}");
        send(&mut ws, "3").await;
    }
    send(&mut ws, "4alive").await;
    loop {
        match next_text(&mut ws).await.as_str() {
            "2" => send(&mut ws, "3").await,
            text => break assert_eq!(text, "4alive"),
        }
    }
}

// ---------------------------------------------------------- failed upgrades

#[actix_web::test]
async fn garbage_instead_of_probe_closes_the_probe_and_polling_continues() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    for garbage in ["4x", "abc", "5", "2notprobe"] {
        let mut probe = p.websocket(&server, ECHO).await;
        send(&mut probe, garbage).await;
        expect_close(&mut probe).await;
        polling_works(&p, "still polling").await;
    }
    // The session can still upgrade.
    let mut ws = p.upgrade(&server, ECHO).await;
    send(&mut ws, "4upgraded").await;
    assert_eq!(next_text(&mut ws).await, "4upgraded");
}

#[actix_web::test]
async fn garbage_instead_of_upgrade_packet_resumes_polling() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut probe = p.websocket(&server, ECHO).await;
    send(&mut probe, "2probe").await;
    assert_eq!(next_text(&mut probe).await, "3probe");
    // Echoed while polling is paused: waits.
    p.post_ok("4paused").await;
    send(&mut probe, "4x").await;
    expect_close(&mut probe).await;
    // Polling resumed: the waiting echo comes on the next GET.
    assert_eq!(p.get_ok().await, "4paused");
    polling_works(&p, "again").await;
}

#[actix_web::test]
async fn probe_without_upgrade_packet_is_closed_after_the_upgrade_timeout() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.upgrade_timeout_ms = 300;
    }));
    let p = Polling::open(&server, ECHO).await;
    let opened = Instant::now();
    let mut probe = p.websocket(&server, ECHO).await;
    send(&mut probe, "2probe").await;
    assert_eq!(next_text(&mut probe).await, "3probe");
    expect_close(&mut probe).await;
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(250), "probe closed after {waited:?}");
    assert!(waited < Duration::from_millis(3000), "probe closed after {waited:?}");
    polling_works(&p, "after timeout").await;
    // And it can upgrade again.
    let mut ws = p.upgrade(&server, ECHO).await;
    send(&mut ws, "4upgraded").await;
    assert_eq!(next_text(&mut ws).await, "4upgraded");
}

#[actix_web::test]
async fn probe_closed_by_the_client_resumes_polling() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut probe = p.websocket(&server, ECHO).await;
    send(&mut probe, "2probe").await;
    assert_eq!(next_text(&mut probe).await, "3probe");
    p.post_ok("4paused").await;
    within("close", probe.close(None)).await.unwrap();
    // The server lets go of the probe once it knows; then the stream ends.
    while let Some(Ok(message)) = within("the end of the probe", probe.next()).await {
        assert!(matches!(message, Message::Close(_)), "after the close: {message:?}");
    }
    assert_eq!(p.get_ok().await, "4paused");
    polling_works(&p, "again").await;
}

// --------------------------------------------------------------- unknown sid

#[actix_web::test]
async fn websocket_with_unknown_sid_is_400_code_1() {
    let server = common::spawn(common::settings(quiet));
    let _p = Polling::open(&server, SIO).await;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let request = format!(
        "GET {SIO}?EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: localhost\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = within("the response", stream.read_buf(&mut buf)).await.unwrap();
        assert!(n > 0, "closed without a response");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content length");
    while buf.len() < head_end + length {
        let n = within("the body", stream.read_buf(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the body");
    }
    let v: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    assert_eq!(v, json!({"code": 1, "message": "Session ID unknown"}));
    assert_eq!(server.registry.len(), 1, "only the polling session exists");

    // The same through a WebSocket client: the handshake fails.
    let url = format!("{}{SIO}?EIO=4&transport=websocket&sid=nope", server.ws());
    match within("handshake", tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 400)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a WebSocket with an unknown sid was accepted"),
    }
}
