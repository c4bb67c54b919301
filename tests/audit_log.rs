//! Covers the audit log (issue 6) on real SQLite and real PostgreSQL (a
//! fresh database per test on the machine's server, or a private instance):
//! - every recorded kind, provoked by a real client, is exactly one row with
//!   the right fields: forced closes (API kick, payload limit, expired
//!   token, connect timeout, slow consumer, shutdown), parse errors (HTTP polling body, Engine.IO packet,
//!   Socket.IO packet, event validation), disconnects and refused
//!   handshakes (Engine.IO and Socket.IO CONNECT), on both databases;
//! - a clean shutdown writes every row still queued;
//! - a private PostgreSQL stopped while clients keep provoking events, then
//!   started again: every event is in the table exactly once;
//! - 10,000 parse errors in a burst: other connections' delivery is
//!   complete and in order, the writer's memory stays within its queue and
//!   batch, nothing is lost (RSS and timings printed, not asserted);
//! - hostile strings (quotes, SQL, newlines, NUL, a 1 MB message) are
//!   stored escaped, one row each, and stay on one line in the spill file
//!   and in `roomcast audit`;
//! - `GET /api/v1/audit`: key, filters, limit and cursor;
//! - retention pruning; `roomcast migrate`; `roomcast audit --follow`;
//! - X-Forwarded-For only from a trusted proxy;
//! - two nodes write to one PostgreSQL table, each with its node id.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::audit::{by_sid, count, rows, store, wait_rows, Backend, PrivatePostgres, TestDb};
use common::eio::{next, send, Polling, Ws};
use common::{within, TestServer, SIO};
use futures_util::StreamExt as _;
use roomcast::audit::store::AuditQuery;
use roomcast::audit::{AuditRow, AuditStats};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "audit-test-api-key-0123456789";
const JWT_SECRET: &str = "audit-tests-secret-0123456789abcdef-xyz";

fn server(db: &TestDb, tweak: impl FnOnce(&mut roomcast::config::Settings)) -> TestServer {
    let url = db.url.clone();
    common::spawn(common::settings(|s| {
        common::quiet(s);
        s.database.url = url;
        s.api.keys = vec![API_KEY.into()];
        s.socketio.namespaces = vec!["/".into(), "/custom".into()];
        s.audit.flush_interval_ms = 20;
        // The tests provoke rows with invalid events, thousands per
        // connection and per second: the audit path is under test here, not
        // the allowance of client rows (five per connection and a hundred
        // per second by default; tests/hostile_clients.rs).
        s.limits.audit_rows_per_connection = 1_000_000;
        s.limits.audit_rows_per_second = 1_000_000;
        tweak(s);
    }))
}

/// A WebSocket session with `user_agent`; the socket and its sid.
async fn open_as(server: &TestServer, user_agent: &str) -> (Ws, String) {
    let mut req = format!("{}{SIO}?EIO=4&transport=websocket", server.ws())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("user-agent", user_agent.parse().expect("a valid header value"));
    let (mut ws, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(req))
        .await
        .expect("the WebSocket opens");
    let open = text(&mut ws).await;
    let sid = common::eio::parse_open(&open)["sid"].as_str().unwrap().to_owned();
    (ws, sid)
}

