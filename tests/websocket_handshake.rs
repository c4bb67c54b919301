//! The WebSocket opening handshake (RFC 6455 §4.2), with requests written by
//! hand over TCP so every header is under the test's control.
//!
//! Covers:
//! - refused handshakes, each with 400, the Engine.IO JSON body (code 3) and
//!   no session created: no `Upgrade`, a wrong `Upgrade`, no `Connection:
//!   Upgrade`, no `Sec-WebSocket-Key`, keys that are not 16 bytes of base64,
//!   `Sec-WebSocket-Version` 12 or missing; a plain GET with
//!   `transport=websocket` (no upgrade headers at all);
//! - accepted handshakes: `101`, `Upgrade: websocket`, `Connection: upgrade`,
//!   `Sec-WebSocket-Accept` = base64(sha1(key + GUID)) (the RFC 6455 §1.3
//!   example, `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`, and random keys), a session registered, the open packet as the first
//!   frame; `Connection: keep-alive, Upgrade` (Firefox) and a mixed-case
//!   `Upgrade: WebSocket` are accepted;
//! - no `Sec-WebSocket-Extensions` in the response (and an uncompressed first
//!   frame) even when the client offers `permessage-deflate`;
//! - subprotocols: with `chat`, `v2` configured, an offer of `foo, v2` (or
//!   `foo` and `v2` in two headers) gets `v2`, an offer of `foo` gets none;
//!   with none configured, none is ever returned;
//! - the socket handed over at the upgrade (src/transport/handover.rs):
//!   frames the client sends in the same write as its request are read; a
//!   refused upgrade, or any other route's answer to an upgrade request, is
//!   written whole with `Connection: close` and its connection ends.
mod common;

use base64::Engine as _;
use common::eio::parse_open;
use common::raw::{client_frame, raw, raw_request, read_response, ws_request, RawResponse, RawWs, RFC_KEY};
use common::{TestServer, ECHO, SIO};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The accept value of `RFC_KEY` (RFC 6455 §1.3), base64(sha1(key +
/// "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Sends `GET {target}` with exactly `headers` and reads the response.
async fn request(server: &TestServer, target: &str, headers: &[&str]) -> RawResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", server.port);
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw_request(server, &req).await
}

/// Asserts a 400 with the Engine.IO body for `code`.
fn assert_refused(resp: &RawResponse, code: u8, message: &str, case: &str) {
    assert_eq!(resp.status, 400, "{case}:\n{}", resp.head);
    let v: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{case}: {e}: {:?}", String::from_utf8_lossy(&resp.body)));
    assert_eq!(v, json!({"code": code, "message": message}), "{case}");
    assert!(resp.header("Sec-WebSocket-Accept").is_none(), "{case}");
}

/// The first server frame after a 101: its first byte (FIN, RSV bits,
/// opcode) and payload; the connection stays open as long as `ws` lives.
async fn first_frame(ws: &mut RawWs) -> (u8, Vec<u8>) {
    ws.read_frame()
        .await
        .expect("the connection ended before the first frame")
}

fn target(path: &str) -> String {
    format!("{path}?EIO=4&transport=websocket")
}

/// The headers of a valid handshake, with `key`.
fn good(key: &str) -> Vec<String> {
    vec![
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        format!("Sec-WebSocket-Key: {key}"),
        "Sec-WebSocket-Version: 13".into(),
    ]
}

/// `good(RFC_KEY)` with the header starting with `name:` replaced by
/// `with` (or removed when `with` is `None`), plus `extra`.
fn variant(name: &str, with: Option<&str>, extra: &[&str]) -> Vec<String> {
    let mut headers: Vec<String> = good(RFC_KEY)
        .into_iter()
        .filter_map(|h| {
            if h.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                with.map(str::to_owned)
            } else {
                Some(h)
            }
        })
        .collect();
    headers.extend(extra.iter().map(|s| s.to_string()));
    headers
}

fn refs(headers: &[String]) -> Vec<&str> {
    headers.iter().map(String::as_str).collect()
}

// ------------------------------------------------------------------ refused

