//! The bad-input matrix at the Socket.IO level (issue 10): hostile packets
//! over a raw Engine.IO WebSocket on `/socket.io/`, each case asserting
//! what the server does with it (parse error close 1008, an error ack,
//! CONNECT_ERROR, or nothing) and that only the sender is affected: a
//! bystander opened before the attack (a socket subscribed to the room
//! `watch`) still receives a publish from a new client afterwards and is
//! still answered itself.
//!
//! Covers:
//! - binary attachments: placeholders with `num` "splice", 10, -1,
//!   "__proto__", `_placeholder` false, extra keys; attachment counts of
//!   999999, 1000000, `abc`, above `socketio.max_attachments`, 0; three
//!   announced and two sent before a text packet; a binary frame with no
//!   header (all 1008 except `450-` without placeholders, which is a plain
//!   event); the good paths next to them (one and `max_attachments`
//!   attachments echoed);
//! - events: a first argument that is an object, missing, null; a payload
//!   that is a string or an object; the reserved names (1008); `__proto__`,
//!   `constructor`, `toString` as names (ignored by the testing hooks, an
//!   `unknown_event` error ack without them); ack ids beyond u64 and beyond
//!   2^53 - 1 (1008), 2^53 - 1 itself (answered); acks for ids never sent
//!   (ignored);
//! - namespaces: one with a comma (1008), 64 KB (1008), exactly and one
//!   above `socketio.max_namespace_len`; 10,000 CONNECTs to distinct unknown
//!   namespaces, each answered `Invalid namespace`, with bounded memory;
//!   10,000 subscribes to distinct rooms, the first `rooms.max_per_socket`
//!   accepted and the rest refused with `too_many_rooms`;
//! - JWT (HS256 with an audience): `alg: none`, wrong or missing audience,
//!   expired, another key, another HMAC algorithm, garbage, an empty string,
//!   a token that is not a string, none at all on a namespace that needs
//!   one — each CONNECT_ERROR with its `data.code` — and a valid token
//!   accepted on the same connection afterwards.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use common::eio::{expect_close, next, next_text, open, send, Ws};
use common::{alone, quiet, rss_kib, shared, within, TestServer, SIO, SOON};
use futures_util::SinkExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ------------------------------------------------------------------ helpers

/// A server with the testing hooks (`message` → `message-back`) and the
/// namespaces `/` and `/custom`.
fn start(tweak: impl FnOnce(&mut roomcast::config::Settings)) -> TestServer {
    common::spawn(common::settings(|s| {
        quiet(s);
        s.testing.hooks = true;
        s.socketio.namespaces = vec!["/".into(), "/custom".into()];
        s.auth.anonymous_namespaces = vec!["/".into(), "/custom".into()];
        tweak(s);
    }))
}

