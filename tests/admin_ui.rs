//! The Socket.IO Admin UI's namespace (`[admin_ui]`), over raw Engine.IO
//! WebSockets against a real server:
//! - off (the default): no admin namespace, a CONNECT gets "Invalid
//!   namespace";
//! - a wrong password, or a wrong user name, is refused with exactly
//!   "invalid credentials", and the password never lands in the audit log;
//! - the right one: `session`, `config` (the commands among the features),
//!   `all_sockets` (with the client sockets and their rooms), `server_stats`
//!   (the node's counts); the session id logs in again without a password;
//! - `join`, `leave` and `_disconnect` act on a client's socket (seen as
//!   `room_joined`, `room_left`, a DISCONNECT packet, `socket_disconnected`);
//! - read-only mode advertises no command and refuses them;
//! - with an admin listener, the namespace is there only;
//! - the update stream is capped: past `max_events_per_second`, updates are
//!   dropped and counted;
//! - a hash that is not bcrypt, or none, refuses to start.
#![cfg(unix)]

mod common;

use common::eio::{next_text, open, send, Ws};
use common::{TestServer, SIO};
use roomcast::config::Settings;
use serde_json::{json, Value};

const PASSWORD: &str = "correct-horse-battery";

/// Test settings with the Admin UI on (a cheap bcrypt cost: the check is
/// the same).
fn with_ui(tweak: impl FnOnce(&mut Settings)) -> Settings {
    common::settings(|s| {
        common::quiet(s);
        s.admin_ui.enabled = true;
        s.admin_ui.password_hash = bcrypt::hash(PASSWORD, 4).unwrap();
        s.admin_ui.stats_interval_ms = 200;
        s.api.keys = vec!["admin-ui-test-key".into()];
        tweak(s);
    })
}

/// A WebSocket session whose CONNECT to `/admin` carries `auth`: the
/// socket and the CONNECT's answer.
async fn login_on(port: u16, auth: Value) -> (Ws, String) {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = common::within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket handshake succeeds");
    assert!(next_text(&mut ws).await.starts_with('0'));
    send(&mut ws, format!("40/admin,{auth}")).await;
    let answer = next_text(&mut ws).await;
    (ws, answer)
}

async fn login(server: &TestServer, auth: Value) -> (Ws, String) {
    login_on(server.port, auth).await
}

fn password() -> Value {
    json!({"username": "admin", "password": PASSWORD})
}

/// The next event of the admin namespace: `[name, args…]`.
async fn next_event(ws: &mut Ws) -> Vec<Value> {
    loop {
        let text = next_text(ws).await;
        if let Some(args) = text.strip_prefix("42/admin,") {
            return serde_json::from_str(args).expect("an event's arguments");
        }
        if text == "2" {
            send(ws, "3").await;
        }
    }
}

/// Reads events until one named `name` that `pick` accepts.
async fn until(ws: &mut Ws, name: &str, mut pick: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    loop {
        let event = next_event(ws).await;
        if event[0] == name && pick(&event[1..]) {
            return event;
        }
    }
}

/// A client socket in `/`: the session and its socket id.
async fn client(server: &TestServer) -> (Ws, String) {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "40").await;
    let answer = next_text(&mut ws).await;
    let body: Value = serde_json::from_str(answer.strip_prefix("40").expect("CONNECT")).unwrap();
    (ws, body["sid"].as_str().unwrap().to_owned())
}