#[actix_web::test]
async fn malformed_handshakes_are_refused_without_a_session() {
    let server = common::spawn(common::settings(|_| {}));
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no Upgrade", variant("Upgrade", None, &[])),
        ("Upgrade: h2c", variant("Upgrade", Some("Upgrade: h2c"), &[])),
        ("no Connection", variant("Connection", None, &[])),
        (
            "Connection: keep-alive",
            variant("Connection", Some("Connection: keep-alive"), &[]),
        ),
        ("no key", variant("Sec-WebSocket-Key", None, &[])),
        // base64 of 10 bytes ("the sample").
        (
            "short key",
            variant("Sec-WebSocket-Key", Some("Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="), &[]),
        ),
        // 24 characters, but 17 bytes.
        (
            "17-byte key",
            variant(
                "Sec-WebSocket-Key",
                Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="),
                &[],
            ),
        ),
        (
            "key not base64",
            variant(
                "Sec-WebSocket-Key",
                Some("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="),
                &[],
            ),
        ),
        (
            "empty key",
            variant("Sec-WebSocket-Key", Some("Sec-WebSocket-Key: "), &[]),
        ),
        (
            "version 12",
            variant("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 12"), &[]),
        ),
        ("no version", variant("Sec-WebSocket-Version", None, &[])),
    ];
    for (case, headers) in &cases {
        for path in [SIO, ECHO] {
            let resp = request(&server, &target(path), &refs(headers)).await;
            assert_refused(&resp, 3, "Bad request", case);
        }
        assert_eq!(server.registry.len(), 0, "{case}: a session was created");
    }
    // The same server accepts a good handshake: the refusals were about the headers.
    let resp = request(&server, &target(SIO), &refs(&good(RFC_KEY))).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(server.registry.len(), 1);
}

#[actix_web::test]
async fn plain_get_with_transport_websocket_is_400_code_3() {
    let server = common::spawn(common::settings(|_| {}));
    let resp = reqwest::get(format!("{}{}", server.http(), target(SIO))).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"code": 3, "message": "Bad request"}));
    assert!(server.registry.is_empty());
}

// ----------------------------------------------------------------- accepted

#[actix_web::test]
async fn rfc_example_key_is_accepted_with_the_rfc_accept_value() {
    let server = common::spawn(common::settings(|_| {}));
    let resp = request(&server, &target(SIO), &refs(&good(RFC_KEY))).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(resp.header("Sec-WebSocket-Accept"), Some(RFC_ACCEPT));
    assert!(resp.header("Upgrade").unwrap().eq_ignore_ascii_case("websocket"));
    assert!(resp
        .header("Connection")
        .unwrap()
        .to_ascii_lowercase()
        .contains("upgrade"));
    assert_eq!(server.registry.len(), 1);
    let mut ws = resp.into_ws();
    let (b0, payload) = first_frame(&mut ws).await;
    assert_eq!(b0, 0x81, "a final, uncompressed text frame");
    let open = parse_open(&String::from_utf8(payload).unwrap());
    assert_eq!(open["upgrades"], json!([]));
    assert!(server.registry.get(open["sid"].as_str().unwrap()).is_some());
}

#[actix_web::test]
async fn random_key_gets_base64_sha1_of_key_and_guid() {
    let server = common::spawn(common::settings(|_| {}));
    for _ in 0..3 {
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let resp = request(&server, &target(ECHO), &refs(&good(&key))).await;
        assert_eq!(resp.status, 101, "{}", resp.head);
        let expected = derive_accept_key(key.as_bytes());
        assert_eq!(
            resp.header("Sec-WebSocket-Accept"),
            Some(expected.as_str()),
            "key {key}"
        );
    }
}

#[actix_web::test]
async fn connection_header_with_several_tokens_and_mixed_case_upgrade_are_accepted() {
    let server = common::spawn(common::settings(|_| {}));
    let firefox = variant("Connection", Some("Connection: keep-alive, Upgrade"), &[]);
    let resp = request(&server, &target(SIO), &refs(&firefox)).await;
    assert_eq!(resp.status, 101, "Connection: keep-alive, Upgrade\n{}", resp.head);
    let mixed = variant("Upgrade", Some("Upgrade: WebSocket"), &[]);
    let resp = request(&server, &target(SIO), &refs(&mixed)).await;
    assert_eq!(resp.status, 101, "Upgrade: WebSocket\n{}", resp.head);
    assert_eq!(server.registry.len(), 2);
}

