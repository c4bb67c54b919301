//! Engine.IO v4 over HTTP long-polling, end to end against a real server.
//!
//! Covers:
//! - the handshake: `200`, `text/plain`, body `0{…}` with exactly `sid`,
//!   `upgrades` (`["websocket"]`, or `[]` when WebSocket is not offered),
//!   `pingInterval`, `pingTimeout`, `maxPayload`; sids are ≥ 22 characters of
//!   URL-safe base64 and differ between sessions;
//! - HTTP errors (status 400, JSON body `{"code":N,"message":"…"}`): missing
//!   or wrong `EIO` (code 5), missing or unknown `transport` incl.
//!   `constructor` / `__proto__` / a transport that is not offered (code 0),
//!   unknown sid on GET and POST (code 1), POST / PUT handshakes (code 2), PUT
//!   with a sid (code 3);
//! - messages: `POST 4hello` → `ok` then `GET` → `4hello`; several packets
//!   joined by `\x1e`; base64 binary `bAQIDBA==` round trip; a GET held until
//!   data arrives;
//! - what closes a polling session (next GET → 400 code 1, the session leaves
//!   the registry): `Content-Type: application/octet-stream` (400), an
//!   invalid packet (400, a pending GET gets the close packet `1`), a body
//!   above `maxPayload` with `Content-Length` and chunked (413 + JSON; exactly
//!   `maxPayload` is accepted), invalid UTF-8 (400), more than
//!   `max_packets_per_payload` packets (400; exactly that many is accepted),
//!   two concurrent GETs (first gets `1`, second 400), two concurrent POSTs
//!   (400), the client's close packet `1` while a GET is pending (the GET
//!   gets `6`);
//! - heartbeat: a `2` every `pingInterval`, the session stays alive across
//!   rounds answered with `3`; without a pong it ends after
//!   `pingInterval + pingTimeout` (the pending GET gets `1`, then 400 code 1).
//!
//! The polling GET refused after an upgrade (code 3) is in `engineio_upgrade.rs`;
//! `transport=websocket` without upgrade headers in `websocket_handshake.rs`.
mod common;

use std::time::{Duration, Instant};

use common::eio::{
    assert_answered, assert_error, assert_held, assert_open_defaults, assert_ping_delay, assert_ping_timeout_delay,
    assert_sid_shape, parse_open, Polling,
};
use common::raw::{raw_request, read_response};
use common::{quiet, registry_empties, within, TestServer, ECHO, SIO};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;

// ---------------------------------------------------------------- handshake

#[actix_web::test]
async fn handshake_returns_open_packet_with_exactly_the_five_keys() {
    let server = common::spawn(common::settings(|_| {}));
    let resp = reqwest::get(format!("{}{ECHO}?EIO=4&transport=polling", server.http()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("text/plain"), "content type {ct:?}");
    let open = parse_open(&resp.text().await.unwrap());
    assert_open_defaults(&open, json!(["websocket"]));
}

#[actix_web::test]
async fn sids_are_url_safe_base64_and_unique() {
    let server = common::spawn(common::settings(quiet));
    let mut sids = std::collections::HashSet::new();
    for _ in 0..5 {
        let p = Polling::open(&server, SIO).await;
        assert_sid_shape(&p.sid);
        assert!(sids.insert(p.sid.clone()), "sid repeated: {:?}", p.sid);
    }
    assert_eq!(server.registry.len(), 5);
}

#[actix_web::test]
async fn handshake_reflects_settings_and_offers_no_upgrade_without_websocket() {
    let server = common::spawn(common::settings(|s| {
        s.engine.max_payload = 64;
        s.engine.transports = vec!["polling".into()];
    }));
    let p = Polling::open(&server, ECHO).await;
    assert_eq!(p.open["upgrades"], json!([]));
    assert_eq!(p.open["maxPayload"], 64);
    // A transport that is not offered is an unknown one.
    let resp = reqwest::get(format!("{}{ECHO}?EIO=4&transport=websocket", server.http()))
        .await
        .unwrap();
    assert_error(resp, 400, 0, "Transport unknown").await;
}

// -------------------------------------------------------------- HTTP errors

#[actix_web::test]
async fn missing_or_unsupported_eio_is_code_5() {
    let server = common::spawn(common::settings(quiet));
    for query in [
        "transport=polling",
        "EIO=3&transport=polling",
        "EIO=abc&transport=polling",
        "EIO=&transport=polling",
    ] {
        let resp = reqwest::get(format!("{}{ECHO}?{query}", server.http())).await.unwrap();
        assert_error(resp, 400, 5, "Unsupported protocol version").await;
    }
    assert!(server.registry.is_empty());
}

#[actix_web::test]
async fn missing_or_unknown_transport_is_code_0() {
    let server = common::spawn(common::settings(quiet));
    for query in [
        "EIO=4",
        "EIO=4&transport=abc",
        "EIO=4&transport=constructor",
        "EIO=4&transport=__proto__",
        "EIO=4&transport=hasOwnProperty",
        "EIO=4&transport=Polling",
    ] {
        for path in [ECHO, SIO] {
            let resp = reqwest::get(format!("{}{path}?{query}", server.http())).await.unwrap();
            assert_error(resp, 400, 0, "Transport unknown").await;
        }
    }
    assert!(server.registry.is_empty());
}

#[actix_web::test]
async fn unknown_sid_is_code_1_on_get_and_post() {
    let server = common::spawn(common::settings(quiet));
    // A real session exists, so "unknown" is not "there are none".
    let _p = Polling::open(&server, ECHO).await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}{ECHO}?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAAAA",
        server.http()
    );
    for req in [client.get(&url), client.post(&url).body("4hi")] {
        assert_error(req.send().await.unwrap(), 400, 1, "Session ID unknown").await;
    }
}

