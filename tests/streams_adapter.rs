//! Covers `redis.mode = "streams"` at the adapter's seam, with a private
//! `redis-server` and the adapter actor wired to a recording broker (the
//! multi-node behaviour through real servers is in cluster_redis.rs and
//! payload_fidelity.rs, which run in every mode, and tests/cluster's
//! streams.test.mjs against Node.js's `@socket.io/redis-streams-adapter`):
//! - this node's broadcasts are appended as the Node.js adapter appends
//!   them (fields `uid`, `nsp`, `type`, `data`, trimmed with `MAXLEN ~`),
//!   and come back to the broker as `Sequenced` with their entry id, in
//!   the order published, 500 of them;
//! - with `stream_count` > 1 each namespace goes to the stream the
//!   adapter's hash names, and its reader hands it back;
//! - entries written by another node (the Node.js adapter's format,
//!   captured): broadcasts reach the broker in stream order with their ids,
//!   joins, leaves and disconnects become `RemoteOperation`s, this node's
//!   own joins are not applied again, garbage is counted as malformed;
//! - at start the reader reads back the recovery window (`backfill`) as
//!   `Sequenced { backfill: true }`, in order and nothing older, then goes
//!   on live; with nothing in the window, an entry added after it is
//!   handed over live;
//! - Redis killed: a broadcast comes straight back as `Sequenced` without
//!   an offset (local delivery goes on), counted as lost, and its publisher
//!   is told the stream did not take it (it is told so when it did);
//!   Redis restarted:
//!   broadcasts are appended and read again;
//! - sessions: `KeepSession` stores base64 msgpack under
//!   `{session_key_prefix}{pid}` with the TTL in ms, which decodes as the
//!   session; `TakeSession` reads and deletes a session stored in the
//!   Node.js adapter's encoding (captured), then finds none; `DropSession`
//!   deletes; with Redis down `TakeSession` answers `SessionStoreDown`
//!   within the command timeout.
#![cfg(unix)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use roomcast::adapter::redis::{BrokerPorts, Mode, RedisAdapter, RedisConfig, StreamsConfig};
use roomcast::adapter::{
    AdapterStatus, DropSession, Inbound, KeepSession, LocalRooms, LocalSockets, Offset, Outbound, RemoteOp,
    RemoteOperation, Sequenced, Session, SessionStoreDown, SocketInfo, TakeSession,
};
use tokio::sync::mpsc;

use common::redis::PrivateRedis;
use common::within;

/// What the adapter handed to the broker.
#[derive(Debug)]
enum Got {
    Sequenced(Sequenced),
    Op(RemoteOperation),
}

/// A broker that records what it is handed.
struct Recorder(mpsc::UnboundedSender<Got>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Sequenced> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: Sequenced, _: &mut Self::Context) {
        let _ = self.0.send(Got::Sequenced(msg));
    }
}

impl Handler<roomcast::adapter::StreamRead> for Recorder {
    type Result = ();
    fn handle(&mut self, _: roomcast::adapter::StreamRead, _: &mut Self::Context) {}
}

impl Handler<RemoteOperation> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RemoteOperation, _: &mut Self::Context) {
        let _ = self.0.send(Got::Op(msg));
    }
}

impl Handler<Inbound> for Recorder {
    type Result = usize;
    fn handle(&mut self, _: Inbound, _: &mut Self::Context) -> usize {
        0
    }
}

impl Handler<LocalSockets> for Recorder {
    type Result = MessageResult<LocalSockets>;
    fn handle(&mut self, _: LocalSockets, _: &mut Self::Context) -> Self::Result {
        MessageResult(Vec::<SocketInfo>::new())
    }
}

impl Handler<LocalRooms> for Recorder {
    type Result = MessageResult<LocalRooms>;
    fn handle(&mut self, _: LocalRooms, _: &mut Self::Context) -> Self::Result {
        MessageResult(vec![])
    }
}

const UID: &str = "roomcast-test-node";
/// The uid of the Node.js adapter whose entries were captured.
const NODE_UID: &str = "f1ad6ccacabcaf41";

struct Node {
    adapter: Addr<RedisAdapter>,
    got: mpsc::UnboundedReceiver<Got>,
    status: Arc<AdapterStatus>,
}

fn streams(count: usize, backfill: Duration) -> StreamsConfig {
    StreamsConfig {
        stream_name: "socket.io".into(),
        stream_count: count,
        max_len: 10_000,
        read_count: 7,
        block: Duration::from_millis(300),
        session_key_prefix: "sio:session:".into(),
        backfill,
    }
}