#[actix_web::test]
async fn no_extension_is_negotiated_even_when_permessage_deflate_is_offered() {
    let server = common::spawn(common::settings(|_| {}));
    let headers = variant(
        "-",
        None,
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    );
    let resp = request(&server, &target(SIO), &refs(&headers)).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert!(
        resp.headers_all("Sec-WebSocket-Extensions").is_empty(),
        "extension negotiated:\n{}",
        resp.head
    );
    let mut ws = resp.into_ws();
    let (b0, _) = first_frame(&mut ws).await;
    assert_eq!(b0 & 0x70, 0, "RSV bits set on the first frame (compressed?)");
}

// ------------------------------------------------------------- subprotocols

#[actix_web::test]
async fn configured_subprotocol_is_negotiated() {
    let server = common::spawn(common::settings(|s| {
        s.websocket.subprotocols = vec!["chat".into(), "v2".into()];
    }));
    let offers: [(&[&str], Option<&str>); 5] = [
        (&["Sec-WebSocket-Protocol: foo, v2"], Some("v2")),
        (&["Sec-WebSocket-Protocol: foo,v2"], Some("v2")),
        (
            &["Sec-WebSocket-Protocol: foo", "Sec-WebSocket-Protocol: v2"],
            Some("v2"),
        ),
        (&["Sec-WebSocket-Protocol: foo"], None),
        (&[], None),
    ];
    for (offer, expected) in offers {
        let headers = variant("-", None, offer);
        let resp = request(&server, &target(SIO), &refs(&headers)).await;
        assert_eq!(resp.status, 101, "offer {offer:?}\n{}", resp.head);
        assert_eq!(resp.header("Sec-WebSocket-Protocol"), expected, "offer {offer:?}");
    }
}

#[actix_web::test]
async fn no_subprotocol_without_configuration() {
    let server = common::spawn(common::settings(|_| {}));
    for offer in ["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat, v2"] {
        let headers = variant("-", None, &[offer]);
        let resp = request(&server, &target(SIO), &refs(&headers)).await;
        assert_eq!(resp.status, 101, "{offer}\n{}", resp.head);
        assert!(
            resp.headers_all("Sec-WebSocket-Protocol").is_empty(),
            "{offer}: a subprotocol was chosen:\n{}",
            resp.head
        );
    }
}

#[actix_web::test]
async fn frames_sent_with_the_request_are_read_after_the_handover() {
    let server = common::spawn(common::settings(common::quiet));
    // The request and two frames in one write: the frames arrive in the
    // dispatcher's read buffer with the request head.
    let mut bytes = ws_request(&format!("{ECHO}?EIO=4&transport=websocket")).into_bytes();
    bytes.extend(client_frame(0x81, b"4first", true));
    bytes.extend(client_frame(0x81, b"4second", true));
    let resp = read_response(raw(&server, &bytes).await).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    let mut ws = resp.into_ws();
    let (_, open) = first_frame(&mut ws).await;
    assert_eq!(open[0], b'0', "{}", String::from_utf8_lossy(&open));
    assert_eq!(ws.read_frame().await, Some((0x81, b"4first".to_vec())));
    assert_eq!(ws.read_frame().await, Some((0x81, b"4second".to_vec())));
}

#[actix_web::test]
async fn refused_upgrade_closes_its_connection() {
    use tokio::io::AsyncReadExt as _;
    let server = common::spawn(common::settings(common::quiet));
    // Upgrade headers (so the request takes the upgrade path) with a key
    // that is not 16 bytes.
    let request = ws_request(&format!("{SIO}?EIO=4&transport=websocket")).replace(RFC_KEY, "c2hvcnQ=");
    let mut resp = raw_request(&server, &request).await;
    assert_refused(&resp, 3, "Bad request", "a short key on the upgrade path");
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.head);
    let mut rest = Vec::new();
    let n = common::within("the end of the connection", resp.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(n, 0, "bytes after a refusal: {:?}", String::from_utf8_lossy(&rest));
    assert_eq!(server.registry.len(), 0);
}

#[actix_web::test]
async fn other_routes_answer_an_upgrade_request_whole_then_close() {
    use tokio::io::AsyncReadExt as _;
    let server = common::spawn(common::settings(common::quiet));
    // `/metrics` with upgrade headers takes the upgrade path: its whole
    // answer, then the end of the connection.
    let request = ws_request("/metrics");
    let mut stream = raw(&server, request.as_bytes()).await;
    let mut all = Vec::new();
    common::within("the whole answer and the end", stream.read_to_end(&mut all))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{head}");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length");
    assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{head}");
    assert!(body.contains("roomcast_"), "not the metrics:\n{body}");
}
