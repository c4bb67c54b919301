//! Covers, on one node (the cluster cases are in cluster_redis.rs and
//! tests/cluster/socket_ids.test.mjs), socket ids and room names never mixing:
//! - a namespace socket id is Socket.IO's form: 20 characters of
//!   `[A-Za-z0-9_-]` (the Engine.IO sid stays 128 bits);
//! - a client's subscribe, unsubscribe, publish and presence naming a room
//!   shaped like a socket id (its own, another socket's, or no socket's) is
//!   refused with `invalid_room` and a message saying why, and reaches
//!   nobody; a 20-character room with another character is a room;
//! - the HTTP API's publish to a socket id reaches that socket (and only
//!   it); its join, leave and member list refuse such a name as a room.
mod common;

use common::eio::{next_text, open, send, Ws};
use common::{spawn, within, TestServer, SIO};
use serde_json::{json, Value};

const API_KEY: &str = "socket-ids-test-key-0123";

fn server() -> TestServer {
    spawn(common::settings(|s| {
        common::quiet(s);
        s.api.keys = vec![API_KEY.into()];
    }))
}

/// A Socket.IO client in "/" and its namespace socket id.
async fn client(server: &TestServer) -> (Ws, String) {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "40").await;
    let connected = next_text(&mut ws).await;
    let data: Value = serde_json::from_str(connected.strip_prefix("40").unwrap()).unwrap();
    (ws, data["sid"].as_str().unwrap().to_owned())
}

/// Sends `[event, arg]` with ack id `id`; the ack's argument.
async fn request(ws: &mut Ws, id: u32, event: &str, arg: Value) -> Value {
    send(ws, format!("42{id}{}", json!([event, arg]))).await;
    let reply = next_text(ws).await;
    let body = reply
        .strip_prefix(&format!("43{id}"))
        .unwrap_or_else(|| panic!("not the ack {id}: {reply}"));
    serde_json::from_str::<Value>(body).unwrap()[0].clone()
}

async fn api(server: &TestServer, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    common::api(server, API_KEY, method, path, body).await
}

#[actix_web::test]
async fn socket_ids_are_twenty_url_safe_characters() {
    let server = server();
    for _ in 0..20 {
        let (_ws, id) = client(&server).await;
        assert_eq!(id.len(), 20, "{id}");
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
    }
}

#[actix_web::test]
async fn a_client_cannot_name_a_socket_id_as_a_room() {
    let server = server();
    let (mut a, a_id) = client(&server).await;
    let (mut b, b_id) = client(&server).await;
    // Its own id, another socket's, and an id-shaped name of no socket.
    for (n, name) in [a_id.as_str(), b_id.as_str(), "AAAAAAAAAAAAAAAAAAA_"]
        .into_iter()
        .enumerate()
    {
        for (k, (event, arg)) in [
            ("subscribe", json!({"room": name})),
            ("unsubscribe", json!({"room": name})),
            ("presence", json!({"room": name})),
            ("publish", json!({"room": name, "event": "direct", "data": n})),
        ]
        .into_iter()
        .enumerate()
        {
            let reply = request(&mut a, (10 * n + k) as u32, event, arg).await;
            assert_eq!(reply["ok"], false, "{event} {name}: {reply}");
            assert_eq!(reply["error"]["code"], "invalid_room", "{event} {name}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains("socket id"), "{event} {name}: {message}");
        }
    }
    // A 20-character name with a character no id has is a room.
    let room = "room.of.twenty.chars";
    assert_eq!(room.len(), 20);
    assert_eq!(
        request(&mut b, 1, "subscribe", json!({"room": room})).await,
        json!({"ok": true})
    );
    let reply = request(&mut a, 99, "publish", json!({"room": room, "event": "ok", "data": 1})).await;
    assert_eq!(reply, json!({"ok": true, "recipients": 1}));
    // B's next frame is that publish: none of the refused ones reached it.
    assert_eq!(next_text(&mut b).await, r#"42["ok",1]"#);
}

#[actix_web::test]
async fn the_api_publishes_to_a_socket_by_its_id_and_keeps_ids_out_of_rooms() {
    let server = server();
    let (mut a, a_id) = client(&server).await;
    let (mut b, _) = client(&server).await;
    assert_eq!(
        request(&mut b, 1, "subscribe", json!({"room": "lobby"})).await,
        json!({"ok": true})
    );

    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        "/publish",
        json!({"room": a_id, "event": "private", "data": "for a"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (202, json!({"local_recipients": 1, "cluster": false, "recipients": 1}))
    );
    assert_eq!(
        within("A's private event", next_text(&mut a)).await,
        r#"42["private","for a"]"#
    );
    // A socket id among rooms: each recipient once.
    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        "/publish",
        json!({"rooms": ["lobby", a_id], "event": "both", "data": 2}),
    )
    .await;
    assert_eq!(
        (status, body),
        (202, json!({"local_recipients": 2, "cluster": false, "recipients": 2}))
    );
    assert_eq!(next_text(&mut a).await, r#"42["both",2]"#);
    assert_eq!(next_text(&mut b).await, r#"42["both",2]"#, "B got nothing before");

    // A socket id is not a room to join, leave or list.
    for (method, path, body) in [
        (reqwest::Method::POST, "/sockets/{b}/join", json!({"room": a_id})),
        (reqwest::Method::POST, "/sockets/{b}/leave", json!({"room": a_id})),
        (reqwest::Method::GET, "/rooms/{a}", Value::Null),
    ] {
        let path = path.replace("{b}", "whoever").replace("{a}", &a_id);
        let (status, body) = api(&server, method.clone(), &path, body).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_room", "{method} {path}: {body}");
    }
}
