//! Covers the room quotas (`rooms.max_per_address`, `rooms.max_per_user`)
//! end to end, with low settings and client addresses given by a trusted
//! proxy's `X-Forwarded-For`:
//! - the sockets of one address get 3 distinct rooms of a namespace; a 4th
//!   is refused with `room_quota`, counted as
//!   `limit_breaches{limit="rooms_per_address"}` and recorded in the audit
//!   log (kind `limit_exceeded`, reason `rooms_per_address`);
//! - joining a room another socket of the address is in does not count
//!   twice; another address is unaffected; an exempt address is not
//!   counted; unsubscribing and disconnecting give the rooms back.
mod common;

use common::eio::{next_text, send, Ws};
use common::{spawn, within, TestServer, SIO};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A server with a quota of 3 rooms per address, and its audit database URL.
fn server() -> (TestServer, String) {
    let settings = common::settings(|s| {
        common::quiet(s);
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
        s.limits.exempt = vec!["192.0.2.1".into()];
        s.audit.flush_interval_ms = 20;
        s.rooms.max_per_address = 3;
    });
    let url = settings.database.url.clone();
    (spawn(settings), url)
}

/// A Socket.IO client in "/" whose address (through the trusted proxy) is `ip`.
async fn client_from(server: &TestServer, ip: &str) -> Ws {
    let mut request = format!("{}{SIO}?EIO=4&transport=websocket", server.ws())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("x-forwarded-for", ip.parse().unwrap());
    let (mut ws, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(request))
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.starts_with("0{"));
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    ws
}

async fn request(ws: &mut Ws, id: u32, event: &str, room: &str) -> Value {
    send(ws, format!("42{id}{}", json!([event, {"room": room}]))).await;
    let reply = next_text(ws).await;
    let body = reply
        .strip_prefix(&format!("43{id}"))
        .unwrap_or_else(|| panic!("not the ack {id}: {reply}"));
    serde_json::from_str::<Value>(body).unwrap()[0].clone()
}

async fn subscribe(ws: &mut Ws, room: &str) -> Value {
    request(ws, 1, "subscribe", room).await
}

fn ok() -> Value {
    json!({"ok": true})
}

async fn breaches(server: &TestServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("roomcast_limit_breaches_total{limit=\"rooms_per_address\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[actix_web::test]
async fn the_fourth_distinct_room_of_an_address_is_refused() {
    let (server, db) = server();
    let (mut a1, mut a2) = (
        client_from(&server, "203.0.113.7").await,
        client_from(&server, "203.0.113.7").await,
    );
    for room in ["q1", "q2", "q3"] {
        assert_eq!(subscribe(&mut a1, room).await, ok(), "{room}");
    }
    let refused = subscribe(&mut a1, "q4").await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "room_quota", "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("address"),
        "{refused}"
    );
    // Another socket of the address: the same quota; a room the address is
    // in already does not count twice.
    assert_eq!(subscribe(&mut a2, "q4").await["error"]["code"], "room_quota");
    assert_eq!(subscribe(&mut a2, "q1").await, ok());
    assert_eq!(subscribe(&mut a2, "q2").await, ok());
    // Another address, and an exempt one, are unaffected.
    let mut b = client_from(&server, "198.51.100.9").await;
    for room in ["q4", "q5", "q6"] {
        assert_eq!(subscribe(&mut b, room).await, ok(), "{room}");
    }
    let mut exempt = client_from(&server, "192.0.2.1").await;
    for room in ["q1", "q2", "q3", "q4", "q5", "q6", "q7"] {
        assert_eq!(subscribe(&mut exempt, room).await, ok(), "{room}");
    }
    assert_eq!(breaches(&server).await, 2, "each refusal counted");

    // Leaving gives a room back once no socket of the address is in it.
    assert_eq!(request(&mut a1, 2, "unsubscribe", "q3").await, ok());
    assert_eq!(subscribe(&mut a2, "q7").await, ok(), "q3 was given back");
    assert_eq!(subscribe(&mut a1, "q8").await["error"]["code"], "room_quota");
    // So does a disconnect: a2 leaves q1, q2, q7; a1 keeps q1, q2.
    drop(a2);
    common::eventually("a2's rooms to be given back", || {
        let server = &server;
        async move {
            let mut probe = client_from(server, "203.0.113.7").await;
            subscribe(&mut probe, "q9").await == ok()
        }
    })
    .await;

    // The refusals are in the audit log.
    let query = roomcast::audit::store::AuditQuery {
        kind: Some("limit_exceeded".into()),
        reason: Some("rooms_per_address".into()),
        ..Default::default()
    };
    let rows = common::audit::wait_rows(&common::audit::store(&db), query, 1).await;
    assert!(
        rows.iter()
            .all(|r| r.namespace.as_deref() == Some("/") && r.peer.as_deref() == Some("203.0.113.7")),
        "{rows:#?}"
    );
}
