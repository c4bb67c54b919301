//! Covers TLS to Redis and PostgreSQL, with certificates made for the test
//! (a CA, a server certificate for 127.0.0.1 signed by it, another CA) and
//! private servers:
//! - two nodes share broadcasts and presence over a TLS-only redis-server
//!   (`rediss://`, `redis.tls_ca_file`) as an ACL user allowed only the
//!   adapter's commands and channels (classic and sharded protocols), the
//!   `default` user being off;
//! - the same across a Redis Cluster with TLS on every port
//!   (`tls-cluster`), as that ACL user;
//! - a CA that did not sign the server's certificate: the node does not
//!   connect, logs an error naming the server (host, port, TLS) and the
//!   untrusted certificate, reports itself not connected, and keeps
//!   serving its own clients; a wrong password is refused with an error
//!   saying to check the user and password;
//! - settings: a CA file for a `redis://` URL, a CA file that does not
//!   exist or holds no certificate, are refused at validation;
//! - the audit log writes rows to a PostgreSQL that accepts TLS only
//!   (`sslmode=verify-full&sslrootcert=…`); the wrong CA is refused with an
//!   error naming the server and the certificate; `sslmode=require` to a
//!   server without ssl fails with an error naming the server, the sslmode
//!   and that the server has no TLS.
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::audit::{by_sid, store, wait_rows, PrivatePostgres};
use common::eio::{open, send, Ws};
use common::redis::{client, connected, publish, request, subscribe, text};
use common::tls::{
    capture_logs, logs, Pki, TlsRedis, TlsRedisCluster, ADAPTER_PASSWORD, ADAPTER_USER, ADMIN_PASSWORD, ADMIN_USER,
};
use common::{within, TestServer, SIO, SOON};
use roomcast::audit::store::{Store, StoreError};
use roomcast::config::{DatabaseSettings, RedisMode, Settings};
use sqlx::Connection as _;

/// A node on `url`, trusting `ca`.
fn node(url: &str, ca: &std::path::Path, tweak: impl FnOnce(&mut Settings)) -> TestServer {
    let (url, ca) = (url.to_owned(), ca.display().to_string());
    common::spawn(common::settings(move |s| {
        common::quiet(s);
        s.redis.url = url;
        s.redis.tls_ca_file = ca;
        s.redis.command_timeout_ms = 1000;
        s.redis.reconnect_max_ms = 200;
        tweak(s);
    }))
}

/// Presence of `room` as `ws` sees it: (count, partial).
async fn presence(ws: &mut Ws, room: &str) -> (Option<u64>, Option<bool>) {
    let reply = request(ws, 3, "presence", serde_json::json!({ "room": room })).await;
    // unwrap: the reply is `433` and a JSON array.
    let v: serde_json::Value = serde_json::from_str(&reply[3..]).unwrap();
    (v[0]["count"].as_u64(), v[0]["partial"].as_bool())
}

