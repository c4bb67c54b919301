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

use std::time::{Duration, Instant};

use common::eio::{
    assert_answered, assert_echo, assert_echo_answering_pings, assert_error_body, assert_held, expect_close, next,
    next_text, send, Polling,
};
use common::raw::{raw_request, ws_request};
use common::{quiet, within, TestServer, ECHO, SIO};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A polling session on `path` that offers the upgrade; its POSTs carry no
/// `Content-Type`.
async fn polling(server: &TestServer, path: &str) -> Polling {
    let p = Polling {
        content_type: None,
        ..Polling::open(server, path).await
    };
    assert_eq!(p.open["upgrades"], json!(["websocket"]));
    p
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
    let p = polling(&server, ECHO).await;
    let mut pending = tokio::spawn(p.get());
    assert_held(&mut pending).await;
    let mut ws = p.probe(&server, ECHO).await;
    assert_answered(pending, "6").await;
    send(&mut ws, "5").await;
    assert_echo(&mut ws, "4hello").await;
    ws.send(Message::binary(vec![9u8, 8, 7])).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert_eq!(&b[..], [9, 8, 7]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[actix_web::test]
async fn upgrade_keeps_the_session_in_the_registry() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, SIO).await;
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
    assert_error_body(p.get().await, 400, 3, "Bad request").await;
}

#[actix_web::test]
async fn messages_buffered_before_the_upgrade_arrive_on_the_websocket_in_order() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    // Echoed while nobody polls: buffered.
    p.post_ok("4before").await;
    let mut ws = p.probe(&server, ECHO).await;
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
    assert_echo(&mut ws, "4after").await;
}

// ------------------------------------------------------------ after upgrade

#[actix_web::test]
async fn polling_after_the_upgrade_is_refused_with_code_3() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    // Once "5" was processed (its effect observed), polling is over.
    assert_echo(&mut ws, "4sync").await;
    assert_error_body(p.get().await, 400, 3, "Bad request").await;
    assert_error_body(p.post("4lost").await, 400, 3, "Bad request").await;
    // The session is still fine, and the refused POST's message never got in.
    assert_echo(&mut ws, "4ws").await;
}

#[actix_web::test]
async fn second_websocket_after_the_upgrade_is_closed_and_the_first_keeps_working() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    assert_echo(&mut ws, "4sync").await;
    let mut second = p.websocket(&server, ECHO).await;
    expect_close(&mut second).await;
    assert_echo(&mut ws, "4first").await;
}

#[actix_web::test]
async fn second_websocket_during_an_upgrade_is_closed_and_the_probe_completes() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    let mut probe = p.probe(&server, ECHO).await;
    let mut second = p.websocket(&server, ECHO).await;
    expect_close(&mut second).await;
    send(&mut probe, "5").await;
    assert_echo(&mut probe, "4hello").await;
}

#[actix_web::test]
async fn heartbeat_runs_on_the_websocket_after_the_upgrade() {
    let server = common::spawn(common::settings(|_| {}));
    let p = polling(&server, ECHO).await;
    let mut ws = p.upgrade(&server, ECHO).await;
    // Three pings answered on the WebSocket outlast pingInterval + pingTimeout.
    for round in 0..3 {
        assert_eq!(next_text(&mut ws).await, "2", "round {round}");
        send(&mut ws, "3").await;
    }
    assert_echo_answering_pings(&mut ws, "4alive").await;
}

// ---------------------------------------------------------- failed upgrades

#[actix_web::test]
async fn garbage_instead_of_probe_closes_the_probe_and_polling_continues() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    for garbage in ["4x", "abc", "5", "2notprobe"] {
        let mut probe = p.websocket(&server, ECHO).await;
        send(&mut probe, garbage).await;
        expect_close(&mut probe).await;
        polling_works(&p, "still polling").await;
    }
    // The session can still upgrade.
    let mut ws = p.upgrade(&server, ECHO).await;
    assert_echo(&mut ws, "4upgraded").await;
}

#[actix_web::test]
async fn garbage_instead_of_upgrade_packet_resumes_polling() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    let mut probe = p.probe(&server, ECHO).await;
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
    let p = polling(&server, ECHO).await;
    let opened = Instant::now();
    let mut probe = p.probe(&server, ECHO).await;
    expect_close(&mut probe).await;
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(250), "probe closed after {waited:?}");
    assert!(waited < Duration::from_millis(3000), "probe closed after {waited:?}");
    polling_works(&p, "after timeout").await;
    // And it can upgrade again.
    let mut ws = p.upgrade(&server, ECHO).await;
    assert_echo(&mut ws, "4upgraded").await;
}

#[actix_web::test]
async fn probe_closed_by_the_client_resumes_polling() {
    let server = common::spawn(common::settings(quiet));
    let p = polling(&server, ECHO).await;
    let mut probe = p.probe(&server, ECHO).await;
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
    let _p = polling(&server, SIO).await;
    let resp = raw_request(
        &server,
        &ws_request(&format!("{SIO}?EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAAAAAAAA")),
    )
    .await;
    let head = resp.head.to_lowercase();
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(!resp.headers_all("content-length").is_empty(), "a content length");
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
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