#[actix_web::test]
async fn handshake_with_post_or_put_is_code_2() {
    let server = common::spawn(common::settings(quiet));
    let client = reqwest::Client::new();
    let echo = format!("{}{ECHO}?EIO=4&transport=polling", server.http());
    let sio = format!("{}{SIO}?EIO=4&transport=polling", server.http());
    for req in [client.post(&echo), client.put(&echo), client.post(&sio)] {
        assert_error(req.body("4hi").send().await.unwrap(), 400, 2, "Bad handshake method").await;
    }
    assert!(server.registry.is_empty(), "a refused handshake created a session");
}

#[actix_web::test]
async fn put_with_sid_is_code_3() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let resp = p.client.put(p.url()).body("4hi").send().await.unwrap();
    assert_error(resp, 400, 3, "Bad request").await;
}

// ----------------------------------------------------------------- messages

#[actix_web::test]
async fn posted_message_is_echoed_on_the_next_get() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    p.post_ok("4hello").await;
    assert_eq!(p.get_ok().await, "4hello");
    // And again: the session keeps working.
    p.post_ok("4world").await;
    assert_eq!(p.get_ok().await, "4world");
}

#[actix_web::test]
async fn several_packets_are_joined_by_the_record_separator() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    p.post_ok("4a\x1e4b\x1e4c").await;
    p.post_ok("4d").await;
    assert_eq!(p.get_ok().await, "4a\x1e4b\x1e4c\x1e4d");
}

#[actix_web::test]
async fn binary_message_round_trips_as_base64() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    p.post_ok("bAQIDBA==\x1e4text\x1eb").await;
    assert_eq!(p.get_ok().await, "bAQIDBA==\x1e4text\x1eb");
}

#[actix_web::test]
async fn get_is_held_until_data_arrives() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, ECHO).await;
    let mut pending = tokio::spawn(p.get());
    assert_held(&mut pending).await;
    p.post_ok("4late").await;
    assert_answered(pending, "4late").await;
}

// ------------------------------------------------------ closing by the client

/// POSTs `body` and expects a 400 that ends the session.
async fn post_closes_session(server: &TestServer, p: &Polling, resp: reqwest::Response) {
    assert_error(resp, 400, 3, "Bad request").await;
    p.assert_gone().await;
    registry_empties(server).await;
}

#[actix_web::test]
async fn octet_stream_post_is_refused_and_closes_the_session() {
    let server = common::spawn(common::settings(quiet));
    // The echo endpoint, and a body that is a valid text payload: only the
    // content type is wrong.
    let p = Polling::open(&server, ECHO).await;
    let resp = within(
        "POST",
        p.client
            .post(p.url())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body("4hello")
            .send(),
    )
    .await
    .unwrap();
    assert_error(resp, 400, 3, "Bad request").await;
    p.assert_gone().await;
}

#[actix_web::test]
async fn invalid_packet_closes_the_session_and_a_pending_get_gets_close() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    let mut pending = tokio::spawn(p.get());
    assert_held(&mut pending).await;
    let resp = p.post("abc").await;
    assert_answered(pending, "1").await;
    post_closes_session(&server, &p, resp).await;
}

#[actix_web::test]
async fn invalid_packet_variants_close_the_session() {
    let server = common::spawn(common::settings(quiet));
    // An empty record, an unknown type, bad base64, a client ping, an open.
    for body in ["4a\x1e\x1e4b", "9", "b!!!", "2", "0", ""] {
        let p = Polling::open(&server, SIO).await;
        let resp = p.post(body).await;
        assert_eq!(resp.status().as_u16(), 400, "POST {body:?}");
        p.assert_gone().await;
    }
    registry_empties(&server).await;
}

#[actix_web::test]
async fn invalid_utf8_body_closes_the_session() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    let resp = p.post(vec![b'4', 0xff, 0xfe, b'x']).await;
    post_closes_session(&server, &p, resp).await;
}