/// The next text frame, answering pings.
async fn text(ws: &mut Ws) -> String {
    loop {
        match next(ws).await {
            Message::Text(t) if t.as_str() == "2" => send(ws, "3").await,
            Message::Text(t) => return t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Joins `nsp` with `auth`; the namespace socket id.
async fn join(ws: &mut Ws, nsp: &str, auth: Option<Value>) -> String {
    let prefix = if nsp == "/" {
        "40".to_owned()
    } else {
        format!("40{nsp},")
    };
    send(
        ws,
        format!("{prefix}{}", auth.map(|a| a.to_string()).unwrap_or_default()),
    )
    .await;
    let reply = text(ws).await;
    assert!(reply.starts_with(&prefix), "{reply}");
    let data: Value = serde_json::from_str(&reply[prefix.len()..]).unwrap();
    data["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("not joined: {reply}"))
        .to_owned()
}

/// Reads until the server closes the socket; the close code.
async fn closed(ws: &mut Ws) -> Option<u16> {
    within("the server's close", async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
}

/// The one row matching `query`: waits for it, flushes the writer, and
/// checks there is exactly one.
async fn one_row(server: &TestServer, db: &TestDb, query: AuditQuery) -> AuditRow {
    let store = store(&db.url);
    wait_rows(&store, query.clone(), 1).await;
    assert!(server.shutdown.flush_audit().await, "the database took every row");
    let mut found = rows(&store, query.clone()).await;
    assert_eq!(found.len(), 1, "exactly one row for {query:?}: {found:#?}");
    found.remove(0)
}

fn kind_and_sid(kind: &str, sid: &str) -> AuditQuery {
    AuditQuery {
        kind: Some(kind.into()),
        ..by_sid(sid)
    }
}

fn token(sub: &str, expires_in: Duration) -> String {
    let exp = (SystemTime::now() + expires_in)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "subscribe": ["*"], "publish": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Fields every row about a WebSocket session of `sid` has.
fn assert_session(row: &AuditRow, server: &TestServer, sid: &str, user_agent: &str) {
    assert_eq!(row.sid.as_deref(), Some(sid));
    assert_eq!(row.node, server.audit.node());
    assert_eq!(row.transport.as_deref(), Some("websocket"));
    assert!(
        row.peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{row:?}"
    );
    assert_eq!(row.user_agent.as_deref(), Some(user_agent));
    assert!(
        uuid::Uuid::parse_str(&row.id).is_ok_and(|u| u.get_version_num() == 7),
        "{row:?}"
    );
    assert!(row.at.ends_with('Z') && row.at.len() == 27, "{row:?}");
}

async fn each_kind_is_one_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = server(&db, |s| {
        s.audit.record_disconnects = true;
        s.audit.record_handshake_refusals = true;
        s.engine.max_payload = 10_000;
        s.auth.jwt_algorithm = "HS256".into();
        s.auth.jwt_secret = JWT_SECRET.into();
        s.auth.anonymous_namespaces = vec!["/".into()];
    });
    let http = reqwest::Client::new();

    // forced close: a kick through the API.
    let (mut ws, sid) = open_as(&server, "kick-agent/1.0").await;
    let socket = join(&mut ws, "/", None).await;
    let kicked = http
        .post(format!("{}/api/v1/sockets/{socket}/disconnect", server.http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(kicked.status(), 202);
    assert_eq!(closed(&mut ws).await, Some(1008));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_session(&row, &server, &sid, "kick-agent/1.0");
    assert_eq!(
        (row.kind.as_str(), row.reason.as_str(), row.code),
        ("forced_close", "forced close", 5)
    );
    assert_eq!(row.socket_id.as_deref(), Some(socket.as_str()));
    assert_eq!(row.namespace.as_deref(), Some("/"));
    assert_eq!(row.detail, "disconnected through the API");
    assert_eq!((row.user_id.as_deref(), row.excerpt.as_deref()), (None, None));

    // forced close: a message above maxPayload.
    let (mut ws, sid) = open_as(&server, "big/1").await;
    send(&mut ws, "4".repeat(20_000)).await;
    assert_eq!(closed(&mut ws).await, Some(1009));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_session(&row, &server, &sid, "big/1");
    assert_eq!((row.kind.as_str(), row.code), ("forced_close", 5));
    assert!(row.detail.contains("maxPayload"), "{row:?}");

    // forced close: an expired token, with the token's user.
    let (mut ws, sid) = open_as(&server, "expiring/1").await;
    let jwt = token("alice", Duration::from_secs(2));
    let socket = join(&mut ws, "/custom", Some(json!({ "token": jwt }))).await;
    assert_eq!(closed(&mut ws).await, Some(1008));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_session(&row, &server, &sid, "expiring/1");
    assert_eq!((row.kind.as_str(), row.code), ("forced_close", 5));
    assert_eq!(row.user_id.as_deref(), Some("alice"));
    assert_eq!(row.namespace.as_deref(), Some("/custom"));
    assert_eq!(row.socket_id.as_deref(), Some(socket.as_str()));
    assert!(row.detail.contains("token expired"), "{row:?}");

    // parse error: a Socket.IO packet.
    let (mut ws, sid) = open_as(&server, "sio-garbage/1").await;
    let socket = join(&mut ws, "/", None).await;
    send(&mut ws, r#"42{"not":"an array"}"#).await;
    assert_eq!(closed(&mut ws).await, Some(1008));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_session(&row, &server, &sid, "sio-garbage/1");
    assert_eq!(
        (row.kind.as_str(), row.reason.as_str(), row.code),
        ("parse_error", "parse error", 4)
    );
    assert_eq!(row.socket_id.as_deref(), Some(socket.as_str()));
    // The Socket.IO packet (the Engine.IO message's data).
    assert_eq!(row.excerpt.as_deref(), Some(r#"2{\"not\":\"an array\"}"#));

    // parse error: an Engine.IO packet.
    let (mut ws, sid) = open_as(&server, "eio-garbage/1").await;
    send(&mut ws, "9garbage").await;
    assert_eq!(closed(&mut ws).await, Some(1008));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_session(&row, &server, &sid, "eio-garbage/1");
    assert_eq!((row.kind.as_str(), row.code), ("parse_error", 4));
    assert_eq!(row.excerpt.as_deref(), Some("9garbage"));
    assert_eq!((row.namespace.as_deref(), row.socket_id.as_deref()), (None, None));

    // parse error: an HTTP polling body.
    let polling = Polling::open(&server, SIO).await;
    assert_eq!(polling.post("x-not-a-payload").await.status(), 400);
    let row = one_row(&server, &db, by_sid(&polling.sid)).await;
    assert_eq!((row.kind.as_str(), row.code), ("parse_error", 4));
    assert_eq!(row.transport.as_deref(), Some("polling"));
    assert_eq!(row.excerpt.as_deref(), Some("x-not-a-payload"));

    // parse error: an event that does not validate; the session stays.
    let (mut ws, sid) = open_as(&server, "validation/1").await;
    let socket = join(&mut ws, "/", None).await;
    send(&mut ws, r#"421["subscribe",{"room":"bad room!"}]"#).await;
    assert!(text(&mut ws).await.contains("invalid_room"));
    let row = one_row(&server, &db, kind_and_sid("parse_error", &sid)).await;
    assert_eq!((row.reason.as_str(), row.code), ("parse error", 4));
    assert_eq!(row.socket_id.as_deref(), Some(socket.as_str()));
    assert!(row.detail.contains("invalid_room"), "{row:?}");
    assert_eq!(
        row.excerpt.as_deref(),
        Some(r#"[\"subscribe\",{\"room\":\"bad room!\"}]"#)
    );
    send(&mut ws, r#"422["subscribe",{"room":"good"}]"#).await;
    assert_eq!(text(&mut ws).await, r#"432[{"ok":true}]"#);

    // handshake refused: a CONNECT with a bad token (redacted), and to an
    // unknown namespace.
    send(&mut ws, r#"40/custom,{"token":"not-a-valid-token-secret"}"#).await;
    assert!(text(&mut ws).await.starts_with("44/custom,"));
    let row = one_row(&server, &db, kind_and_sid("handshake_refused", &sid)).await;
    assert_eq!((row.reason.as_str(), row.code), ("invalid_token", 203));
    assert_eq!(row.namespace.as_deref(), Some("/custom"));
    assert_eq!(row.excerpt.as_deref(), Some(r#"{\"token\":\"[redacted]\"}"#));
    send(&mut ws, "40/nope,").await;
    assert!(text(&mut ws).await.starts_with("44/nope,"));
    let refused = AuditQuery {
        reason: Some("201".into()),
        ..by_sid(&sid)
    };
    let row = one_row(&server, &db, refused).await;
    assert_eq!(
        (row.kind.as_str(), row.reason.as_str()),
        ("handshake_refused", "invalid_namespace")
    );
    assert_eq!(row.namespace.as_deref(), Some("/nope"));

    // disconnect: the client closes the WebSocket.
    ws.close(None).await.unwrap();
    let row = one_row(&server, &db, kind_and_sid("disconnect", &sid)).await;
    assert_eq!((row.reason.as_str(), row.code), ("transport close", 1));
    assert_eq!(row.socket_id.as_deref(), Some(socket.as_str()));

    // handshake refused: an Engine.IO handshake with another protocol version.
    let resp = http
        .get(format!("{}{SIO}?EIO=3&transport=polling", server.http()))
        .header("user-agent", "old-client/3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let refused = AuditQuery {
        reason: Some("105".into()),
        ..Default::default()
    };
    let row = one_row(&server, &db, refused).await;
    assert_eq!(
        (row.kind.as_str(), row.reason.as_str()),
        ("handshake_refused", "Unsupported protocol version")
    );
    assert_eq!(
        (row.sid.as_deref(), row.user_agent.as_deref()),
        (None, Some("old-client/3"))
    );
    assert_eq!(row.excerpt.as_deref(), Some("EIO=3&transport=polling"));

    // Nothing else was written: one row per event above.
    let (rows, distinct) = count(&db.url).await;
    assert_eq!((rows, distinct), (11, 11));
    assert_eq!(AuditStats::get(&server.audit.stats().dropped), 0);
    drop(server);
    db.drop_db().await;
}

/// Two tests running `scenario(backend)`: one on SQLite, one on PostgreSQL.
macro_rules! on_both_databases {
    ($scenario:ident, $sqlite:ident, $postgres:ident) => {
        #[actix_web::test]
        async fn $sqlite() {
            $scenario(Backend::Sqlite).await;
        }

        #[actix_web::test]
        async fn $postgres() {
            $scenario(Backend::Postgres).await;
        }
    };
}

on_both_databases!(
    each_kind_is_one_row,
    each_kind_is_one_row_sqlite,
    each_kind_is_one_row_postgres
);

/// A shutdown writes what the writer still holds: rows wait for a batch
/// that never fills and a flush interval that never comes.
async fn shutdown_flushes_everything(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = server(&db, |s| {
        s.audit.flush_interval_ms = 3_600_000;
        s.audit.batch_size = 10_000;
    });
    let (mut ws, sid) = open_as(&server, "shutdown/1").await;
    join(&mut ws, "/", None).await;
    for i in 0..5 {
        send(&mut ws, format!(r#"42{i}["subscribe",{{"room":"no room {i}"}}]"#)).await;
        assert!(text(&mut ws).await.contains("invalid_room"));
    }
    let store = store(&db.url);
    assert!(
        rows(&store, by_sid(&sid)).await.is_empty(),
        "nothing written before the shutdown"
    );
    server.shutdown.run().await;
    let found = rows(&store, by_sid(&sid)).await;
    let kinds: Vec<(&str, &str)> = found.iter().map(|r| (r.kind.as_str(), r.reason.as_str())).collect();
    assert_eq!(found.len(), 6, "{kinds:?}");
    assert_eq!(kinds[0], ("forced_close", "server shutting down"));
    assert!(
        kinds[1..].iter().all(|k| *k == ("parse_error", "parse error")),
        "{kinds:?}"
    );
    drop(server);
    db.drop_db().await;
}

on_both_databases!(
    shutdown_flushes_everything,
    shutdown_flushes_everything_sqlite,
    shutdown_flushes_everything_postgres
);

/// Sends `n` invalid subscribes numbered from `first` and waits for their
/// error acks (so each was recorded before this returns).
async fn invalid_subscribes(ws: &mut Ws, first: usize, n: usize) {
    for i in first..first + n {
        send(ws, format!(r#"42{i}["subscribe",{{"room":"bad #{i}"}}]"#)).await;
        let reply = text(ws).await;
        assert!(
            reply.starts_with(&format!("43{i}[")) && reply.contains("invalid_room"),
            "{reply}"
        );
    }
}

#[actix_web::test]
async fn postgres_outage_loses_nothing_and_writes_nothing_twice() {
    let mut pg = PrivatePostgres::start();
    let db = TestDb::at(pg.url());
    let server = server(&db, |s| {
        s.database.timeout_ms = 500;
        s.audit.retry_interval_ms = 100;
        s.audit.batch_size = 8;
    });
    let stats = server.audit.stats().clone();
    let store = store(&db.url);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = open_as(&server, &format!("outage/{i}")).await;
        join(&mut ws, "/", None).await;
        clients.push(ws);
    }
    let mut sent = 0;
    let provoke = |sent: &mut usize| {
        let first = *sent;
        *sent += 30;
        first
    };
    // Up: 30 events reach the table.
    let first = provoke(&mut sent);
    for (k, ws) in clients.iter_mut().enumerate() {
        invalid_subscribes(ws, first + k * 10, 10).await;
    }
    wait_rows(&store, AuditQuery::default(), sent).await;

    // Down: clients keep provoking events; they go to the spill file.
    pg.stop();
    for _round in 0..3 {
        let first = provoke(&mut sent);
        for (k, ws) in clients.iter_mut().enumerate() {
            invalid_subscribes(ws, first + k * 10, 10).await;
        }
    }
    within("rows spilled while PostgreSQL is down", async {
        while AuditStats::get(&stats.spilled) < 90 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(AuditStats::get(&stats.db_errors) > 0);

    // Back: the spill file is replayed, new events go in after it.
    pg.resume();
    let first = provoke(&mut sent);
    for (k, ws) in clients.iter_mut().enumerate() {
        invalid_subscribes(ws, first + k * 10, 10).await;
    }
    wait_rows(&store, AuditQuery::default(), sent).await;
    assert!(server.shutdown.flush_audit().await);
    let (total, distinct) = count(&db.url).await;
    assert_eq!(
        (total, distinct),
        (sent as i64, sent as i64),
        "every event exactly once"
    );
    // Each provoked event, by its own room name in the excerpt.
    let all = rows(&store, AuditQuery::default()).await;
    let mut seen: Vec<usize> = all
        .iter()
        .map(|r| {
            let e = r.excerpt.as_deref().unwrap();
            let n = e.split("bad #").nth(1).unwrap().split('\\').next().unwrap();
            n.parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..sent).collect::<Vec<_>>());
    assert!(AuditStats::get(&stats.replayed) >= 90);
    assert_eq!(AuditStats::get(&stats.dropped), 0);
    println!(
        "outage: {sent} events, {} spilled, {} replayed, {} database errors",
        AuditStats::get(&stats.spilled),
        AuditStats::get(&stats.replayed),
        AuditStats::get(&stats.db_errors)
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[actix_web::test]
async fn burst_of_parse_errors_leaves_delivery_and_memory_alone() {
    const BURST: usize = 10_000;
    const QUEUE: usize = 256;
    const BATCH: usize = 128;
    const MESSAGES: usize = 300;
    let db = TestDb::new(Backend::Sqlite).await;
    let server = server(&db, |s| {
        s.server.workers = 2;
        s.audit.queue = QUEUE;
        s.audit.batch_size = BATCH;
        // The burst comes from one client: without this its rate limit
        // would refuse most of it (tests/limits.rs covers that).
        s.limits.packets_per_second = 0;
    });
    let stats = server.audit.stats().clone();
    // A subscriber and a publisher that have nothing to do with the burst.
    let (mut sub, _) = open_as(&server, "subscriber").await;
    join(&mut sub, "/", None).await;
    send(&mut sub, r#"421["subscribe",{"room":"news"}]"#).await;
    assert_eq!(text(&mut sub).await, r#"431[{"ok":true}]"#);
    let (mut publisher, _) = open_as(&server, "publisher").await;
    join(&mut publisher, "/", None).await;
    // Four clients send garbage events as fast as they can (no ack asked).
    let mut senders = Vec::new();
    for k in 0..4 {
        let (mut ws, _) = open_as(&server, &format!("burst/{k}")).await;
        join(&mut ws, "/", None).await;
        senders.push(tokio::spawn(async move {
            use futures_util::SinkExt as _;
            for i in 0..BURST / 4 {
                let frame = format!(r#"42["subscribe",{{"room":"garbage {k} {i}"}}]"#);
                ws.feed(Message::text(frame)).await.unwrap();
            }
            ws.flush().await.unwrap();
            ws
        }));
    }
    let rss_before = rss_kib();
    let started = Instant::now();
    // Meanwhile: every publish reaches the subscriber, in order.
    for i in 0..MESSAGES {
        send(
            &mut publisher,
            format!(r#"42{i}["publish",{{"room":"news","event":"n","data":{i}}}]"#),
        )
        .await;
        assert!(text(&mut publisher).await.contains(r#""ok":true"#));
        assert_eq!(text(&mut sub).await, format!(r#"42["n",{i}]"#));
    }
    let delivered_in = started.elapsed();
    let mut burst_clients = Vec::new();
    for s in senders {
        burst_clients.push(s.await.unwrap());
    }
    within("the burst recorded", async {
        while AuditStats::get(&stats.accepted) < BURST as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let rss_peak = rss_kib();
    let store = store(&db.url);
    wait_rows(
        &store,
        AuditQuery {
            kind: Some("parse_error".into()),
            limit: Some(1),
            ..Default::default()
        },
        1,
    )
    .await;
    assert!(server.shutdown.flush_audit().await);
    let written_in = started.elapsed();
    let (total, distinct) = count(&db.url).await;
    let peak = AuditStats::get(&stats.in_memory_peak);
    println!(
        "burst: {BURST} parse errors; {MESSAGES} deliveries in {delivered_in:?}; all rows in {written_in:?}; \
         writer rows in memory peak {peak} (bound {}); overflowed to spill {}; spilled {}; replayed {}; \
         process RSS {rss_before} KiB before, {rss_peak} KiB after the burst",
        QUEUE + BATCH + 2 * 2,
        AuditStats::get(&stats.overflowed),
        AuditStats::get(&stats.spilled),
        AuditStats::get(&stats.replayed),
    );
    assert_eq!(
        (total, distinct),
        (BURST as i64, BURST as i64),
        "every parse error is one row"
    );
    // The mailbox, the batch, and per recording thread (the 2 workers) one
    // row counted before its try_send and one that a try_send racing the
    // full mark still queues (actix's channel parks its sender only after).
    let bound = (QUEUE + BATCH + 2 * 2) as u64;
    assert!(peak <= bound, "rows in memory {peak} above {bound}");
    assert_eq!(AuditStats::get(&stats.dropped), 0);
    assert_eq!(server.registry.len(), 6, "nobody was disconnected");
    drop(burst_clients);
}

#[actix_web::test]
async fn hostile_strings_are_stored_safely() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        hostile_strings(&db).await;
        db.drop_db().await;
    }
}

const SQL: &str = r#"'); DROP TABLE audit_events; --"#;

async fn hostile_strings(db: &TestDb) {
    let server = server(db, |s| {
        s.engine.max_payload = 2_000_000;
        s.audit.record_handshake_refusals = true;
    });
    let ua = format!("ua {SQL} \"quoted\" \\ back");
    let (mut ws, sid) = open_as(&server, &ua).await;
    join(&mut ws, "/", None).await;
    // Newlines, NUL, a forged JSON line and SQL in an event that does not validate.
    let forged = r#"x\n{\"id\":\"forged\",\"kind\":\"forced_close\"}\n\u0000"#;
    send(&mut ws, format!(r#"421["subscribe",{{"room":"{forged}{SQL}"}}]"#)).await;
    assert!(text(&mut ws).await.contains("invalid_room"));
    // A CONNECT to an unknown namespace made of quotes and SQL.
    let nsp = format!("/{SQL}\"x\"");
    send(&mut ws, format!("40{nsp},")).await;
    assert!(text(&mut ws).await.starts_with("44/"));
    // A 1 MB Socket.IO packet that does not parse.
    let big = format!("42{SQL}{}", "\n\0'\"".repeat(250_000));
    send(&mut ws, big).await;
    assert_eq!(closed(&mut ws).await, Some(1008));
    let store = store(&db.url);
    wait_rows(&store, by_sid(&sid), 3).await;
    assert!(server.shutdown.flush_audit().await);
    let found = rows(&store, by_sid(&sid)).await;
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(count(&db.url).await, (3, 3), "no forged row");
    for row in &found {
        assert_eq!(row.user_agent.as_deref(), Some(ua.as_str()), "stored as sent");
        for field in [Some(&row.detail), row.excerpt.as_ref(), row.namespace.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(!field.chars().any(char::is_control), "control character in {field:?}");
            assert!(field.len() < 1200, "{} bytes", field.len());
        }
    }
    let (big, validation) = (&found[0], &found[2]);
    let big_excerpt = big.excerpt.as_deref().unwrap();
    assert!(
        big_excerpt.starts_with(r#"2\'); DROP TABLE audit_events; --\n\x00"#),
        "{big_excerpt}"
    );
    assert!(big.excerpt.as_deref().unwrap().ends_with('…'));
    assert!(validation.excerpt.as_deref().unwrap().contains("forged"));
    assert_eq!(found[1].namespace.as_deref(), Some(nsp.as_str()));

    // `roomcast audit` prints one line per row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["audit", "--sid", &sid])
        .env("ROOMCAST__DATABASE__URL", &db.url)
        .output()
        .expect("roomcast audit runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("DROP TABLE"));
}

#[actix_web::test]
async fn hostile_strings_stay_in_their_spill_line() {
    // Nothing listens on the database port: every row goes to the spill file.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = common::scratch_dir("spill");
    let spill = dir.join("spill.jsonl");
    let spill_path = spill.display().to_string();
    let server = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.database.url = format!("postgres://postgres@127.0.0.1:{closed_port}/none");
        s.database.timeout_ms = 500;
        s.audit.spill_file = spill_path;
        s.audit.flush_interval_ms = 20;
        // Twenty rows from one connection (five by default).
        s.limits.audit_rows_per_connection = 20;
    }));
    let (mut ws, sid) = open_as(&server, &format!("ua {SQL}")).await;
    join(&mut ws, "/", None).await;
    let forged = "\n{\"id\":\"forged\"}\n\0";
    for i in 0..20 {
        let args = json!(["subscribe", {"room": format!("{forged}{SQL} {i}")}]);
        send(&mut ws, format!("42{i}{args}")).await;
        assert!(text(&mut ws).await.contains("invalid_room"));
    }
    assert!(!server.shutdown.flush_audit().await, "the database is down");
    let content = std::fs::read_to_string(&spill).expect("the spill file");
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 20, "one line per row:\n{content}");
    for line in lines {
        let row: AuditRow = serde_json::from_str(line).expect("each line is one row");
        assert_eq!(row.sid.as_deref(), Some(sid.as_str()));
        assert!(row.excerpt.unwrap().contains("forged"));
    }
}

#[actix_web::test]
async fn api_lists_filters_and_pages() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = server(&db, |_| {});
    let (mut ws, sid) = open_as(&server, "api/1").await;
    join(&mut ws, "/", None).await;
    invalid_subscribes(&mut ws, 0, 7).await;
    send(&mut ws, "9garbage").await;
    closed(&mut ws).await;
    let store = store(&db.url);
    wait_rows(&store, by_sid(&sid), 8).await;
    let http = reqwest::Client::new();
    let get = |query: String| {
        let req = http
            .get(format!("{}/api/v1/audit?{query}", server.http()))
            .bearer_auth(API_KEY);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // Without the key: 401.
    let unauthorized = http
        .get(format!("{}/api/v1/audit", server.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    // Filters.
    let (status, body) = get(format!("sid={sid}&kind=parse_error&reason=parse%20error")).await;
    assert_eq!(status, 200);
    assert_eq!(body["events"].as_array().unwrap().len(), 8);
    assert_eq!(body["next_cursor"], Value::Null);
    let (_, body) = get("kind=forced_close".into()).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 0);
    let (_, body) = get("user=nobody".into()).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 0);
    let (_, body) = get("since=2000-01-01T00:00:00Z&until=2100-01-01T00:00:00%2B01:00".into()).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 8);
    let (_, body) = get("until=2000-01-01T00:00:00Z".into()).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 0);
    // Pages of 3, newest first, no event twice.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        let (status, body) = get(format!("limit=3{cursor}")).await;
        assert_eq!(status, 200);
        let events = body["events"].as_array().unwrap();
        ids.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => {
                assert_eq!(page, 2);
                break;
            }
        }
    }
    assert_eq!(ids.len(), 8);
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(ids, sorted, "newest first, each once");
    // The Engine.IO parse error was the last event.
    let (_, body) = get("limit=1".into()).await;
    assert_eq!(body["events"][0]["excerpt"], "9garbage");
    // Bad parameters: 400.
    for bad in [
        "kind=nope",
        "limit=0",
        "limit=1001",
        "since=yesterday",
        "cursor=abc",
        "limit=x",
    ] {
        let (status, body) = get(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}

#[actix_web::test]
async fn retention_prunes_old_rows() {
    let db = TestDb::new(Backend::Sqlite).await;
    // The table, with a row from long ago.
    let store = store(&db.url);
    store.migrate().await.unwrap();
    let mut old = AuditRow {
        id: uuid::Uuid::now_v7().to_string(),
        at: "2000-01-01T00:00:00.000000Z".into(),
        node: "old".into(),
        kind: "parse_error".into(),
        reason: "parse error".into(),
        code: 4,
        sid: Some("old-sid".into()),
        socket_id: None,
        namespace: None,
        transport: None,
        peer: None,
        user_agent: None,
        user_id: None,
        detail: "long ago".into(),
        excerpt: None,
    };
    store.insert(std::slice::from_ref(&old)).await.unwrap();
    old.id = uuid::Uuid::now_v7().to_string();
    old.at = roomcast::audit::format_time(SystemTime::now());
    old.sid = Some("recent-sid".into());
    store.insert(std::slice::from_ref(&old)).await.unwrap();
    let server = server(&db, |s| {
        s.audit.retention_days = 1;
        s.audit.prune_interval_s = 1;
    });
    within("retention", async {
        while !rows(&store, by_sid("old-sid")).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(rows(&store, by_sid("recent-sid")).await.len(), 1);
    assert_eq!(AuditStats::get(&server.audit.stats().pruned), 1);
}

#[actix_web::test]
async fn migrate_and_follow_commands() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = TestDb::new(backend).await;
        let bin = env!("CARGO_BIN_EXE_roomcast");
        let out = std::process::Command::new(bin)
            .arg("migrate")
            .env("ROOMCAST__DATABASE__URL", &db.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(count(&db.url).await, (0, 0));
        // `audit --follow --json` prints rows stored after it started.
        let mut follow = tokio::process::Command::new(bin)
            .args(["audit", "--follow", "--json"])
            .env("ROOMCAST__DATABASE__URL", &db.url)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let server = server(&db, |_| {});
        let (mut ws, sid) = open_as(&server, "follow/1").await;
        send(&mut ws, "9followed").await;
        closed(&mut ws).await;
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("a followed row in time")
            .unwrap()
            .expect("a line");
        let row: AuditRow = serde_json::from_str(&line).unwrap();
        assert_eq!(row.sid.as_deref(), Some(sid.as_str()));
        assert_eq!(row.excerpt.as_deref(), Some("9followed"));
        let _ = follow.kill().await;
        drop(server);
        db.drop_db().await;
    }
}

#[actix_web::test]
async fn forwarded_for_only_from_trusted_proxies() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (trusted, expected) in [(vec!["127.0.0.1".to_string()], "203.0.113.7"), (vec![], "127.0.0.1:")] {
        let server = server(&db, |s| s.server.trusted_proxies = trusted);
        let polling = {
            let client = reqwest::Client::new();
            let base = format!("{}{SIO}", server.http());
            let open = client
                .get(format!("{base}?EIO=4&transport=polling"))
                .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            common::eio::parse_open(&open)["sid"].as_str().unwrap().to_owned()
        };
        let resp = reqwest::Client::new()
            .post(format!("{}{SIO}?EIO=4&transport=polling&sid={polling}", server.http()))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let row = one_row(&server, &db, by_sid(&polling)).await;
        assert!(row.peer.as_deref().unwrap().starts_with(expected), "{row:?}");
    }
}

/// More forced closes: the connect timeout, and a slow consumer (a client
/// in a room that stops reading while the API floods the room).
#[actix_web::test]
async fn connect_timeout_and_slow_consumer_are_forced_closes() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = server(&db, |s| {
        s.socketio.connect_timeout_ms = 200;
        s.engine.max_buffered_packets = 16;
    });
    let (mut idle, sid) = open_as(&server, "idle/1").await;
    assert_eq!(closed(&mut idle).await, Some(1008));
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_eq!((row.kind.as_str(), row.code), ("forced_close", 5));
    assert!(row.detail.contains("connectTimeout"), "{row:?}");

    let (mut slow, sid) = open_as(&server, "slow/1").await;
    join(&mut slow, "/", None).await;
    send(&mut slow, r#"421["subscribe",{"room":"flood"}]"#).await;
    assert_eq!(text(&mut slow).await, r#"431[{"ok":true}]"#);
    // From now on `slow` reads nothing.
    let http = reqwest::Client::new();
    let data = "x".repeat(64 * 1024);
    let store = store(&db.url);
    let mut published = 0;
    while rows(&store, by_sid(&sid)).await.is_empty() {
        assert!(
            published < 5_000,
            "no slow-consumer row after {published} publishes of 64 KiB"
        );
        for _ in 0..20 {
            let resp = http
                .post(format!("{}/api/v1/publish", server.http()))
                .bearer_auth(API_KEY)
                .json(&json!({"room": "flood", "event": "flood", "data": data}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            published += 1;
        }
    }
    let row = one_row(&server, &db, by_sid(&sid)).await;
    assert_eq!((row.kind.as_str(), row.code), ("forced_close", 5));
    assert!(row.detail.contains("slow consumer"), "{row:?}");
    println!("slow consumer closed after {published} publishes of 64 KiB");
    drop(slow);
}

/// Two nodes of a cluster write to one PostgreSQL table, each with its
/// node name, `server.node_name` (their migrations at start-up do not
/// collide).
#[actix_web::test]
async fn cluster_nodes_share_one_postgres_table() {
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = [
        server(&db, |s| s.server.node_name = "node-a".into()),
        server(&db, |s| s.server.node_name = "node-b".into()),
    ];
    assert_eq!((nodes[0].audit.node(), nodes[1].audit.node()), ("node-a", "node-b"));
    let mut sids = Vec::new();
    for node in &nodes {
        let (mut ws, sid) = open_as(node, "cluster/1").await;
        send(&mut ws, "9garbage").await;
        closed(&mut ws).await;
        sids.push(sid);
    }
    for (node, sid) in nodes.iter().zip(&sids) {
        let row = one_row(node, &db, by_sid(sid)).await;
        assert_eq!(row.node, node.audit.node());
    }
    assert_eq!(count(&db.url).await, (2, 2));
    drop(nodes);
    db.drop_db().await;
}
