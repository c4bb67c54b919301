//! Covers, with a private `redis-server` and two in-process nodes:
//! - a publish on one node reaches the room's members on the other node
//!   exactly once, and the publisher's own node does not deliver it twice
//!   (a node ignores its own messages);
//! - binary payloads cross nodes as binary;
//! - presence counts and lists the members of every node; a socket on one
//!   node is disconnected through another node's HTTP API;
//! - the HTTP API's room list counts every node's members, and makes a
//!   socket on another node join and leave a room;
//! - socket ids and rooms never mix: a client's subscribe, publish and
//!   presence naming another socket's id (on its node or the other) are
//!   refused with `invalid_room` and reach nobody; the HTTP API's publish
//!   to a socket id reaches that socket on its own node and on the other;
//! - Redis killed: both nodes keep serving their local clients, nobody is
//!   disconnected, the adapter reports itself degraded; Redis restarted on
//!   the same port: the nodes subscribe again by themselves and cross-node
//!   delivery resumes.
//!
//! Each scenario runs in every adapter mode (`in_every_mode!`): classic,
//! sharded (dynamic and static) and streams, where the publisher's own
//! members get a broadcast when the stream hands it back (or, with Redis
//! down, straight away).
mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::eio::{next, open, send, Ws};
use common::redis::{
    await_listening, client, connected, publish, redis_server, request, subscribe, text, PrivateRedis, Proto,
};
use common::{within, TestServer, SIO};

use tokio_tungstenite::tungstenite::Message;

common::redis::in_every_mode!(
    publishes_cross_nodes_exactly_once,
    binary_crosses_nodes_as_binary,
    redis_outage_keeps_local_delivery_and_recovers,
    presence_and_api_disconnect_span_the_nodes,
    api_room_list_and_membership_span_the_nodes,
    a_socket_is_reached_by_its_id_from_backends_only,
);

fn node(redis: &PrivateRedis, proto: Proto) -> TestServer {
    node_at(redis.url(), proto, false)
}

fn node_at(url: String, proto: Proto, cluster: bool) -> TestServer {
    common::spawn(common::settings(move |s| {
        common::quiet(s);
        s.redis.url = url;
        s.redis.cluster = cluster;
        proto.apply(s);
        s.redis.command_timeout_ms = 500;
        s.redis.reconnect_max_ms = 200;
        s.api.keys = vec![API_KEY.into()];
    }))
}

const API_KEY: &str = "cluster-test-key-0123";

