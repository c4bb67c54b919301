//! Covers readiness being about this node only:
//! - Redis killed (a private `redis-server`) and the audit database down:
//!   `/readyz` still answers 200 `{"ready": true, …}`, with both reported
//!   down in its body and in `/healthz`'s, and in `/metrics`
//!   (`roomcast_redis_connected 0`, `roomcast_audit_database_up 0`); Redis
//!   back: reported up again;
//! - at its own session cap (`server.max_connections`) the node answers 503
//!   (`at_capacity`), and 200 again once a session ends;
//! - a real roomcast process logs one line when Redis goes down and one
//!   when it comes back, with the node's name, and stays ready meanwhile;
//! - `roomcast_redis_*` exist only where Redis is configured.
#![cfg(unix)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::redis::PrivateRedis;
use common::{within, TestServer, SIO, SOON};
use serde_json::Value;

fn free_port() -> u16 {
    // unwrap: loopback has free ports.
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path`: its status and JSON body.
async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.expect("an answer");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// Polls `/readyz` until `check` holds for its body; the last answer.
async fn readyz_until(server: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> (u16, Value) {
    within(what, async {
        loop {
            let (status, body) = get_json(&server.http(), "/readyz").await;
            if check(&body) {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[actix_web::test]
async fn redis_and_the_database_down_leave_the_node_ready() {
    let mut redis = PrivateRedis::start();
    let closed = free_port();
    let url = redis.url();
    let server = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.redis.url = url;
        s.redis.command_timeout_ms = 300;
        s.redis.reconnect_max_ms = 200;
        // Nothing listens there: the writer's first write (the migrations
        // at start) fails after the timeout.
        s.database.url = format!("postgres://roomcast:secret@127.0.0.1:{closed}/audit");
        s.database.timeout_ms = 200;
    }));
    readyz_until(&server, "Redis up", |b| b["redis"]["state"] == "up").await;
    redis.kill();

    let (status, body) = readyz_until(&server, "both reported down", |b| {
        b["redis"]["state"] == "down" && b["database"]["state"] == "down"
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["draining"], false, "{body}");
    assert_eq!(body["at_capacity"], false, "{body}");
    for dependency in ["redis", "database"] {
        let since = body[dependency]["since"].as_str().expect("since");
        assert!(humantime::parse_rfc3339(since).is_ok(), "{since}");
    }
    // No address of a dependency in a body a balancer (or anyone) can read.
    assert!(!body.to_string().contains(&closed.to_string()), "{body}");

    let (status, health) = get_json(&server.http(), "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"]["state"], "down");
    assert_eq!(health["database"]["state"], "down");

    assert_eq!(common::metric(&server, "roomcast_redis_connected").await, 0);
    let metrics = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nroomcast_redis_connected 0\n"), "{metrics}");
    assert!(metrics.contains("\nroomcast_audit_database_up 0\n"), "{metrics}");

    // Sessions are still taken.
    let resp = reqwest::get(format!("{}{SIO}?EIO=4&transport=polling", server.http()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    redis.spawn();
    let (status, body) = readyz_until(&server, "Redis back", |b| b["redis"]["state"] == "up").await;
    assert_eq!((status, &body["ready"]), (200, &Value::Bool(true)), "{body}");
    assert_eq!(common::metric(&server, "roomcast_redis_connected").await, 1);
}

#[actix_web::test]
async fn a_node_at_its_session_cap_is_not_ready() {
    let server = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.server.max_connections = 1;
    }));
    let (status, body) = get_json(&server.http(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], serde_json::json!({"open": 0, "max": 1}));

    let session = common::eio::Polling::open(&server, SIO).await;
    let (status, body) = readyz_until(&server, "the session counted", |b| b["sessions"]["open"] == 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["at_capacity"], true, "{body}");
    assert_eq!(body["draining"], false, "{body}");

    // The client closes: a place is free, the node is ready again.
    session.post_ok("1").await;
    // At most one GET drains the closed session (a noop), then it is gone.
    let _ = session.get().await;
    let (status, body) = readyz_until(&server, "the place given back", |b| b["at_capacity"] == false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
}

#[actix_web::test]
async fn redis_metrics_only_where_redis_is_configured() {
    let server = common::spawn(common::settings(common::quiet));
    let text = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("roomcast_redis_"), "{text}");
    assert!(text.contains("\nroomcast_audit_database_up 1\n"), "{text}");
    let (_, body) = get_json(&server.http(), "/readyz").await;
    assert_eq!(body["redis"], serde_json::json!({"state": "not configured"}));
}

/// A real roomcast process's log lines, as they come.
struct Logs {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    port: u16,
}

impl Logs {
    fn start(env: &[(&str, &str)]) -> Logs {
        let dir = common::scratch_dir("readiness-logs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .env("ROOMCAST__SERVER__HOST", "127.0.0.1")
            .env("ROOMCAST__SERVER__PORT", "0")
            .env(
                "ROOMCAST__DATABASE__URL",
                format!("sqlite://{}", dir.join("audit.db").display()),
            )
            .env("ROOMCAST__AUDIT__SPILL_FILE", dir.join("spill.jsonl"))
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roomcast starts");
        // unwrap: stderr is piped above.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut logs = Logs { child, lines, port: 0 };
        let line = logs.until("the listening line", |l| l.contains("roomcast listening on"));
        logs.port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a port");
        logs
    }

    fn until(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + SOON * 2;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if check(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line for {what}"),
            }
        }
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_is_logged_when_redis_goes_down_and_when_it_comes_back() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let mut logs = Logs::start(&[
        ("ROOMCAST__REDIS__URL", url.as_str()),
        ("ROOMCAST__REDIS__COMMAND_TIMEOUT_MS", "300"),
        ("ROOMCAST__REDIS__RECONNECT_MAX_MS", "200"),
        ("ROOMCAST__SERVER__NODE_NAME", "edge-7"),
        ("NO_COLOR", "1"),
    ]);
    let base = format!("http://127.0.0.1:{}", logs.port);
    within("Redis up", async {
        while get_json(&base, "/readyz").await.1["redis"]["state"] != "up" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    redis.kill();
    let down = logs.until("Redis down", |l| {
        l.contains("redis unreachable") && l.contains(r#"dependency="redis""#)
    });
    assert!(down.contains("node=edge-7"), "{down}");
    assert!(down.contains(&format!("at=127.0.0.1:{}", redis.port)), "{down}");
    assert!(!down.contains('\u{1b}'), "no colour codes in a pipe: {down:?}");
    let (status, body) = get_json(&base, "/readyz").await;
    assert_eq!((status, &body["redis"]["state"]), (200, &Value::from("down")), "{body}");

    redis.spawn();
    let up = logs.until("Redis back", |l| l.contains("redis reachable again"));
    assert!(up.contains(r#"state="up""#), "{up}");
}