/// The members of `room` in `/`, by the HTTP API.
async fn members(server: &TestServer, room: &str) -> u64 {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/rooms/{room}?namespace=/", server.http()))
        .bearer_auth("admin-ui-test-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["count"].as_u64().unwrap()
}

#[actix_web::test]
async fn off_by_default_there_is_no_admin_namespace() {
    let server = common::spawn(common::settings(common::quiet));
    let (_ws, answer) = login(&server, password()).await;
    assert_eq!(answer, r#"44/admin,{"message":"Invalid namespace"}"#);
}

#[actix_web::test]
async fn a_wrong_password_is_refused_and_never_recorded() {
    let settings = with_ui(|s| s.audit.record_handshake_refusals = true);
    let url = settings.database.url.clone();
    let server = common::spawn(settings);
    let secret = "wrong-but-secret-guess";
    let (_ws, answer) = login(&server, json!({"username": "admin", "password": secret})).await;
    assert_eq!(answer, r#"44/admin,{"message":"invalid credentials"}"#);
    let (_ws, answer) = login(&server, json!({"username": "root", "password": PASSWORD})).await;
    assert_eq!(answer, r#"44/admin,{"message":"invalid credentials"}"#);
    let (_ws, answer) = login(&server, json!({"sessionId": "not-a-session"})).await;
    assert_eq!(answer, r#"44/admin,{"message":"invalid credentials"}"#);

    assert!(server.shutdown.flush_audit().await, "the audit database took the rows");
    let store = common::audit::store(&url);
    let query = roomcast::audit::store::AuditQuery {
        kind: Some("handshake_refused".into()),
        ..Default::default()
    };
    let rows = common::audit::wait_rows(&store, query, 3).await;
    let text = format!("{rows:?}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(
        rows.iter().all(|r| r.reason == "invalid_credentials" && r.code == 206),
        "{text}"
    );
    assert!(!text.contains(secret) && !text.contains(PASSWORD), "{text}");
    // Nor anywhere in the database file.
    let file = url.trim_start_matches("sqlite://");
    let bytes = std::fs::read(file).unwrap();
    let found = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!found(secret) && !found(PASSWORD), "a password in {file}");
}

#[actix_web::test]
async fn a_login_gets_its_session_the_config_the_sockets_and_the_stats() {
    let server = common::spawn(with_ui(|s| s.server.node_name = "ui-node-1".into()));
    let (_client, id) = client(&server).await;
    let (mut ws, answer) = login(&server, password()).await;
    assert!(answer.starts_with("40/admin,{\"sid\":"), "{answer}");
    // (A broadcast to the namespace, stats or an update, may come first.)
    let session = until(&mut ws, "session", |_| true).await;
    let session_id = session[1].as_str().unwrap().to_owned();
    let config = next_event(&mut ws).await;
    assert_eq!(config[0], "config", "right after the session");
    let features = config[1]["supportedFeatures"].as_array().unwrap();
    for f in ["JOIN", "LEAVE", "DISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"] {
        assert!(features.contains(&json!(f)), "{config:?}");
    }
    let all = until(&mut ws, "all_sockets", |_| true).await;
    let listed = all[1].as_array().unwrap();
    let mine = listed
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("the client listed");
    assert_eq!(mine["nsp"], "/");
    assert_eq!(mine["rooms"], json!([id]));
    assert!(mine["handshake"]["issued"].as_u64().unwrap() > 0, "the UI needs it");
    let stats = until(&mut ws, "server_stats", |a| a[0]["clientsCount"] == 2).await;
    let stats = &stats[1];
    assert_eq!(stats["serverId"], format!("ui-node-1#{}", std::process::id()));
    assert_eq!(stats["pid"], std::process::id());
    let namespaces = stats["namespaces"].as_array().unwrap();
    assert!(namespaces.contains(&json!({"name": "/", "socketsCount": 1})), "{stats}");
    assert!(
        namespaces.contains(&json!({"name": "/admin", "socketsCount": 1})),
        "{stats}"
    );

    // The session id logs in again, with no password.
    let (mut again, answer) = login(&server, json!({ "sessionId": session_id })).await;
    assert!(answer.starts_with("40/admin,"), "{answer}");
    loop {
        let event = next_event(&mut again).await;
        assert_ne!(event[0], "session", "no new session for a session login");
        if event[0] == "config" {
            break;
        }
    }
}

#[actix_web::test]
async fn join_leave_and_disconnect_act_on_a_clients_socket() {
    let server = common::spawn(with_ui(|_| {}));
    let (mut admin, _) = login(&server, password()).await;
    until(&mut admin, "all_sockets", |_| true).await;
    let (mut client, id) = client(&server).await;
    until(&mut admin, "socket_connected", |a| a[0]["id"] == id.as_str()).await;

    send(&mut admin, format!(r#"42/admin,["join","/","vip","{id}"]"#)).await;
    let joined = until(&mut admin, "room_joined", |a| a[2] == id.as_str()).await;
    assert_eq!((&joined[1], &joined[2]), (&json!("/"), &json!("vip")));
    assert_eq!(members(&server, "vip").await, 1);

    send(&mut admin, format!(r#"42/admin,["leave","/","vip","{id}"]"#)).await;
    until(&mut admin, "room_left", |a| a[1] == "vip" && a[2] == id.as_str()).await;
    assert_eq!(members(&server, "vip").await, 0);

    // A socket's disconnect (not its client's): a DISCONNECT packet, which
    // socket.io-client reports as "io server disconnect".
    send(&mut admin, format!(r#"42/admin,["_disconnect","/",false,"{id}"]"#)).await;
    assert_eq!(next_text(&mut client).await, "41");
    let gone = until(&mut admin, "socket_disconnected", |a| a[1] == id.as_str()).await;
    assert_eq!(gone[3], "server namespace disconnect");
    assert_eq!(
        common::metric(&server, "roomcast_admin_ui_commands_total{code=\"done\"}").await,
        3
    );
}

#[actix_web::test]
async fn read_only_mode_refuses_commands() {
    let server = common::spawn(with_ui(|s| s.admin_ui.read_only = true));
    let (_client, id) = client(&server).await;
    let (mut admin, _) = login(&server, password()).await;
    let config = until(&mut admin, "config", |_| true).await;
    assert_eq!(
        config[1]["supportedFeatures"],
        json!(["AGGREGATED_EVENTS", "ALL_EVENTS"])
    );
    send(&mut admin, format!(r#"42/admin,["join","/","vip","{id}"]"#)).await;
    send(&mut admin, format!(r#"42/admin,["_disconnect","/",true,"{id}"]"#)).await;
    common::eventually("both commands refused", || async {
        common::metric(&server, "roomcast_admin_ui_commands_total{code=\"refused\"}").await == 2
    })
    .await;
    assert_eq!(members(&server, "vip").await, 0);
    assert_eq!(server.registry.len(), 2, "the client is still connected");
}

#[actix_web::test]
async fn with_an_admin_listener_the_namespace_is_only_there() {
    let server = common::spawn(with_ui(|s| s.admin.address = "127.0.0.1:0".into()));
    let (_ws, answer) = login(&server, password()).await;
    assert_eq!(answer, r#"44/admin,{"message":"Invalid namespace"}"#);
    let admin = server.admin_port.unwrap();
    let (_ws, answer) = login_on(admin, password()).await;
    assert!(answer.starts_with("40/admin,"), "{answer}");
    let page = reqwest::get(format!("http://127.0.0.1:{admin}/admin-ui/"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let public = reqwest::get(format!("{}/admin-ui/", server.http())).await.unwrap();
    assert_eq!(public.status(), 404);
}

#[actix_web::test]
async fn the_update_stream_is_capped() {
    let server = common::spawn(with_ui(|s| s.admin_ui.max_events_per_second = 5));
    let (mut admin, _) = login(&server, password()).await;
    until(&mut admin, "all_sockets", |_| true).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(client(&server).await);
    }
    common::eventually("updates dropped", || async {
        common::metric(&server, "roomcast_admin_ui_updates_dropped_total").await >= 30
    })
    .await;
    let sent = common::metric(&server, "roomcast_admin_ui_updates_sent_total").await;
    assert!(sent < 20, "{sent} updates sent");
}

#[actix_web::test]
async fn enabled_without_a_bcrypt_hash_it_does_not_start() {
    let mut s = Settings::defaults();
    s.admin_ui.enabled = true;
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("admin_ui.password_hash") && err.contains("no default password"),
        "{err}"
    );
    s.admin_ui.password_hash = "plain-text".into();
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("admin_ui.password_hash") && err.contains("bcrypt"),
        "{err}"
    );
}
