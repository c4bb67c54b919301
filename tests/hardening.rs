//! Hostile clients, round 2: each defence provoked through a real server.
//! - `server.max_connections`: at the cap one more Engine.IO handshake
//!   (polling GET and WebSocket upgrade, on either endpoint) is answered 503
//!   with `Retry-After` and the Engine.IO JSON body, counted in
//!   `roomcast_limit_breaches_total{limit="max_connections"}`; `/healthz`,
//!   `/readyz` (503: not ready at the cap) and `/metrics` keep answering; a
//!   session that ends frees its place;
//! - a validly signed JWT whose `exp` is above `i64::MAX` is refused with
//!   CONNECT_ERROR `invalid_token` (it used to panic the connection actor):
//!   the same connection and a bystander go on working;
//! - the API checks its Bearer key before it reads a body: a request with a
//!   wrong key and a `Content-Length` of 1 MB, whose body never comes, gets
//!   401 at once; a huge invalid JSON body with a wrong key gets 401 (not
//!   400); the right key still publishes, `openapi.json` needs none;
//! - the dashboard cannot be framed (`frame-ancestors 'none'`,
//!   `X-Frame-Options: DENY`);
//! - the audit database (SQLite, with its WAL files), the spill file and the
//!   directories roomcast creates for them are private to its user (0600,
//!   0700).
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::eio::{next_text, open, send, Polling, Ws};
use common::raw::{raw, raw_request, ws_request};
use common::{eventually, quiet, within, TestServer, ECHO, SIO};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A counter of `/metrics` (`name` with its labels; 0 when absent).
async fn counter(server: &TestServer, name: &str) -> u64 {
    let body = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

// ------------------------------------------------------ max_connections

fn polling_handshake(server: &TestServer, path: &str) -> String {
    format!("{}{path}?EIO=4&transport=polling", server.http())
}

/// The refusal at the cap: 503, a `Retry-After` of whole seconds, the
/// Engine.IO error body.
fn assert_at_capacity(status: u16, retry_after: Option<&str>, body: &[u8], what: &str) {
    assert_eq!(status, 503, "{what}");
    let retry: u64 = retry_after
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After: {e}"));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    let body: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(body, json!({"code": 3, "message": "Server at capacity"}), "{what}");
}

#[actix_web::test]
async fn sessions_beyond_max_connections_get_503() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.server.max_connections = 3;
    }));
    let http = reqwest::Client::new();
    // Three sessions: WebSocket and polling on the Socket.IO endpoint,
    // WebSocket on the echo endpoint (they share the cap).
    let (first, _) = open(&server, SIO).await;
    let polling = Polling::open(&server, SIO).await;
    let (_echo, _) = open(&server, ECHO).await;

    // A fourth: polling on either endpoint, then a WebSocket upgrade.
    for path in [SIO, ECHO] {
        let resp = http.get(polling_handshake(&server, path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body = resp.bytes().await.unwrap();
        assert_at_capacity(status, retry.as_deref(), &body, &format!("polling on {path}"));
    }
    let refused = raw_request(&server, &ws_request(&format!("{SIO}?EIO=4&transport=websocket"))).await;
    assert_at_capacity(
        refused.status,
        refused.header("retry-after"),
        &refused.body,
        &format!("WebSocket upgrade: {}", refused.head),
    );

    // The operations endpoints answer at the cap; /readyz with 503, so a
    // balancer sends new clients to another node.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = http.get(format!("{}{path}", server.http())).send().await.unwrap();
        let expected = if path == "/readyz" { 503 } else { 200 };
        assert_eq!(resp.status(), expected, "{path}");
    }
    assert_eq!(
        counter(&server, r#"roomcast_limit_breaches_total{limit="max_connections"}"#).await,
        3
    );
    // Upgrading a session already counted is not a new session.
    let mut upgraded = polling.upgrade(&server, SIO).await;
    send(&mut upgraded, "40").await;
    assert!(next_text(&mut upgraded).await.starts_with("40{"));
    assert_eq!(server.registry.len(), 2);

    // One session ends: its place is free again.
    drop(first);
    eventually("the closed session leaves", || async { server.registry.len() == 1 }).await;
    let (mut again, open_packet) = open(&server, SIO).await;
    assert!(open_packet["sid"].is_string());
    send(&mut again, "40").await;
    assert!(next_text(&mut again).await.starts_with("40{"));
    // And the cap holds again.
    let resp = http.get(polling_handshake(&server, SIO)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

// ---------------------------------------------------------------- JWT exp

const SECRET: &str = "hardening-secret-0123456789abcdef-0123";

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A client connected to `/` and subscribed to `watch`.
async fn watcher(server: &TestServer) -> Ws {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    send(&mut ws, r#"421["subscribe",{"room":"watch"}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"431[{"ok":true}]"#);
    ws
}

#[actix_web::test]
async fn a_token_expiring_after_the_end_of_time_is_invalid() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.socketio.namespaces = vec!["/".into(), "/private".into()];
        s.auth.anonymous_namespaces = vec!["/".into()];
        s.auth.anonymous_subscribe = vec!["*".into()];
        s.auth.anonymous_publish = vec!["*".into()];
        s.auth.jwt_algorithm = "HS256".into();
        s.auth.jwt_secret = SECRET.into();
        s.auth.jwt_audience = String::new();
    }));
    let mut by = watcher(&server).await;
    let (mut ws, _) = open(&server, SIO).await;
    for exp in [i64::MAX as u64 + 1, u64::MAX] {
        let token = sign(&json!({"sub": "ann", "exp": exp, "subscribe": ["*"]}));
        send(&mut ws, format!(r#"40/private,{{"token":"{token}"}}"#)).await;
        let reply = next_text(&mut ws).await;
        let data = reply
            .strip_prefix("44/private,")
            .unwrap_or_else(|| panic!("exp {exp}: not a CONNECT_ERROR: {reply}"));
        assert_eq!(
            serde_json::from_str::<Value>(data).unwrap(),
            json!({"message": "Invalid token", "data": {"code": "invalid_token"}}),
            "exp {exp}"
        );
    }
    // The connection lives on: a token whose `exp` is far away but
    // representable connects (and its expiry timer is armed without harm).
    let token = sign(&json!({"sub": "ann", "exp": i64::MAX as u64, "subscribe": ["*"]}));
    send(&mut ws, format!(r#"40/private,{{"token":"{token}"}}"#)).await;
    assert!(next_text(&mut ws).await.starts_with(r#"40/private,{"sid":"#));
    // So does the bystander, and a publish from this connection reaches it.
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    send(&mut ws, r#"422["publish",{"room":"watch","event":"news","data":1}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"432[{"ok":true,"recipients":1}]"#);
    assert_eq!(next_text(&mut by).await, r#"42["news",1]"#);
}

// -------------------------------------------------------------------- API

const KEY: &str = "hardening-api-key";

fn api_server() -> TestServer {
    common::spawn(common::settings(|s| {
        quiet(s);
        s.api.keys = vec![KEY.into()];
    }))
}

/// Reads one response's status and body (by `Content-Length`).
async fn read_answer(reader: &mut tokio::net::tcp::OwnedReadHalf) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            if buf.len() >= end + length {
                return (status, buf[end..end + length].to_vec());
            }
        }
        let n = reader.read_buf(&mut buf).await.expect("the response is readable");
        assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&buf));
    }
}

fn assert_unauthorized(status: u16, body: &[u8], what: &str) {
    assert_eq!(status, 401, "{what}");
    let body: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(body["error"]["code"], "unauthorized", "{what}");
}

#[actix_web::test]
async fn the_api_key_is_checked_before_the_body_is_read() {
    let server = api_server();
    // A body announced and never sent: the answer comes at once (the key
    // is wrong, absent, or not a Bearer one).
    for auth in ["Authorization: Bearer wrong\r\n", "", "Authorization: Basic eDp5\r\n"] {
        for target in ["/api/v1/publish", "/api/v1/sockets/x/join", "/api/v1/nowhere"] {
            let request = format!(
                "POST {target} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
                 Content-Length: 1000000\r\n\r\n"
            );
            let resp = tokio::time::timeout(Duration::from_secs(2), raw_request(&server, &request))
                .await
                .unwrap_or_else(|_| panic!("no answer before the body to {target} with {auth:?}"));
            assert_unauthorized(resp.status, &resp.body, &format!("{target} {auth:?}"));
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        }
    }
    // A huge body that is not JSON, sent whole: 401, not 400.
    let body = vec![b'{'; 900_000];
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut reader, mut writer) = raw(&server, head.as_bytes()).await.into_split();
    // Written alongside the read: the server may answer (and close) before
    // it all went.
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&body).await;
    });
    let (status, body) = within("the answer to a huge body", read_answer(&mut reader)).await;
    assert_unauthorized(status, &body, "huge invalid body");
    sending.abort();
    // The right key still works, and the OpenAPI document needs none.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v1/publish", server.http()))
        .bearer_auth(KEY)
        .json(&json!({"room": "r", "event": "e", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"local_recipients": 0, "cluster": false, "recipients": 0})
    );
    let resp = http
        .post(format!("{}/api/v1/publish", server.http()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a bad body with the right key");
    let resp = http
        .get(format!("{}/api/v1/openapi.json", server.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

// -------------------------------------------------------------- dashboard

#[actix_web::test]
async fn the_dashboard_cannot_be_framed() {
    let server = common::spawn(common::settings(quiet));
    let resp = reqwest::get(format!("{}/dashboard", server.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.split(';').any(|d| d.trim() == "frame-ancestors 'none'"), "{csp}");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
}

// ------------------------------------------------------ audit file modes

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A parse error that closes a connection: one audit row.
async fn cause_an_audit_row(server: &TestServer) {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "x").await;
    common::eio::expect_close(&mut ws).await;
}

#[actix_web::test]
async fn the_audit_database_and_its_directory_are_private() {
    let dir = common::scratch_dir("modes");
    let data = dir.join("data");
    let db = data.join("audit.db");
    let settings = common::settings(|s| {
        quiet(s);
        s.database.url = format!("sqlite://{}", db.display());
        s.audit.spill_file = data.join("spill.jsonl").display().to_string();
        s.audit.flush_interval_ms = 20;
    });
    let url = settings.database.url.clone();
    let server = common::spawn(settings);
    cause_an_audit_row(&server).await;
    let rows = common::audit::wait_rows(
        &common::audit::store(&url),
        roomcast::audit::store::AuditQuery::default(),
        1,
    )
    .await;
    assert!(!rows.is_empty());
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    for suffix in ["-wal", "-shm"] {
        let file = data.join(format!("audit.db{suffix}"));
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}

#[actix_web::test]
async fn the_spill_file_and_its_directory_are_private() {
    let dir = common::scratch_dir("modes");
    let spill_dir = dir.join("spill");
    let spill = spill_dir.join("audit-spill.jsonl");
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        // Nothing listens there: every row goes to the spill file.
        s.database.url = "postgres://roomcast@127.0.0.1:1/none".into();
        s.database.timeout_ms = 500;
        s.audit.spill_file = spill.display().to_string();
        s.audit.flush_interval_ms = 20;
    }));
    cause_an_audit_row(&server).await;
    eventually("a row is spilled", || async { spill.exists() }).await;
    assert_eq!(mode(&spill_dir), 0o700, "{}", spill_dir.display());
    assert_eq!(mode(&spill), 0o600, "{}", spill.display());
}