#[actix_web::test]
async fn too_many_packets_in_one_post_closes_the_session() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_packets_per_payload = 5;
    }));
    let p = Polling::open(&server, ECHO).await;
    let five = ["4a", "4b", "4c", "4d", "4e"].join("\x1e");
    p.post_ok(five.clone()).await;
    assert_eq!(p.get_ok().await, five);
    let six = ["4a", "4b", "4c", "4d", "4e", "4f"].join("\x1e");
    let resp = p.post(six).await;
    assert_error(resp, 400, 3, "Bad request").await;
    p.assert_gone().await;
}

#[actix_web::test]
async fn post_above_max_payload_is_413_and_closes_the_session() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_payload = 64;
    }));
    let p = Polling::open(&server, ECHO).await;
    assert_eq!(p.open["maxPayload"], 64);
    // Exactly maxPayload is fine.
    let exact = format!("4{}", "a".repeat(63));
    p.post_ok(exact.clone()).await;
    assert_eq!(p.get_ok().await, exact);
    // One byte more is not.
    let resp = p.post(format!("4{}", "a".repeat(64))).await;
    assert_error(resp, 413, 3, "Payload too large").await;
    p.assert_gone().await;
}

#[actix_web::test]
async fn chunked_post_above_max_payload_is_413_and_closes_the_session() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.engine.max_payload = 64;
    }));
    let p = Polling::open(&server, SIO).await;
    let chunk = format!("4{}", "a".repeat(39));
    let request = format!(
        "POST {SIO}?EIO=4&transport=polling&sid={} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
         28\r\n{chunk}\r\n28\r\n{chunk}\r\n0\r\n\r\n",
        p.sid
    );
    let resp = raw_request(&server, &request).await;
    let body = resp.text();
    assert_eq!(resp.status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"code": 3, "message": "Payload too large"}));
    p.assert_gone().await;
    registry_empties(&server).await;
}

#[actix_web::test]
async fn concurrent_gets_close_the_session() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    let mut first = tokio::spawn(p.get());
    assert_held(&mut first).await;
    assert_error(p.get().await, 400, 3, "Bad request").await;
    assert_answered(first, "1").await;
    p.assert_gone().await;
    registry_empties(&server).await;
}

#[actix_web::test]
async fn concurrent_posts_close_the_session() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    // A POST whose body is not complete yet stays active.
    let mut slow = p.partial_post(&server, 10, "4abc").await;
    // Nothing observable tells that the server started reading it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_error(p.post("4second").await, 400, 3, "Bad request").await;
    p.assert_gone().await;
    slow.write_all(b"defghi").await.unwrap();
    let resp = read_response(slow).await;
    let body = resp.text();
    assert_eq!(resp.status, 400, "the first POST of a closed session: {body}");
    registry_empties(&server).await;
}

#[actix_web::test]
async fn client_close_packet_answers_the_pending_get_with_noop() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    let mut pending = tokio::spawn(p.get());
    assert_held(&mut pending).await;
    p.post_ok("1").await;
    assert_answered(pending, "6").await;
    p.assert_gone().await;
    registry_empties(&server).await;
}

#[actix_web::test]
async fn client_close_packet_without_pending_get_ends_the_session() {
    let server = common::spawn(common::settings(quiet));
    let p = Polling::open(&server, SIO).await;
    p.post_ok("1").await;
    // At most one GET may still drain the session (with a noop); then it is gone.
    let resp = p.get().await;
    if resp.status().as_u16() == 200 {
        assert_eq!(resp.text().await.unwrap(), "6");
        p.assert_gone().await;
    } else {
        assert_error(resp, 400, 1, "Session ID unknown").await;
    }
    registry_empties(&server).await;
}

// ---------------------------------------------------------------- heartbeat

#[actix_web::test]
async fn heartbeat_pings_every_interval_and_pongs_keep_the_session() {
    let server = common::spawn(common::settings(|_| {}));
    let mut since = Instant::now();
    let p = Polling::open(&server, ECHO).await;
    for round in 0..3 {
        let body = p.get_ok().await;
        let waited = since.elapsed();
        assert_eq!(body, "2", "round {round}");
        assert_ping_delay(round, waited);
        p.post_ok("3").await;
        since = Instant::now();
    }
    // Three rounds last longer than pingInterval + pingTimeout: still alive.
    p.post_ok("4alive").await;
    let body = p.get_ok().await;
    assert!(body.split('\x1e').any(|packet| packet == "4alive"), "{body:?}");
}

#[actix_web::test]
async fn heartbeat_without_pong_ends_the_session() {
    let server = common::spawn(common::settings(|_| {}));
    let p = Polling::open(&server, SIO).await;
    assert_eq!(p.get_ok().await, "2");
    let pinged = Instant::now();
    // No pong: the held GET ends with the close packet at the timeout.
    let body = p.get_ok().await;
    let waited = pinged.elapsed();
    assert_eq!(body, "1");
    assert_ping_timeout_delay(waited);
    p.assert_gone().await;
    registry_empties(&server).await;
}