/// Two nodes on `url`: broadcasts both ways, once each, and presence
/// counting both nodes (PUBSUB NUMSUB / SHARDNUMSUB and the request and
/// response channels, all within the ACL user's rights).
async fn two_nodes_share(n1: &TestServer, n2: &TestServer, rooms: &[&str]) {
    connected(n1, true).await;
    connected(n2, true).await;
    let (mut a, mut b) = (client(n1).await, client(n2).await);
    for room in rooms {
        subscribe(&mut a, room).await;
        subscribe(&mut b, room).await;
    }
    for (i, room) in rooms.iter().enumerate() {
        publish(&mut a, room, serde_json::json!({ "i": i })).await;
        assert_eq!(text(&mut b).await, format!(r#"42["chat",{{"i":{i}}}]"#));
    }
    publish(&mut b, rooms[0], serde_json::json!("back")).await;
    assert_eq!(text(&mut a).await, r#"42["chat","back"]"#);
    assert_eq!(presence(&mut a, rooms[0]).await, (Some(2), Some(false)));
}

#[actix_web::test]
async fn classic_nodes_share_broadcasts_over_tls_as_an_acl_user() {
    let pki = Pki::make();
    let redis = TlsRedis::start(&pki);
    let url = redis.url(ADAPTER_USER, ADAPTER_PASSWORD);
    let (n1, n2) = (node(&url, &pki.ca, |_| {}), node(&url, &pki.ca, |_| {}));
    two_nodes_share(&n1, &n2, &["lobby"]).await;
}

#[actix_web::test]
async fn sharded_nodes_share_broadcasts_over_tls_as_an_acl_user() {
    let pki = Pki::make();
    let redis = TlsRedis::start(&pki);
    let url = redis.url(ADAPTER_USER, ADAPTER_PASSWORD);
    let sharded = |s: &mut Settings| s.redis.mode = RedisMode::Sharded;
    let (n1, n2) = (node(&url, &pki.ca, sharded), node(&url, &pki.ca, sharded));
    two_nodes_share(&n1, &n2, &["lobby"]).await;
}

#[actix_web::test]
async fn a_tls_redis_cluster_carries_broadcasts_as_an_acl_user() {
    let pki = Pki::make();
    let cluster = TlsRedisCluster::start(&pki);
    let url = cluster.seed(ADAPTER_USER, ADAPTER_PASSWORD);
    let on_cluster = |s: &mut Settings| {
        s.redis.mode = RedisMode::Sharded;
        s.redis.cluster = true;
    };
    let (n1, n2) = (node(&url, &pki.ca, on_cluster), node(&url, &pki.ca, on_cluster));
    // Enough rooms that their channels fall on every shard.
    let rooms: Vec<String> = (0..8).map(|i| format!("room-{i}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    two_nodes_share(&n1, &n2, &rooms).await;
    // Each shard (reached over TLS) holds room channels: the nodes
    // subscribed on every one of them.
    for port in &cluster.ports {
        let out = common::tls::redis_cli(&pki, *port, &["pubsub", "shardchannels", "socket.io#/#room-*"]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "no room channel on the shard at {port}"
        );
    }
}

/// Waits until the log has a line with every one of `parts`; that line.
async fn logged(parts: &[&str]) -> String {
    within(&format!("a log line with {parts:?}"), async {
        loop {
            if let Some(line) = logs().lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[actix_web::test]
async fn a_wrong_ca_is_refused_clearly_and_the_node_serves_its_own_clients() {
    capture_logs();
    let pki = Pki::make();
    let redis = TlsRedis::start(&pki);
    let n = node(&redis.url(ADAPTER_USER, ADAPTER_PASSWORD), &pki.other_ca, |_| {});
    let server = format!("Redis at 127.0.0.1:{} (TLS)", redis.port);
    let line = logged(&["redis adapter cannot subscribe", &server]).await;
    assert!(line.contains("UnknownIssuer"), "the cause: {line}");
    assert!(line.contains("redis.tls_ca_file"), "the setting to look at: {line}");
    // Not connected, and stays so; the node's own clients are served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!n.cluster.connected.load(Ordering::Relaxed));
    let (mut a, mut b) = (client(&n).await, client(&n).await);
    subscribe(&mut b, "lobby").await;
    publish(&mut a, "lobby", serde_json::json!("local")).await;
    assert_eq!(text(&mut b).await, r#"42["chat","local"]"#);

    // A wrong password: refused, and the log says what to check.
    let n = node(&redis.url(ADAPTER_USER, "not-the-password"), &pki.ca, |_| {});
    let line = logged(&[&server, "check the user and password"]).await;
    assert!(
        !line.contains("not-the-password"),
        "the password stays out of the log: {line}"
    );
    assert!(!n.cluster.connected.load(Ordering::Relaxed));
}

#[test]
fn tls_settings_are_checked_before_start() {
    let pki = Pki::make();
    let ca = pki.ca.display().to_string();
    let invalid = |url: &str, ca: &str| {
        let mut s = Settings::defaults();
        s.redis.url = url.into();
        s.redis.tls_ca_file = ca.into();
        s.validate().expect_err("invalid").to_string()
    };
    let msg = invalid("redis://127.0.0.1:6379/", &ca);
    assert!(msg.contains("redis.tls_ca_file") && msg.contains("rediss://"), "{msg}");
    let msg = invalid("rediss://127.0.0.1:6379/", "/nonexistent/ca.pem");
    assert!(
        msg.contains("/nonexistent/ca.pem") && msg.contains("cannot read"),
        "{msg}"
    );
    let msg = invalid("rediss://127.0.0.1:6379/", &pki.server_key.display().to_string());
    assert!(msg.contains("no PEM certificate"), "{msg}");
    let msg = invalid("http://127.0.0.1:6379/", "");
    assert!(msg.contains("redis.url") && msg.contains("rediss://"), "{msg}");
    // A good CA with rediss:// (one server and a cluster seed) passes.
    for cluster in [false, true] {
        let mut s = Settings::defaults();
        s.redis.url = format!("rediss://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:6380/");
        s.redis.tls_ca_file = ca.clone();
        s.redis.cluster = cluster;
        if cluster {
            s.redis.mode = RedisMode::Sharded;
        }
        s.validate().expect("valid TLS settings");
    }
}

/// `postgres://postgres@127.0.0.1:PORT/postgres?…`
fn pg_url(pg: &PrivatePostgres, query: &str) -> String {
    format!("{}?{query}", pg.url())
}

fn pg_store(url: &str) -> Store {
    Store::connect_lazy(&DatabaseSettings {
        url: url.to_owned(),
        max_connections: 1,
        timeout_ms: 5000,
    })
    .expect("a store")
}

#[actix_web::test]
async fn audit_rows_reach_postgres_over_tls_verify_full() {
    let pki = Pki::make();
    let pg = PrivatePostgres::start_with_ssl(&pki.server_cert, &pki.server_key);
    let url = pg_url(&pg, &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()));

    // The server takes TLS only: a connection in the clear is refused.
    let clear = sqlx::PgConnection::connect(&pg_url(&pg, "sslmode=disable")).await;
    assert!(clear.is_err(), "the server must refuse connections without TLS");

    let db_url = url.clone();
    let server = common::spawn(common::settings(move |s| {
        common::quiet(s);
        s.database.url = db_url;
        s.audit.flush_interval_ms = 20;
    }));
    let (mut ws, open) = open(&server, SIO).await;
    let sid = open["sid"].as_str().expect("a sid").to_owned();
    send(&mut ws, "9garbage").await;
    let rows = wait_rows(&store(&url), by_sid(&sid), 1).await;
    assert_eq!((rows[0].kind.as_str(), rows[0].code), ("parse_error", 4));
    assert!(server.shutdown.flush_audit().await, "the database took every row");

    // And the connection was TLS, as PostgreSQL itself reports.
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect over TLS");
    let (ssl,): (bool,) = sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl);

    // The wrong CA: refused, naming the server and the certificate.
    let wrong = pg_url(
        &pg,
        &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
    );
    let e = pg_store(&wrong).migrate().await.expect_err("an untrusted certificate");
    assert!(matches!(e, StoreError::Connect { .. }), "{e:?}");
    let msg = e.to_string();
    let target = format!("127.0.0.1:{} (sslmode=verify-full)", pg.port);
    assert!(
        msg.contains(&target) && msg.contains("UnknownIssuer") && msg.contains("sslrootcert"),
        "{msg}"
    );
}

#[actix_web::test]
async fn sslmode_require_to_a_server_without_ssl_fails_clearly() {
    let pg = PrivatePostgres::start();
    let e = tokio::time::timeout(SOON, pg_store(&pg_url(&pg, "sslmode=require")).migrate())
        .await
        .expect("an answer")
        .expect_err("no TLS on the server");
    let msg = e.to_string();
    let target = format!("127.0.0.1:{} (sslmode=require)", pg.port);
    assert!(
        msg.contains(&target) && msg.contains("does not support TLS") && msg.contains("ssl off"),
        "{msg}"
    );
    // The same server in the clear (sslmode=prefer, the default) works.
    pg_store(&pg.url()).migrate().await.expect("migrations without TLS");
}
