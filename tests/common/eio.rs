//! Engine.IO clients: a long-polling session (`Polling`), a WebSocket (`Ws`),
//! and assertions on what the server answers.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{within, TestServer};

/// A WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ------------------------------------------------------------ HTTP errors

/// Asserts an Engine.IO HTTP error: status, JSON content type, exact body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: u8, message: &str) {
    check_error(resp, status, code, message, true).await;
}

/// Asserts an Engine.IO HTTP error: status and exact body (the content type
/// is not looked at).
pub async fn assert_error_body(resp: reqwest::Response, status: u16, code: u8, message: &str) {
    check_error(resp, status, code, message, false).await;
}

async fn check_error(resp: reqwest::Response, status: u16, code: u8, message: &str, json_content_type: bool) {
    assert_eq!(resp.status().as_u16(), status, "status for expected code {code}");
    if json_content_type {
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content type {ct:?}");
    }
    let body = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v, json!({"code": code, "message": message}), "body {body}");
}

// ----------------------------------------------------------- open packets

/// The data of an open packet `0{…}`.
pub fn parse_open(packet: &str) -> Value {
    assert!(packet.starts_with("0{"), "not an open packet: {packet:?}");
    serde_json::from_str(&packet[1..]).unwrap_or_else(|e| panic!("{e}: {packet:?}"))
}

/// Asserts an open packet's data under `settings(|_| {})`: exactly the five
/// keys, `upgrades`, the test heartbeat and the default `maxPayload`.
pub fn assert_open_defaults(open: &Value, upgrades: Value) {
    let mut keys: Vec<&str> = open.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert_eq!(open["upgrades"], upgrades);
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
}

/// Asserts that `sid` is at least 22 characters of URL-safe base64.
pub fn assert_sid_shape(sid: &str) {
    assert!(sid.len() >= 22, "sid too short: {sid:?}");
    assert!(
        sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "sid not URL-safe base64: {sid:?}"
    );
}

// -------------------------------------------------------------- heartbeat

/// Asserts the time `waited` for a heartbeat ping (`pingInterval` 300 ms
/// under `settings`).
pub fn assert_ping_delay(round: usize, waited: Duration) {
    assert!(
        waited >= Duration::from_millis(250),
        "round {round}: ping after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2000),
        "round {round}: ping after {waited:?}"
    );
}

/// Asserts the time `waited` between an unanswered ping and the end of the
/// session (`pingTimeout` 200 ms under `settings`).
pub fn assert_ping_timeout_delay(waited: Duration) {
    assert!(waited >= Duration::from_millis(100), "closed {waited:?} after the ping");
    assert!(waited < Duration::from_millis(2000), "closed {waited:?} after the ping");
}

// ---------------------------------------------------------------- polling

/// A polling client of one session.
pub struct Polling {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:PORT/path/`
    pub base: String,
    pub sid: String,
    /// The open packet's data.
    pub open: Value,
    /// The `Content-Type` of `post`; `None` sends none.
    pub content_type: Option<&'static str>,
}

impl Polling {
    /// Starts a POST on this session's endpoint whose head announces
    /// `content_length` bytes and whose body is only `body`: the connection,
    /// with the rest of the body never sent.
    pub async fn partial_post(&self, server: &TestServer, content_length: usize, body: &str) -> TcpStream {
        let path = self.base.trim_start_matches(&server.http());
        let head = format!(
            "POST {path}?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: text/plain\r\nContent-Length: {content_length}\r\n\r\n{body}",
            self.sid
        );
        super::raw::raw(server, head.as_bytes()).await
    }

    /// Handshakes on `path` (must answer 200 with an open packet); POSTs will
    /// be `text/plain;charset=UTF-8`.
    pub async fn open(server: &TestServer, path: &str) -> Polling {
        Self::open_at(&format!("{}{}", server.http(), path)).await
    }

    /// [`Polling::open`] at `base` (`http://host:port/path/`).
    pub async fn open_at(base: &str) -> Polling {
        let client = reqwest::Client::new();
        let base = base.to_owned();
        let resp = within(
            "handshake",
            client.get(format!("{base}?EIO=4&transport=polling")).send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let open = parse_open(&resp.text().await.unwrap());
        let sid = open["sid"].as_str().expect("sid is a string").to_owned();
        Polling {
            client,
            base,
            sid,
            open,
            content_type: Some("text/plain;charset=UTF-8"),
        }
    }

    pub fn url(&self) -> String {
        format!("{}?EIO=4&transport=polling&sid={}", self.base, self.sid)
    }

    pub fn get(&self) -> impl Future<Output = reqwest::Response> + Send + 'static {
        let req = self.client.get(self.url()).send();
        async move { within("GET", req).await.expect("GET completes") }
    }