async fn publishes_cross_nodes_exactly_once(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let (mut a, mut b) = (client(&n1).await, client(&n2).await);
    subscribe(&mut a, "lobby").await;
    subscribe(&mut b, "lobby").await;

    publish(&mut a, "lobby", serde_json::json!({"n": 1})).await;
    assert_eq!(text(&mut b).await, r#"42["chat",{"n":1}]"#);
    // B answers; A's next frame is B's message, not a copy of its own.
    publish(&mut b, "lobby", serde_json::json!({"n": 2})).await;
    assert_eq!(text(&mut a).await, r#"42["chat",{"n":2}]"#);
    // And B got nothing more than the one message.
    publish(&mut a, "lobby", serde_json::json!({"n": 3})).await;
    assert_eq!(text(&mut b).await, r#"42["chat",{"n":3}]"#);
}

async fn binary_crosses_nodes_as_binary(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let (mut a, mut b) = (client(&n1).await, client(&n2).await);
    subscribe(&mut a, "files").await;
    subscribe(&mut b, "files").await;
    let event = r#"["publish",{"room":"files","event":"blob","data":{"_placeholder":true,"num":0}}]"#;
    send(&mut a, format!("451-7{event}")).await;
    send(&mut a, Message::binary(vec![9u8, 8, 7])).await;
    assert_eq!(text(&mut b).await, r#"451-["blob",{"_placeholder":true,"num":0}]"#);
    assert_eq!(text(&mut b).await, "<binary b\"\\t\\x08\\x07\">");
}

async fn redis_outage_keeps_local_delivery_and_recovers(proto: Proto) {
    let mut redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let (mut a, mut c, mut b) = (client(&n1).await, client(&n1).await, client(&n2).await);
    for ws in [&mut a, &mut c, &mut b] {
        subscribe(ws, "lobby").await;
    }

    redis.kill();
    connected(&n1, false).await;
    // Local delivery goes on; nobody is disconnected.
    publish(&mut a, "lobby", serde_json::json!({"while": "down"})).await;
    assert_eq!(text(&mut c).await, r#"42["chat",{"while":"down"}]"#);
    assert_eq!(n1.registry.len(), 2);
    assert_eq!(n2.registry.len(), 1);

    redis.spawn();
    connected(&n1, true).await;
    connected(&n2, true).await;
    publish(&mut a, "lobby", serde_json::json!({"after": "restart"})).await;
    assert_eq!(text(&mut c).await, r#"42["chat",{"after":"restart"}]"#);
    // B lost the message published during the outage (at most once) and
    // gets the one after it.
    assert_eq!(text(&mut b).await, r#"42["chat",{"after":"restart"}]"#);
    assert!(
        n1.cluster.lost.load(Ordering::Relaxed) >= 1,
        "the lost broadcast is counted"
    );
}

/// A Socket.IO client in "/" and its namespace socket id.
async fn client_with_id(server: &TestServer) -> (Ws, String) {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "40").await;
    let connected = text(&mut ws).await;
    let sid: serde_json::Value = serde_json::from_str(&connected[2..]).unwrap();
    (ws, sid["sid"].as_str().unwrap().to_owned())
}

async fn presence_and_api_disconnect_span_the_nodes(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let ((mut a, a_id), (mut b, b_id)) = (client_with_id(&n1).await, client_with_id(&n2).await);
    subscribe(&mut a, "lobby").await;
    subscribe(&mut b, "lobby").await;

    let reply = request(&mut a, 3, "presence", serde_json::json!({"room": "lobby"})).await;
    let v: serde_json::Value = serde_json::from_str(&reply[3..]).unwrap();
    assert_eq!(v[0]["count"], 2, "{reply}");
    assert_eq!(v[0]["partial"], false, "{reply}");
    let ids: Vec<&str> = v[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&a_id.as_str()) && ids.contains(&b_id.as_str()), "{reply}");

    // B lives on node 2; node 1's API finds and disconnects it.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/sockets/{b_id}/disconnect", n1.http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let closed = within("B's connection to close", async {
        loop {
            match next(&mut b).await {
                Message::Close(_) => return true,
                Message::Text(t) if t.as_str() == "2" => send(&mut b, "3").await,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed);
    // An id no node has is a 404.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/sockets/nobody/disconnect", n1.http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

async fn api(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    common::api(server, API_KEY, method, path, body).await
}

/// Waits until the API reports `count` members in `room` (the join or leave
/// travels through Redis to the node that has the socket).
async fn room_count_becomes(server: &TestServer, room: &str, count: u64) {
    within("the room's member count", async {
        loop {
            let (_, r) = api(
                server,
                reqwest::Method::GET,
                &format!("/rooms/{room}"),
                serde_json::json!(null),
            )
            .await;
            if r["count"] == count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn api_room_list_and_membership_span_the_nodes(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let ((mut a, _), (mut b, b_id)) = (client_with_id(&n1).await, client_with_id(&n2).await);
    subscribe(&mut a, "lobby").await;
    subscribe(&mut b, "lobby").await;

    let (status, rooms) = api(&n1, reqwest::Method::GET, "/rooms", serde_json::json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(rooms["partial"], false, "{rooms}");
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([{"name": "lobby", "members": 2}]),
        "{rooms}"
    );

    // Node 1 makes B (on node 2) join "vip"; a publish to "vip" reaches B.
    let (status, _) = api(
        &n1,
        reqwest::Method::POST,
        &format!("/sockets/{b_id}/join"),
        serde_json::json!({"room": "vip"}),
    )
    .await;
    assert_eq!(status, 202);
    room_count_becomes(&n1, "vip", 1).await;
    publish(&mut a, "vip", serde_json::json!({"to": "vip"})).await;
    assert_eq!(text(&mut b).await, r#"42["chat",{"to":"vip"}]"#);
    // And leave it again.
    let (status, _) = api(
        &n1,
        reqwest::Method::POST,
        &format!("/sockets/{b_id}/leave"),
        serde_json::json!({"room": "vip"}),
    )
    .await;
    assert_eq!(status, 202);
    room_count_becomes(&n1, "vip", 0).await;
    let (status, _) = api(
        &n1,
        reqwest::Method::POST,
        "/sockets/nobody/join",
        serde_json::json!({"room": "vip"}),
    )
    .await;
    assert_eq!(status, 404);
}

/// POST /api/v1/publish of event "direct" with `data` to `room` (a socket
/// id) on `server`; the recipients on that node.
async fn publish_to_id(server: &TestServer, room: &str, data: &str) -> u64 {
    let body = serde_json::json!({"room": room, "event": "direct", "data": data});
    let (status, reply) = api(server, reqwest::Method::POST, "/publish", body).await;
    assert_eq!(status, 202, "{reply}");
    reply["recipients"].as_u64().unwrap()
}

async fn a_socket_is_reached_by_its_id_from_backends_only(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, proto), node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let ((mut a, a_id), (mut c, c_id)) = (client_with_id(&n1).await, client_with_id(&n1).await);
    let (mut b, b_id) = client_with_id(&n2).await;
    assert_eq!((a_id.len(), b_id.len()), (20, 20), "Socket.IO's socket ids");

    // A client names another socket, on the other node or on its own, as
    // a room: refused, and nothing is sent.
    for (n, target) in [(10, &b_id), (20, &c_id)] {
        for (k, event) in ["subscribe", "publish", "presence"].into_iter().enumerate() {
            let arg = serde_json::json!({"room": target, "event": "direct", "data": "from a client"});
            let reply = request(&mut a, n + k as u32, event, arg).await;
            assert!(reply.contains(r#""code":"invalid_room""#), "{event} {target}: {reply}");
        }
    }
    // The API reaches a socket by its id, here and on the other node. Each
    // socket's first frame is the API's: had a client's publish got through
    // (locally, or through Redis ahead of node 1's next message), it would
    // have come first.
    assert_eq!(publish_to_id(&n1, &b_id, "n1 to b").await, 0, "b is on node 2");
    assert_eq!(text(&mut b).await, r#"42["direct","n1 to b"]"#);
    assert_eq!(publish_to_id(&n1, &c_id, "n1 to c").await, 1);
    assert_eq!(text(&mut c).await, r#"42["direct","n1 to c"]"#);
    assert_eq!(publish_to_id(&n2, &a_id, "n2 to a").await, 0, "a is on node 1");
    assert_eq!(text(&mut a).await, r#"42["direct","n2 to a"]"#);
    assert_eq!(publish_to_id(&n2, &b_id, "n2 to b").await, 1);
    assert_eq!(text(&mut b).await, r#"42["direct","n2 to b"]"#);
    // Exactly that socket: c's next frame is its own next message.
    assert_eq!(publish_to_id(&n2, &c_id, "n2 to c").await, 0);
    assert_eq!(text(&mut c).await, r#"42["direct","n2 to c"]"#);
}

/// The sharded channels Redis has subscribers for.
async fn shard_channels(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut conn)
        .await
        .unwrap();
    channels.sort();
    channels
}

/// Waits until Redis has subscribers for `present` and none for `absent`.
async fn shard_channels_become(url: &str, present: &[&str], absent: &[&str]) {
    within("the sharded subscriptions", async {
        loop {
            let now = shard_channels(url).await;
            let has = |c: &&str| now.iter().any(|n| n == c);
            if present.iter().all(has) && !absent.iter().any(has) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[actix_web::test]
async fn sharded_dynamic_mode_follows_the_rooms_and_spares_the_nodes_without_them() {
    let redis = PrivateRedis::start();
    let (n1, n2) = (node(&redis, Proto::Sharded), node(&redis, Proto::Sharded));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let (mut a, mut c, mut b) = (client(&n1).await, client(&n1).await, client(&n2).await);
    subscribe(&mut a, "lobby").await;
    subscribe(&mut c, "lobby").await;
    subscribe(&mut b, "other").await;
    // The room channels exist while the rooms do.
    let (main, lobby, other) = ("socket.io#/#", "socket.io#/#lobby#", "socket.io#/#other#");
    shard_channels_become(&redis.url(), &[main, lobby, other], &[]).await;

    // A publish to "lobby" goes to the room's channel: node 2, without
    // the room, does not even receive it.
    publish(&mut a, "lobby", serde_json::json!({"n": 1})).await;
    assert_eq!(text(&mut c).await, r#"42["chat",{"n":1}]"#);
    let (status, _) = api(
        &n1,
        reqwest::Method::POST,
        "/publish",
        serde_json::json!({"room": "other", "event": "chat", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(status, 202);
    // Same publisher connection, so "lobby" would have arrived first.
    assert_eq!(text(&mut b).await, r#"42["chat",{"n":2}]"#);
    assert_eq!(
        n2.cluster.received.load(Ordering::Relaxed),
        1,
        "node 2 received only the broadcast to its room"
    );

    // The last member leaves: the channel goes.
    request(&mut a, 4, "unsubscribe", serde_json::json!({"room": "lobby"})).await;
    request(&mut c, 4, "unsubscribe", serde_json::json!({"room": "lobby"})).await;
    shard_channels_become(&redis.url(), &[main, other], &[lobby]).await;
}

/// A Redis Cluster of its own: three masters on free ports (each with its
/// bus port free too), in a temporary directory; killed on drop.
struct PrivateCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!("roomcast-redis-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let bus_free = port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
            if bus_free && !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = PrivateCluster {
            ports: ports.clone(),
            children: vec![],
            dir: dir.clone(),
        };
        for port in &ports {
            let conf = format!("nodes-{port}.conf");
            let dir = dir.to_str().unwrap();
            let cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--dir", dir];
            cluster.children.push(redis_server(*port, &cluster_args));
        }
        ports.iter().for_each(|p| await_listening(*p));
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("redis-cli could not be run ({e}): install it (Debian: apt-get install redis-tools)")
            });
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster
    }

    /// Every node reports `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &self.ports {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the Redis Cluster did not become ready"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn seed(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[0])
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_web::test]
async fn sharded_mode_spans_the_shards_of_a_redis_cluster() {
    let cluster = PrivateCluster::start();
    let (n1, n2) = (
        node_at(cluster.seed(), Proto::Sharded, true),
        node_at(cluster.seed(), Proto::Sharded, true),
    );
    connected(&n1, true).await;
    connected(&n2, true).await;
    // Enough rooms that their channels fall on every shard.
    let rooms: Vec<String> = (0..8).map(|i| format!("room-{i}")).collect();
    let ((mut a, _), (mut b, b_id)) = (client_with_id(&n1).await, client_with_id(&n2).await);
    for room in &rooms {
        subscribe(&mut a, room).await;
        subscribe(&mut b, room).await;
    }
    // Each shard holds the channels of its slots.
    within("room channels on every shard", async {
        loop {
            let mut shards_with_rooms = 0;
            for port in &cluster.ports {
                let channels = shard_channels(&format!("redis://127.0.0.1:{port}/")).await;
                if channels.iter().any(|c| c.contains("#room-")) {
                    shards_with_rooms += 1;
                }
            }
            if shards_with_rooms == cluster.ports.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    for (i, room) in rooms.iter().enumerate() {
        publish(&mut a, room, serde_json::json!({"i": i})).await;
        assert_eq!(text(&mut b).await, format!(r#"42["chat",{{"i":{i}}}]"#));
    }
    publish(&mut b, "room-0", serde_json::json!("back")).await;
    assert_eq!(text(&mut a).await, r#"42["chat","back"]"#);

    // Requests: presence counts both nodes (SHARDNUMSUB on the owning shard,
    // answers on node 1's own channel), and node 1 disconnects B.
    let reply = request(&mut a, 3, "presence", serde_json::json!({"room": "room-3"})).await;
    let v: serde_json::Value = serde_json::from_str(&reply[3..]).unwrap();
    assert_eq!(
        (v[0]["count"].as_u64(), v[0]["partial"].as_bool()),
        (Some(2), Some(false)),
        "{reply}"
    );
    let (status, _) = api(
        &n1,
        reqwest::Method::POST,
        &format!("/sockets/{b_id}/disconnect"),
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 202);
    within("B's connection to close", async {
        while !matches!(next(&mut b).await, Message::Close(_)) {}
    })
    .await;
}
