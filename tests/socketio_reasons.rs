//! Covers: every server-side disconnect reason, provoked for real over a
//! WebSocket or polling session, asserted where the application sees it
//! (the `SocketEvent::Disconnected` stream), and what the client receives:
//! - `client namespace disconnect` (client sends DISCONNECT),
//! - `server namespace disconnect` (server sends DISCONNECT, session stays),
//! - `forced close` (testing hook, and the connect timeout),
//! - `parse error` (an invalid Socket.IO packet),
//! - `ping timeout` (no pong),
//! - `transport close` (the client closes the WebSocket),
//! - `transport error` (two concurrent polling GETs),
//! - `server shutting down` (graceful shutdown; WebSocket close 1001),
//! - every namespace socket of a session ends with the session's reason.
mod common;

use std::time::Duration;

use common::eio::Ws;
use common::{SIO, SOON};
use futures_util::{SinkExt, StreamExt};
use roomcast::conn::events::SocketEvent;
use roomcast::reason::DisconnectReason;
use tokio::sync::broadcast::Receiver;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn server(tweak: impl FnOnce(&mut roomcast::config::Settings)) -> common::TestServer {
    common::spawn(common::settings(|s| {
        s.socketio.namespaces = vec!["/".into(), "/custom".into()];
        s.auth.anonymous_namespaces = vec!["/".into(), "/custom".into()];
        s.testing.hooks = true;
        tweak(s);
    }))
}

/// Opens a WebSocket session and reads its open packet.
async fn open(server: &common::TestServer) -> Ws {
    let url = format!("{}{SIO}?EIO=4&transport=websocket", server.ws());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    ws
}

/// The next text frame that is not a ping (pings are answered).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(SOON, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Joins a namespace; returns the namespace socket id.
async fn join(ws: &mut Ws, nsp: &str) -> String {
    let prefix = if nsp == "/" {
        "40".to_string()
    } else {
        format!("40{nsp},")
    };
    ws.send(Message::text(prefix.clone())).await.unwrap();
    let reply = next_text(ws).await;
    assert!(reply.starts_with(&prefix), "{reply}");
    let sid: serde_json::Value = serde_json::from_str(&reply[prefix.len()..]).unwrap();
    let auth = next_text(ws).await; // the testing hook's "auth" event
    assert!(auth.contains("\"auth\""), "{auth}");
    sid["sid"].as_str().unwrap().to_string()
}

/// The reason of the next `Disconnected` event.
async fn left(events: &mut Receiver<SocketEvent>) -> (String, DisconnectReason) {
    tokio::time::timeout(SOON, async {
        loop {
            if let SocketEvent::Disconnected { nsp, reason, .. } = events.recv().await.unwrap() {
                return (nsp.to_string(), reason);
            }
        }
    })
    .await
    .expect("a disconnect event in time")
}

/// Waits for the server to close the socket; returns the close code.
async fn closed(ws: &mut Ws) -> Option<CloseCode> {
    tokio::time::timeout(SOON, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed in time")
}

#[actix_web::test]
async fn client_namespace_disconnect_keeps_the_session() {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/").await;
    ws.send(Message::text("41")).await.unwrap();
    assert_eq!(
        left(&mut server.events).await,
        ("/".into(), DisconnectReason::ClientNamespaceDisconnect)
    );
    assert_eq!(server.registry.len(), 1, "the Engine.IO session stays");
}

#[actix_web::test]
async fn server_namespace_disconnect_sends_disconnect() {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/custom").await;
    ws.send(Message::text(r#"42/custom,["disconnect-me"]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "41/custom,");
    assert_eq!(
        left(&mut server.events).await,
        ("/custom".into(), DisconnectReason::ServerNamespaceDisconnect)
    );
    // The connection is still usable.
    join(&mut ws, "/").await;
}

/// Joins `/` and sends `packet`: the socket must leave with `reason` and the
/// server close the WebSocket with a policy violation.
async fn packet_ends_the_session(packet: &str, reason: DisconnectReason) {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/").await;
    ws.send(Message::text(packet)).await.unwrap();
    assert_eq!(left(&mut server.events).await.1, reason);
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Policy));
}

#[actix_web::test]
async fn forced_close_ends_the_session() {
    packet_ends_the_session(r#"42["close-me"]"#, DisconnectReason::ForcedClose).await;
}

#[actix_web::test]
async fn connect_timeout_closes_a_session_that_joins_nothing() {
    let server = server(|s| {
        s.socketio.connect_timeout_ms = 200;
        s.engine.ping_interval_ms = 10_000; // so it is not a ping timeout
        s.engine.ping_timeout_ms = 10_000;
    });
    let mut ws = open(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Policy));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.registry.len(), 0);
}

#[actix_web::test]
async fn invalid_packet_is_a_parse_error() {
    packet_ends_the_session(r#"42{"not":"an array"}"#, DisconnectReason::ParseError).await;
}

#[actix_web::test]
async fn binary_out_of_turn_is_a_parse_error() {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(left(&mut server.events).await.1, DisconnectReason::ParseError);
}

#[actix_web::test]
async fn silence_is_a_ping_timeout() {
    let mut server = server(|_| {});
    let url = format!("{}{SIO}?EIO=4&transport=websocket", server.ws());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _open = ws.next().await;
    ws.send(Message::text("40")).await.unwrap();
    // Read without answering pings.
    let reason = left(&mut server.events).await.1;
    assert_eq!(reason, DisconnectReason::PingTimeout);
}

#[actix_web::test]
async fn client_closing_the_websocket_is_a_transport_close() {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/").await;
    join(&mut ws, "/custom").await;
    ws.close(None).await.unwrap();
    let mut reasons = vec![left(&mut server.events).await, left(&mut server.events).await];
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        reasons,
        vec![
            ("/".into(), DisconnectReason::TransportClose),
            ("/custom".into(), DisconnectReason::TransportClose)
        ]
    );
}

#[actix_web::test]
async fn overlapping_polls_are_a_transport_error() {
    let mut server = server(|_| {});
    let base = format!("{}{SIO}?EIO=4&transport=polling", server.http());
    let client = reqwest::Client::new();
    let open = client.get(&base).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<serde_json::Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{base}&sid={sid}");
    assert_eq!(client.post(&url).body("40").send().await.unwrap().status(), 200);
    let joined = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(joined.starts_with("40{"), "{joined}");
    // The next GET is held (nothing to send); a second one overlaps it.
    let first = client.get(&url).send();
    let first = tokio::spawn(async move { first.await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 400);
    assert_eq!(left(&mut server.events).await.1, DisconnectReason::TransportError);
    assert_eq!(first.await.unwrap(), "1");
}

#[actix_web::test]
async fn shutdown_closes_sessions_with_server_shutting_down() {
    let mut server = server(|_| {});
    let mut ws = open(&server).await;
    join(&mut ws, "/").await;
    let shutdown = server.shutdown.clone();
    actix_web::rt::spawn(async move { shutdown.run().await });
    assert_eq!(left(&mut server.events).await.1, DisconnectReason::ServerShuttingDown);
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Away));
}