    /// A GET that must succeed; its body.
    pub async fn get_ok(&self) -> String {
        let resp = self.get().await;
        assert_eq!(resp.status().as_u16(), 200, "GET status");
        resp.text().await.unwrap()
    }

    pub fn post(&self, body: impl Into<reqwest::Body>) -> impl Future<Output = reqwest::Response> + Send + 'static {
        let mut req = self.client.post(self.url());
        if let Some(ct) = self.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let req = req.body(body).send();
        async move { within("POST", req).await.expect("POST completes") }
    }

    /// A POST that must succeed with `ok`.
    pub async fn post_ok(&self, body: impl Into<reqwest::Body>) {
        let resp = self.post(body).await;
        assert_eq!(resp.status().as_u16(), 200, "POST status");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }

    /// The session is gone: a GET is refused with code 1.
    pub async fn assert_gone(&self) {
        assert_error(self.get().await, 400, 1, "Session ID unknown").await;
    }

    /// Opens a WebSocket with this session's sid.
    pub async fn websocket(&self, server: &TestServer, path: &str) -> Ws {
        connect(server, path, Some(&self.sid)).await
    }

    /// Opens a WebSocket with this session's sid and probes it (`2probe` →
    /// `3probe`); the upgrade is not completed.
    pub async fn probe(&self, server: &TestServer, path: &str) -> Ws {
        let mut ws = self.websocket(server, path).await;
        send(&mut ws, "2probe").await;
        assert_eq!(next_text(&mut ws).await, "3probe");
        ws
    }

    /// Probes and completes an upgrade on a new WebSocket.
    pub async fn upgrade(&self, server: &TestServer, path: &str) -> Ws {
        let mut ws = self.probe(server, path).await;
        send(&mut ws, "5").await;
        ws
    }
}

/// Asserts that a spawned request has not completed within 100 ms (it is
/// held by the server).
pub async fn assert_held<T>(task: &mut tokio::task::JoinHandle<T>) {
    let waited = tokio::time::timeout(Duration::from_millis(100), task).await;
    assert!(waited.is_err(), "the GET was answered although nothing was sent");
}

/// Awaits a held GET, which must then succeed with `body`.
pub async fn assert_answered(pending: tokio::task::JoinHandle<reqwest::Response>, body: &str) {
    let resp = within("the held GET", pending).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), body);
}

// -------------------------------------------------------------- WebSocket

/// Opens a WebSocket on `path` (with `sid` if given); the handshake must
/// succeed with 101.
pub async fn connect(server: &TestServer, path: &str, sid: Option<&str>) -> Ws {
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

/// Opens a WebSocket-only session; the socket and the open packet's data.
/// A Socket.IO client in "/" over WebSocket, subscribed to `room` (the
/// application protocol of docs/protocol.md).
pub async fn member(server: &TestServer, room: &str) -> Ws {
    let (mut ws, _) = open(server, super::SIO).await;
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    send(&mut ws, format!(r#"421["subscribe",{{"room":"{room}"}}]"#)).await;
    assert_eq!(next_text(&mut ws).await, r#"431[{"ok":true}]"#);
    ws
}

pub async fn open(server: &TestServer, path: &str) -> (Ws, Value) {
    let mut ws = connect(server, path, None).await;
    let open = parse_open(&next_text(&mut ws).await);
    (ws, open)
}

/// Sends a message (`&str` and `String` are text).
pub async fn send(ws: &mut Ws, message: impl Into<Message>) {
    within("send", ws.send(message.into())).await.expect("send succeeds");
}

/// The next message; panics if the socket ended.
pub async fn next(ws: &mut Ws) -> Message {
    within("a WebSocket message", ws.next())
        .await
        .expect("the socket ended")
        .expect("the socket failed")
}

/// The next message, which must be text.
pub async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Expects the server's close frame as the next message; its code.
pub async fn expect_close(ws: &mut Ws) -> u16 {
    match next(ws).await {
        Message::Close(Some(frame)) => u16::from(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Sends `text` and expects it back as the next message.
pub async fn assert_echo(ws: &mut Ws, text: &str) {
    send(ws, text).await;
    assert_eq!(next_text(ws).await, text);
}

/// Sends `text` and expects it back, answering heartbeat pings (`2`) that
/// come first.
pub async fn assert_echo_answering_pings(ws: &mut Ws, text: &str) {
    send(ws, text).await;
    loop {
        match next_text(ws).await.as_str() {
            "2" => send(ws, "3").await,
            got => break assert_eq!(got, text),
        }
    }
}