/// A client joined to `/`; the socket and its Engine.IO sid. With `hooks`
/// the server's `auth` event that follows the CONNECT is read too.
async fn client(server: &TestServer, hooks: bool) -> (Ws, String) {
    let (mut ws, open) = open(server, SIO).await;
    send(&mut ws, "40").await;
    let connected = next_text(&mut ws).await;
    assert!(connected.starts_with(r#"40{"sid":"#), "{connected}");
    if hooks {
        assert_eq!(next_text(&mut ws).await, r#"42["auth",{}]"#);
    }
    (ws, open["sid"].as_str().unwrap().to_owned())
}

/// A bystander: a client subscribed to the room `watch`.
async fn bystander(server: &TestServer, hooks: bool) -> Ws {
    let (mut ws, _) = client(server, hooks).await;
    send(&mut ws, r#"421["subscribe",{"room":"watch"}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"431[{"ok":true}]"#);
    ws
}

/// The bystander still works: a new client's publish to `watch` reaches it,
/// and its own request is answered.
async fn assert_bystander_fine(server: &TestServer, by: &mut Ws, hooks: bool) {
    let tag: u32 = rand::random();
    let (mut publisher, _) = client(server, hooks).await;
    send(
        &mut publisher,
        format!(r#"421["publish",{{"room":"watch","event":"news","data":{tag}}}]"#),
    )
    .await;
    assert_eq!(next_text(&mut publisher).await, r#"431[{"ok":true,"recipients":1}]"#);
    assert_eq!(next_text(by).await, format!(r#"42["news",{tag}]"#));
    send(by, r#"429["presence",{"room":"watch"}]"#).await;
    let reply = next_text(by).await;
    let data: Value = serde_json::from_str(reply.strip_prefix("439").expect("the presence ack")).unwrap();
    assert_eq!(
        (data[0]["ok"].clone(), data[0]["count"].clone()),
        (json!(true), json!(1))
    );
}

/// Waits (bounded) until `sid` left the registry.
async fn session_gone(server: &TestServer, sid: &str) {
    let deadline = Instant::now() + SOON;
    while server.registry.get(sid).is_some() {
        assert!(Instant::now() < deadline, "session {sid} still registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The input in `messages`, sent by a new client, is a parse error: the
/// socket is closed with 1008 (nothing sent before the close) and the
/// session is gone.
async fn assert_parse_error(server: &TestServer, hooks: bool, messages: &[Message]) {
    let (mut ws, sid) = client(server, hooks).await;
    for m in messages {
        send(&mut ws, m.clone()).await;
    }
    assert_eq!(expect_close(&mut ws).await, 1008, "after {messages:?}");
    session_gone(server, &sid).await;
}

fn text(s: &str) -> Message {
    Message::text(s.to_owned())
}

fn binary(b: &[u8]) -> Message {
    Message::binary(b.to_vec())
}

/// The client is still joined and answered: `message` comes back.
async fn assert_echoes(ws: &mut Ws, what: &str) {
    send(ws, format!(r#"42["message","{what}"]"#)).await;
    assert_eq!(next_text(ws).await, format!(r#"42["message-back","{what}"]"#));
}

/// Sends `messages` in batches of `batch`, reading `per_message` replies
/// after each batch (the server writes as fast as it reads; a client that
/// never reads would be a slow consumer).
async fn pipelined(ws: &mut Ws, messages: Vec<String>, batch: usize, mut reply: impl FnMut(usize, String)) {
    for (b, chunk) in messages.chunks(batch).enumerate() {
        for m in chunk {
            within("feed", ws.feed(Message::text(m.clone()))).await.unwrap();
        }
        within("flush", ws.flush()).await.unwrap();
        for i in 0..chunk.len() {
            reply(b * batch + i, next_text(ws).await);
        }
    }
}

// ------------------------------------------------------- binary attachments

#[actix_web::test]
async fn malformed_binary_placeholders_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    for placeholder in [
        r#"{"_placeholder":true,"num":"splice"}"#,
        r#"{"_placeholder":true,"num":10}"#,
        r#"{"_placeholder":true,"num":1}"#,
        r#"{"_placeholder":true,"num":-1}"#,
        r#"{"_placeholder":true,"num":0.5}"#,
        r#"{"_placeholder":true,"num":"__proto__"}"#,
        r#"{"_placeholder":true,"num":null}"#,
        r#"{"_placeholder":true}"#,
        r#"{"_placeholder":false,"num":0}"#,
        r#"{"_placeholder":"true","num":0}"#,
        r#"{"_placeholder":true,"num":0,"extra":1}"#,
        r#"{"_placeholder":true,"num":0,"__proto__":{}}"#,
        r#"{"deep":[{"_placeholder":true,"num":7}]}"#,
    ] {
        // Refused from the header: the attachment is never awaited.
        assert_parse_error(&server, true, &[text(&format!(r#"451-["message",{placeholder}]"#))]).await;
    }
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn bad_attachment_counts_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    assert_eq!(common::settings(|_| {}).socketio.max_attachments, 10);
    let mut by = bystander(&server, true).await;
    let eleven: Vec<String> = (0..11)
        .map(|n| format!(r#"{{"_placeholder":true,"num":{n}}}"#))
        .collect();
    for header in [
        r#"45999999-["message"]"#.to_owned(),
        r#"451000000-["message"]"#.to_owned(),
        r#"4518446744073709551616-["message"]"#.to_owned(),
        r#"45abc-["message"]"#.to_owned(),
        r#"45-1-["message"]"#.to_owned(),
        r#"45-["message"]"#.to_owned(),
        r#"451["message"]"#.to_owned(),
        format!(r#"4511-["message",{}]"#, eleven.join(",")),
        r#"450-["message",{"_placeholder":true,"num":0}]"#.to_owned(),
    ] {
        assert_parse_error(&server, true, &[text(&header)]).await;
    }
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn attachments_out_of_sequence_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    let three =
        r#"453-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},{"_placeholder":true,"num":2}]"#;
    // Three announced, two sent, then a text packet.
    assert_parse_error(
        &server,
        true,
        &[text(three), binary(&[1]), binary(&[2]), text(r#"42["message","x"]"#)],
    )
    .await;
    // A binary frame with no header before it.
    assert_parse_error(&server, true, &[binary(&[1, 2, 3])]).await;
    // One attachment too many.
    let one = r#"451-["message",{"_placeholder":true,"num":0}]"#;
    let (mut ws, sid) = client(&server, true).await;
    send(&mut ws, one).await;
    send(&mut ws, binary(&[9])).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"451-["message-back",{"_placeholder":true,"num":0}]"#
    );
    assert_eq!(next(&mut ws).await, binary(&[9]));
    send(&mut ws, binary(&[10])).await;
    assert_eq!(expect_close(&mut ws).await, 1008);
    session_gone(&server, &sid).await;
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn well_formed_attachments_next_to_the_bad_ones_work() {
    let _process = shared().await;
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    let (mut ws, _) = client(&server, true).await;
    // Zero attachments announced, no placeholder: a plain event.
    send(&mut ws, r#"450-["message","zero"]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"42["message-back","zero"]"#);
    // Exactly max_attachments.
    let ten: Vec<String> = (0..10)
        .map(|n| format!(r#"{{"_placeholder":true,"num":{n}}}"#))
        .collect();
    send(&mut ws, format!(r#"4510-["message",{}]"#, ten.join(","))).await;
    for n in 0..10u8 {
        send(&mut ws, binary(&[n])).await;
    }
    assert_eq!(
        next_text(&mut ws).await,
        format!(r#"4510-["message-back",{}]"#, ten.join(","))
    );
    for n in 0..10u8 {
        assert_eq!(next(&mut ws).await, binary(&[n]));
    }
    assert_echoes(&mut ws, "after").await;
    assert_bystander_fine(&server, &mut by, true).await;
}

// ------------------------------------------------------------------- events

#[actix_web::test]
async fn malformed_events_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    for event in [
        r#"42[{"toString":"x"}]"#,
        r#"42[]"#,
        r#"42[null]"#,
        r#"42[1]"#,
        r#"42[["message"]]"#,
        r#"42"str""#,
        r#"42{}"#,
        r#"42{"0":"message"}"#,
        r#"42null"#,
        r#"42"#,
        r#"42["message""#,
        r#"42["disconnect"]"#,
        r#"42["connect"]"#,
        r#"42["connect_error",{"message":"spoofed"}]"#,
        r#"42["disconnecting"]"#,
        r#"42["newListener","message"]"#,
        r#"42["removeListener","message"]"#,
    ] {
        assert_parse_error(&server, true, &[text(event)]).await;
    }
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn prototype_names_as_events_are_plain_unknown_events() {
    let _process = shared().await;
    // With the testing hooks an unknown event is ignored.
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    let (mut ws, _) = client(&server, true).await;
    for name in ["__proto__", "constructor", "toString", "hasOwnProperty"] {
        send(&mut ws, format!(r#"421["{name}",{{"__proto__":{{"polluted":true}}}}]"#)).await;
    }
    // Nothing came back for them: the next frame is this echo.
    assert_echoes(&mut ws, "unpolluted").await;
    assert_bystander_fine(&server, &mut by, true).await;
    drop(server);

    // Without them, each is answered with an unknown_event error ack.
    let server = start(|s| s.testing.hooks = false);
    let mut by = bystander(&server, false).await;
    let (mut ws, _) = client(&server, false).await;
    for (id, name) in ["__proto__", "constructor", "toString", "hasOwnProperty"]
        .iter()
        .enumerate()
    {
        send(
            &mut ws,
            format!(r#"42{id}["{name}",{{"__proto__":{{"polluted":true}}}}]"#),
        )
        .await;
        let error =
            json!({"ok": false, "error": {"code": "unknown_event", "message": format!("unknown event {name:?}")}});
        assert_eq!(next_text(&mut ws).await, format!("43{id}[{error}]"));
    }
    assert_bystander_fine(&server, &mut by, false).await;
}

#[actix_web::test]
async fn ack_ids_out_of_range_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    let mut by = bystander(&server, true).await;
    for event in [
        // Beyond u64.
        r#"4299999999999999999999["message-with-ack","x"]"#,
        r#"422999999999999999999["message-with-ack","x"]"#,
        // Beyond 2^53 - 1, the largest a JavaScript client can hold.
        r#"429007199254740992["message-with-ack","x"]"#,
        // Acks with ids out of range, and an ack without an id.
        r#"4399999999999999999999["x"]"#,
        r#"43["x"]"#,
    ] {
        assert_parse_error(&server, true, &[text(event)]).await;
    }
    // 2^53 - 1 itself is answered; an ack for an id the server never
    // used is ignored.
    let (mut ws, _) = client(&server, true).await;
    send(&mut ws, r#"429007199254740991["message-with-ack","x"]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"439007199254740991["x"]"#);
    send(&mut ws, r#"4312345["unsolicited"]"#).await;
    send(&mut ws, r#"430["unsolicited"]"#).await;
    assert_echoes(&mut ws, "after").await;
    assert_bystander_fine(&server, &mut by, true).await;
}

// --------------------------------------------------------------- namespaces

#[actix_web::test]
async fn malformed_namespaces_are_parse_errors() {
    let _process = shared().await;
    let server = start(|_| {});
    assert_eq!(common::settings(|_| {}).socketio.max_namespace_len, 128);
    let mut by = bystander(&server, true).await;
    let long = format!("40/{}", "a".repeat(64 * 1024));
    for connect in [
        // The comma ends the name: "/a", then "b,{}" is not JSON.
        "40/a,b,{}",
        "40/a,b",
        "40/cus,tom,",
        // 64 KB, and one byte above the limit.
        long.as_str(),
        &format!("40/{}", "a".repeat(128)),
        // A control character in the name.
        "40/a\u{1}b,",
    ] {
        assert_parse_error(&server, true, &[text(connect)]).await;
    }
    // Exactly the limit is a name like any other: an unknown namespace.
    let (mut ws, _) = client(&server, true).await;
    let at_limit = format!("/{}", "a".repeat(127));
    send(&mut ws, format!("40{at_limit},")).await;
    assert_eq!(
        next_text(&mut ws).await,
        format!(r#"44{at_limit},{{"message":"Invalid namespace"}}"#)
    );
    assert_echoes(&mut ws, "after").await;
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn ten_thousand_connects_to_unknown_namespaces_are_each_refused() {
    let _process = alone().await;
    // 10,000 messages from one client: without this its rate limit would
    // refuse most (tests/limits.rs covers that).
    let server = start(|s| s.limits.packets_per_second = 0);
    let mut by = bystander(&server, true).await;
    let (mut ws, sid) = client(&server, true).await;
    let rss_before = rss_kib();
    let connects: Vec<String> = (0..10_000).map(|i| format!("40/ns{i},")).collect();
    pipelined(&mut ws, connects, 500, |i, reply| {
        assert_eq!(reply, format!(r#"44/ns{i},{{"message":"Invalid namespace"}}"#));
    })
    .await;
    // The connection is fine, still in "/", and can still join /custom.
    assert_echoes(&mut ws, "after ten thousand").await;
    send(&mut ws, "40/custom,").await;
    assert!(next_text(&mut ws).await.starts_with(r#"40/custom,{"sid":"#));
    assert_eq!(next_text(&mut ws).await, r#"42/custom,["auth",{}]"#);
    assert!(server.registry.get(&sid).is_some());
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    assert_bystander_fine(&server, &mut by, true).await;
}

#[actix_web::test]
async fn ten_thousand_subscribes_stop_at_the_room_limit() {
    let _process = shared().await;
    let server = start(|s| {
        s.testing.hooks = false;
        // 10,000 messages from one client (see above).
        s.limits.packets_per_second = 0;
    });
    let limit = common::settings(|_| {}).rooms.max_per_socket;
    assert_eq!(limit, 100);
    let mut by = bystander(&server, false).await;
    let (mut ws, _) = client(&server, false).await;
    let subscribes: Vec<String> = (1..=10_000)
        .map(|i| format!(r#"42{i}["subscribe",{{"room":"r{i}"}}]"#))
        .collect();
    let mut acks: HashMap<u64, Value> = HashMap::new();
    pipelined(&mut ws, subscribes, 500, |_, reply| {
        let rest = reply
            .strip_prefix("43")
            .unwrap_or_else(|| panic!("not an ack: {reply}"));
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id: u64 = rest[..digits].parse().unwrap();
        let value: Value = serde_json::from_str(&rest[digits..]).unwrap();
        assert!(acks.insert(id, value).is_none(), "ack {id} twice");
    })
    .await;
    assert_eq!(acks.len(), 10_000);
    let refused =
        json!([{"ok": false, "error": {"code": "too_many_rooms", "message": "this socket is in too many rooms"}}]);
    for id in 1..=10_000u64 {
        let expected = if id <= limit as u64 {
            json!([{"ok": true}])
        } else {
            refused.clone()
        };
        assert_eq!(acks[&id], expected, "subscribe {id}");
    }
    // The socket is in exactly the first rooms: a publish to r100 reaches
    // it, one to r101 reaches nobody.
    let (mut publisher, _) = client(&server, false).await;
    send(&mut publisher, r#"421["publish",{"room":"r100","event":"e","data":1}]"#).await;
    assert_eq!(next_text(&mut publisher).await, r#"431[{"ok":true,"recipients":1}]"#);
    assert_eq!(next_text(&mut ws).await, r#"42["e",1]"#);
    send(&mut publisher, r#"422["publish",{"room":"r101","event":"e","data":2}]"#).await;
    assert_eq!(next_text(&mut publisher).await, r#"432[{"ok":true,"recipients":0}]"#);
    assert_bystander_fine(&server, &mut by, false).await;
}

// ---------------------------------------------------------------------- JWT

const SECRET: &str = "bad-input-matrix-secret-0123456789abcdef";
const AUDIENCE: &str = "roomcast-matrix";

fn exp_in(secs: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now + secs) as u64
}

fn sign(alg: jsonwebtoken::Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(aud: Option<&str>, exp: u64) -> Value {
    let mut c = json!({"sub": "ann", "exp": exp, "subscribe": ["*"], "publish": ["*"]});
    if let Some(aud) = aud {
        c["aud"] = json!(aud);
    }
    c
}

/// An unsigned token: `{"alg":"none"}`, the claims, an empty signature.
fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

#[actix_web::test]
async fn bad_tokens_are_refused_with_their_code() {
    let _process = shared().await;
    let server = start(|s| {
        s.testing.hooks = false;
        s.socketio.namespaces = vec!["/".into(), "/private".into()];
        s.auth.anonymous_namespaces = vec!["/".into()];
        s.auth.jwt_algorithm = "HS256".into();
        s.auth.jwt_secret = SECRET.into();
        s.auth.jwt_audience = AUDIENCE.into();
    });
    let mut by = bystander(&server, false).await;
    let good = claims(Some(AUDIENCE), exp_in(3600));
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no payload", Value::Null, "auth_required"),
        ("no token", json!({}), "auth_required"),
        ("null token", json!({"token": null}), "auth_required"),
        ("alg none", json!({"token": unsigned(&good)}), "invalid_token"),
        (
            "wrong audience",
            json!({"token": sign(hs256, SECRET, &claims(Some("someone-else"), exp_in(3600)))}),
            "invalid_token",
        ),
        (
            "no audience",
            json!({"token": sign(hs256, SECRET, &claims(None, exp_in(3600)))}),
            "invalid_token",
        ),
        (
            "expired",
            json!({"token": sign(hs256, SECRET, &claims(Some(AUDIENCE), exp_in(-3600)))}),
            "token_expired",
        ),
        (
            "another key",
            json!({"token": sign(hs256, "another-secret-0123456789abcdef-0123", &good)}),
            "invalid_token",
        ),
        (
            "HS384 with the right secret",
            json!({"token": sign(jsonwebtoken::Algorithm::HS384, SECRET, &good)}),
            "invalid_token",
        ),
        ("garbage", json!({"token": "not.a.jwt"}), "invalid_token"),
        ("no dots", json!({"token": "garbage"}), "invalid_token"),
        ("empty string", json!({"token": ""}), "invalid_token"),
        ("a number", json!({"token": 42}), "invalid_token"),
        ("true", json!({"token": true}), "invalid_token"),
        ("an object", json!({"token": {"alg": "none"}}), "invalid_token"),
        (
            "an array",
            json!({"token": [sign(hs256, SECRET, &good)]}),
            "invalid_token",
        ),
    ];
    let message = |code: &str| match code {
        "auth_required" => "Authentication required",
        "invalid_token" => "Invalid token",
        "token_expired" => "Token expired",
        other => panic!("{other}"),
    };
    // All on one connection, which stays open through every refusal.
    let (mut ws, _) = open(&server, SIO).await;
    for (case, auth, code) in &cases {
        let payload = if auth.is_null() {
            String::new()
        } else {
            auth.to_string()
        };
        send(&mut ws, format!("40/private,{payload}")).await;
        let reply = next_text(&mut ws).await;
        let data = reply
            .strip_prefix("44/private,")
            .unwrap_or_else(|| panic!("{case}: not a CONNECT_ERROR: {reply}"));
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data,
            json!({"message": message(code), "data": {"code": code}}),
            "{case}"
        );
    }
    // A bad token on an anonymous namespace is refused too (it is not
    // taken as anonymous).
    let bad = json!({"token": unsigned(&good)});
    send(&mut ws, format!("40{bad}")).await;
    let reply = next_text(&mut ws).await;
    let data: Value = serde_json::from_str(reply.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"message": "Invalid token", "data": {"code": "invalid_token"}})
    );
    // A valid token is accepted on the same connection.
    let token = json!({"token": sign(hs256, SECRET, &good)});
    send(&mut ws, format!("40/private,{token}")).await;
    let reply = next_text(&mut ws).await;
    assert!(reply.starts_with(r#"40/private,{"sid":"#), "{reply}");
    send(&mut ws, r#"42/private,1["subscribe",{"room":"vip"}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"43/private,1[{"ok":true}]"#);
    assert_bystander_fine(&server, &mut by, false).await;
}