fn start(redis: &PrivateRedis, s: StreamsConfig, namespaces: &[&str]) -> Node {
    let (tx, got) = mpsc::unbounded_channel();
    let broker = Recorder(tx).start();
    let status = Arc::new(AdapterStatus::default());
    let config = RedisConfig {
        node_id: UID.into(),
        url: redis.url(),
        tls_ca_file: String::new(),
        key: "socket.io".into(),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        command_timeout: Duration::from_millis(500),
        reconnect_max: Duration::from_millis(200),
        queue: 10_000,
        requests_timeout: Duration::from_secs(1),
        mode: Mode::Streams(s),
    };
    let ports = BrokerPorts {
        inbound: broker.clone().recipient(),
        sockets: broker.clone().recipient(),
        rooms: broker.clone().recipient(),
        ops: broker.clone().recipient(),
        sequenced: broker.clone().recipient(),
        stream_read: broker.recipient(),
    };
    let adapter = RedisAdapter::new(config, ports, status.clone()).unwrap().start();
    Node { adapter, got, status }
}

async fn connected(node: &Node) {
    within("the adapter to connect", async {
        while !node.status.connected.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

impl Node {
    async fn next(&mut self) -> Got {
        within("the broker to be handed something", self.got.recv())
            .await
            .expect("the adapter is running")
    }

    async fn sequenced(&mut self) -> Sequenced {
        match self.next().await {
            Got::Sequenced(s) => s,
            other => panic!("expected a Sequenced, got {other:?}"),
        }
    }

    fn publish(&self, nsp: &str, args: &str, rooms: &[&str]) {
        drop(self.publish_stored(nsp, args, rooms));
    }

    /// Publishes; the answer says whether the stream took it.
    fn publish_stored(&self, nsp: &str, args: &str, rooms: &[&str]) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.adapter.do_send(Outbound {
            nsp: nsp.into(),
            args: args.into(),
            attachments: vec![],
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: vec![],
            stored: Some(tx),
        });
        rx
    }
}

async fn redis_conn(redis: &PrivateRedis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

type Entries = Vec<(String, Vec<(String, String)>)>;

async fn xrange(redis: &PrivateRedis, stream: &str) -> Entries {
    let mut conn = redis_conn(redis).await;
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    raw.into_iter()
        .map(|(id, flat)| (id, flat.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()))
        .collect()
}

async fn xadd(redis: &PrivateRedis, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut conn = redis_conn(redis).await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

async fn xadd_at(redis: &PrivateRedis, id: &str, fields: &[(&str, &str)]) {
    let mut conn = redis_conn(redis).await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg("socket.io").arg(id);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(&mut conn).await.unwrap();
}

fn node_entry<'a>(kind: &'a str, data: &'a str) -> [(&'a str, &'a str); 4] {
    [("uid", NODE_UID), ("nsp", "/"), ("type", kind), ("data", data)]
}

#[actix_web::test]
async fn own_broadcasts_are_appended_as_node_does_and_come_back_in_order() {
    let redis = PrivateRedis::start();
    let mut node = start(&redis, streams(1, Duration::ZERO), &["/"]);
    connected(&node).await;
    node.publish("/", r#"["hello","world",{"a":1,"b":[true,null]}]"#, &["room1"]);
    let back = node.sequenced().await;
    assert!(!back.backfill);
    assert_eq!(&*back.broadcast.args, r#"["hello","world",{"a":1,"b":[true,null]}]"#);
    let entries = xrange(&redis, "socket.io").await;
    assert_eq!(entries.len(), 1);
    let (id, fields) = &entries[0];
    assert_eq!(back.offset, Some(id.parse::<Offset>().unwrap()));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        fields,
        [
            ("uid", UID),
            ("nsp", "/"),
            ("type", "3"),
            (
                "data",
                r#"{"packet":{"type":2,"data":["hello","world",{"a":1,"b":[true,null]}]},"opts":{"rooms":["room1"],"except":[],"flags":{}}}"#
            ),
        ]
    );

    // Many, back to back: they come back in the order published, with
    // growing offsets.
    for i in 0..500 {
        node.publish("/", &format!(r#"["n",{i}]"#), &[]);
    }
    let mut last = back.offset.unwrap();
    for i in 0..500 {
        let s = node.sequenced().await;
        assert_eq!(&*s.broadcast.args, format!(r#"["n",{i}]"#));
        let offset = s.offset.expect("an offset");
        assert!(offset > last, "{offset} after {last}");
        last = offset;
    }
    assert_eq!(node.status.published.load(Ordering::Relaxed), 501);
    assert_eq!(
        node.status.received.load(Ordering::Relaxed),
        0,
        "its own are not received"
    );
}

#[actix_web::test]
async fn namespaces_go_to_the_stream_the_hash_names() {
    let redis = PrivateRedis::start();
    let mut node = start(&redis, streams(3, Duration::ZERO), &["/", "/chat"]);
    connected(&node).await;
    node.publish("/", r#"["root"]"#, &[]);
    node.publish("/chat", r#"["chat"]"#, &[]);
    let mut back = [node.sequenced().await, node.sequenced().await];
    back.sort_by(|a, b| a.broadcast.nsp.cmp(&b.broadcast.nsp));
    assert_eq!(
        (back[0].broadcast.nsp.as_str(), &*back[0].broadcast.args),
        ("/", r#"["root"]"#)
    );
    assert_eq!(
        (back[1].broadcast.nsp.as_str(), &*back[1].broadcast.args),
        ("/chat", r#"["chat"]"#)
    );
    // Where the Node.js adapter puts them with streamCount 3.
    assert_eq!(xrange(&redis, "socket.io-2").await.len(), 1);
    assert_eq!(xrange(&redis, "socket.io-1").await.len(), 1);
}

#[actix_web::test]
async fn other_nodes_entries_reach_the_broker_in_stream_order() {
    let redis = PrivateRedis::start();
    let mut node = start(&redis, streams(1, Duration::ZERO), &["/"]);
    connected(&node).await;
    // As @socket.io/redis-streams-adapter 0.3.1 wrote them (captured; see
    // src/adapter/streams.rs): a broadcast, one with binary, a join, a
    // leave, a disconnect.
    let hello = r#"{"packet":{"type":2,"data":["hello","world",{"a":1,"b":[true,null]}]},"opts":{"rooms":["room1"],"except":["s1"],"flags":{}}}"#;
    let bin = "gqZwYWNrZXSCpHR5cGUCpGRhdGGTo2JpbsQDAQIDgaZuZXN0ZWTEAf+kb3B0c4Olcm9vbXORpXJvb20xpmV4Y2VwdJClZmxhZ3OA";
    let join = r#"{"opts":{"rooms":["room1"],"except":[],"flags":{}},"rooms":["r2","r3"]}"#;
    let leave = r#"{"opts":{"rooms":["room1"],"except":[],"flags":{}},"rooms":["r2"]}"#;
    let disconnect = r#"{"opts":{"rooms":["nobody"],"except":[],"flags":{}},"close":true}"#;
    let first = xadd(&redis, "socket.io", &node_entry("3", hello)).await;
    xadd(
        &redis,
        "socket.io",
        &[("uid", "x"), ("nsp", "/"), ("type", "3"), ("data", "{")],
    )
    .await;
    xadd(&redis, "socket.io", &node_entry("4", join)).await;
    // This node's own join is not applied again (it applied it itself).
    xadd(
        &redis,
        "socket.io",
        &[("uid", UID), ("nsp", "/"), ("type", "4"), ("data", join)],
    )
    .await;
    // A namespace this node does not serve is not its business.
    xadd(
        &redis,
        "socket.io",
        &[("uid", NODE_UID), ("nsp", "/other"), ("type", "3"), ("data", hello)],
    )
    .await;
    let second = xadd(&redis, "socket.io", &node_entry("3", bin)).await;
    xadd(&redis, "socket.io", &node_entry("5", leave)).await;
    xadd(&redis, "socket.io", &node_entry("6", disconnect)).await;

    let s = node.sequenced().await;
    assert_eq!(s.offset, Some(first.parse().unwrap()));
    assert_eq!(&*s.broadcast.args, r#"["hello","world",{"a":1,"b":[true,null]}]"#);
    assert_eq!(
        (s.broadcast.rooms, s.broadcast.except),
        (vec!["room1".into()], vec!["s1".into()])
    );
    let Got::Op(op) = node.next().await else {
        panic!("expected the join")
    };
    assert!(matches!(&op.op, RemoteOp::Join(rooms) if rooms.len() == 2), "{op:?}");
    let s = node.sequenced().await;
    assert_eq!(s.offset, Some(second.parse().unwrap()));
    assert_eq!(s.broadcast.attachments.len(), 2);
    let Got::Op(op) = node.next().await else {
        panic!("expected the leave")
    };
    assert!(matches!(&op.op, RemoteOp::Leave(rooms) if rooms.len() == 1), "{op:?}");
    let Got::Op(op) = node.next().await else {
        panic!("expected the disconnect")
    };
    assert!(matches!(op.op, RemoteOp::Disconnect { close: true }), "{op:?}");
    assert_eq!(node.status.received.load(Ordering::Relaxed), 2);
    assert_eq!(node.status.malformed.load(Ordering::Relaxed), 1);
    // Nothing else (the own join, the other namespace): an own broadcast
    // published now is the next thing handed over.
    node.publish("/", r#"["marker"]"#, &[]);
    assert_eq!(&*node.sequenced().await.broadcast.args, r#"["marker"]"#);
}

#[actix_web::test]
async fn the_recovery_window_is_read_back_at_start_then_live_entries_follow() {
    let redis = PrivateRedis::start();
    // Older than the window: not read back.
    let ancient = r#"{"packet":{"type":2,"data":["ancient"]},"opts":{"rooms":[],"except":[],"flags":{}}}"#;
    xadd_at(&redis, "1000-0", &node_entry("3", ancient)).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let data =
            format!(r#"{{"packet":{{"type":2,"data":["old",{i}]}},"opts":{{"rooms":[],"except":[],"flags":{{}}}}}}"#);
        ids.push(xadd(&redis, "socket.io", &node_entry("3", &data)).await);
    }
    // read_count 7: three XRANGE chunks.
    let mut node = start(&redis, streams(1, Duration::from_secs(60)), &["/"]);
    for (i, id) in ids.iter().enumerate() {
        let s = node.sequenced().await;
        assert!(s.backfill, "entry {i} is for the log only");
        assert_eq!(
            (s.offset, &*s.broadcast.args),
            (Some(id.parse().unwrap()), &*format!(r#"["old",{i}]"#))
        );
    }
    connected(&node).await;
    node.publish("/", r#"["new"]"#, &[]);
    let s = node.sequenced().await;
    assert!(!s.backfill && s.offset.is_some());
    assert_eq!(&*s.broadcast.args, r#"["new"]"#);
}

#[actix_web::test]
async fn an_empty_recovery_window_leaves_no_gap_before_the_live_reads() {
    let redis = PrivateRedis::start();
    let ancient = r#"{"packet":{"type":2,"data":["ancient"]},"opts":{"rooms":[],"except":[],"flags":{}}}"#;
    xadd_at(&redis, "1000-0", &node_entry("3", ancient)).await;
    let mut node = start(&redis, streams(1, Duration::from_secs(60)), &["/"]);
    connected(&node).await;
    // Another node's entry, added after the (empty) window was read: live.
    let data = r#"{"packet":{"type":2,"data":["live"]},"opts":{"rooms":[],"except":[],"flags":{}}}"#;
    let id = xadd(&redis, "socket.io", &node_entry("3", data)).await;
    let s = node.sequenced().await;
    assert_eq!(
        (s.backfill, s.offset, &*s.broadcast.args),
        (false, Some(id.parse().unwrap()), r#"["live"]"#)
    );
}

#[actix_web::test]
async fn with_redis_down_broadcasts_come_back_at_once_without_an_offset() {
    let mut redis = PrivateRedis::start();
    let mut node = start(&redis, streams(1, Duration::ZERO), &["/"]);
    connected(&node).await;
    let stored = node.publish_stored("/", r#"["before"]"#, &[]);
    assert!(node.sequenced().await.offset.is_some());
    assert_eq!(stored.await, Ok(true), "the publisher is told the stream took it");

    redis.kill();
    for i in 0..3 {
        let stored = node.publish_stored("/", &format!(r#"["down",{i}]"#), &[]);
        let s = node.sequenced().await;
        assert_eq!((s.offset, &*s.broadcast.args), (None, &*format!(r#"["down",{i}]"#)));
        assert_eq!(
            stored.await,
            Ok(false),
            "the publisher is told the stream did not take it"
        );
    }
    assert!(node.status.lost.load(Ordering::Relaxed) >= 3);
    // The session store is down too: said so within the command timeout.
    let started = std::time::Instant::now();
    let taken = node.adapter.send(TakeSession { pid: "p".into() }).await.unwrap();
    assert_eq!(taken, Err(SessionStoreDown));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    redis.spawn();
    connected(&node).await;
    node.publish("/", r#"["after"]"#, &[]);
    let s = node.sequenced().await;
    assert_eq!(&*s.broadcast.args, r#"["after"]"#);
    assert!(s.offset.is_some(), "appended and read again");
}

#[actix_web::test]
async fn sessions_are_kept_taken_once_and_dropped_in_nodes_encoding() {
    let redis = PrivateRedis::start();
    let node = start(&redis, streams(1, Duration::ZERO), &["/"]);
    connected(&node).await;
    let mut conn = redis_conn(&redis).await;
    let session = Session {
        sid: "dhbOW659Atx9jpp_AAAA".into(),
        pid: "mcfWJZvdw73l-y-gAAAB".into(),
        rooms: vec!["dhbOW659Atx9jpp_AAAA".into(), "room1".into(), "r3".into()],
        data: serde_json::json!({"publish": ["news:*"], "subscribe": ["*"], "user": "alice"}),
    };
    node.adapter.do_send(KeepSession {
        session: session.clone(),
        ttl: Duration::from_secs(120),
    });
    let key = "sio:session:mcfWJZvdw73l-y-gAAAB";
    let stored: String = within("the session to be stored", async {
        loop {
            let v: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
            if let Some(v) = v {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The very value the Node.js adapter stores for this session (captured,
    // see src/adapter/streams.rs), so Node.js nodes restore it.
    assert_eq!(stored, "hKNzaWS0ZGhiT1c2NTlBdHg5anBwX0FBQUGjcGlktG1jZldKWnZkdzczbC15LWdBQUFCpXJvb21zk7RkaGJPVzY1OUF0eDlqcHBfQUFBQaVyb29tMaJyM6RkYXRhg6dwdWJsaXNokaZuZXdzOiqpc3Vic2NyaWJlkaEqpHVzZXKlYWxpY2U=");
    let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
    assert!((110_000..=120_000).contains(&ttl), "{ttl}");
    let taken = node
        .adapter
        .send(TakeSession {
            pid: session.pid.clone(),
        })
        .await
        .unwrap();
    assert_eq!(taken, Ok(Some(session.clone())));
    assert_eq!(
        node.adapter
            .send(TakeSession {
                pid: session.pid.clone()
            })
            .await
            .unwrap(),
        Ok(None),
        "taken once"
    );

    // A session the Node.js adapter stored (captured).
    let _: () = redis::cmd("SET")
        .arg("sio:session:oNPLAH_LC4oVdKFyAAAB")
        .arg("hKNzaWS0a1RNZTVJNGtLQTVVUGVXMkFBQUGjcGlktG9OUExBSF9MQzRvVmRLRnlBQUFCpXJvb21zk7RrVE1lNUk0a0tBNVVQZVcyQUFBQaVyb29tMaJyM6RkYXRhgqR1c2VypWFsaWNloW4B")
        .query_async(&mut conn)
        .await
        .unwrap();
    let taken = node
        .adapter
        .send(TakeSession {
            pid: "oNPLAH_LC4oVdKFyAAAB".into(),
        })
        .await
        .unwrap();
    let from_node = taken.unwrap().expect("the Node.js session");
    assert_eq!(from_node.sid, "kTMe5I4kKA5UPeW2AAAA");
    assert_eq!(from_node.rooms, ["kTMe5I4kKA5UPeW2AAAA", "room1", "r3"]);
    assert_eq!(from_node.data, serde_json::json!({"user": "alice", "n": 1}));

    // Dropped: deleted.
    node.adapter.do_send(KeepSession {
        session: session.clone(),
        ttl: Duration::from_secs(60),
    });
    node.adapter.do_send(DropSession {
        pid: session.pid.clone(),
    });
    // The writer keeps the order: once a later write is there, the drop is done.
    node.adapter.do_send(KeepSession {
        session: Session {
            pid: "later".into(),
            ..session.clone()
        },
        ttl: Duration::from_secs(60),
    });
    within("the later session", async {
        loop {
            let n: i64 = redis::cmd("EXISTS")
                .arg("sio:session:later")
                .query_async(&mut conn)
                .await
                .unwrap();
            if n == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let n: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.unwrap();
    assert_eq!(n, 0, "dropped");
    assert_eq!(node.status.sessions_dropped.load(Ordering::Relaxed), 0);
}
