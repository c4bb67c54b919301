//! Covers the operations side:
//! - `/metrics` counts what real traffic did: handshakes and open sessions
//!   by transport, sockets by namespace, deliveries and their
//!   publish-to-write latency, events and bytes both ways, disconnects by
//!   reason;
//! - `/healthz` answers; `/readyz` is ready on a single node, and stays
//!   ready (200) while the configured Redis or the audit database is
//!   unreachable, which its body reports (more in tests/readiness.rs);
//! - draining (a real roomcast process and SIGTERM): `/readyz` turns false
//!   and new sessions are refused with 503 at once, the connected clients
//!   are closed with "server shutting down" (WebSocket close 1001) in
//!   batches spread over the drain window, the audit log is flushed (every
//!   closed session's row is in the database after the exit), and the
//!   process exits 0 within it;
//! - the audit queue and spill file are reported by `/metrics`;
//! - a fresh server exposes every family with samples (each label value at
//!   0), `roomcast_build_info{version,node}` with `server.node_name`, and
//!   the `process_*` families read from `/proc/self`.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::eio::{member, next_text, open, send};
use common::{within, TestServer, SIO, SOON};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

async fn metrics(server: &TestServer) -> String {
    let resp = reqwest::get(format!("{}/metrics", server.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    resp.text().await.unwrap()
}

/// The value of the sample `name` (with its labels, as exposed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

/// Waits until `check` holds for the exposition.
async fn metrics_until(server: &TestServer, what: &str, check: impl Fn(&str) -> bool) -> String {
    within(what, async {
        loop {
            let text = metrics(server).await;
            if check(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[actix_web::test]
async fn metrics_count_real_traffic() {
    let server = common::spawn(common::settings(common::quiet));
    let before = metrics(&server).await;
    assert_eq!(sample(&before, "roomcast_deliveries_total"), 0.0);

    let (mut a, mut b) = (member(&server, "m").await, member(&server, "m").await);
    send(&mut a, r#"422["publish",{"room":"m","event":"news","data":1}]"#).await;
    assert_eq!(next_text(&mut a).await, r#"432[{"ok":true,"recipients":1}]"#);
    assert_eq!(next_text(&mut b).await, r#"42["news",1]"#);
    // A polling session too, then A goes away without a close frame (as
    // Node's engine.io, that is "transport close").
    let resp = reqwest::get(format!("{}{SIO}?EIO=4&transport=polling", server.http()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(a);

    let text = metrics_until(&server, "A's end counted", |t| {
        t.contains(r#"roomcast_disconnects_total{reason="transport close"} 1"#)
    })
    .await;
    assert_eq!(
        sample(&text, r#"roomcast_handshakes_total{transport="websocket"}"#),
        2.0
    );
    assert_eq!(sample(&text, r#"roomcast_handshakes_total{transport="polling"}"#), 1.0);
    assert_eq!(sample(&text, r#"roomcast_sessions{transport="websocket"}"#), 1.0);
    assert_eq!(sample(&text, r#"roomcast_sessions{transport="polling"}"#), 1.0);
    assert_eq!(sample(&text, r#"roomcast_sockets{namespace="/"}"#), 1.0);
    assert_eq!(sample(&text, "roomcast_deliveries_total"), 1.0);
    assert_eq!(sample(&text, "roomcast_publish_to_write_seconds_count"), 1.0);
    // CONNECT ×2, subscribe ×2, publish.
    assert!(sample(&text, "roomcast_events_in_total") >= 5.0, "{text}");
    // CONNECT ×2, acks ×3, the delivery.
    assert!(sample(&text, "roomcast_events_out_total") >= 6.0, "{text}");
    assert!(sample(&text, "roomcast_received_bytes_total") > 0.0, "{text}");
    assert!(sample(&text, "roomcast_sent_bytes_total") > 0.0, "{text}");
    assert_eq!(sample(&text, "roomcast_slow_consumer_closes_total"), 0.0);
    // No room names or ids as labels.
    assert!(!text.contains("\"m\""), "{text}");
}

#[actix_web::test]
async fn health_and_readiness() {
    let server = common::spawn(common::settings(common::quiet));
    let resp = reqwest::get(format!("{}/healthz", server.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = reqwest::get(format!("{}/readyz", server.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["database"]["since"].is_string(), "{body}");
    body["database"].as_object_mut().unwrap().remove("since");
    let sessions = body["sessions"]["max"].as_u64().unwrap();
    assert!(sessions > 0, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "ready": true,
            "draining": false,
            "at_capacity": false,
            "sessions": {"open": 0, "max": sessions},
            "redis": {"state": "not configured"},
            "database": {"state": "up"},
        })
    );

    // A cluster node whose Redis does not answer is alive and ready: Redis
    // is every node's, and a 503 for it would take them all out at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.redis.url = format!("redis://127.0.0.1:{closed}/");
        s.redis.command_timeout_ms = 200;
    }));
    let resp = reqwest::get(format!("{}/healthz", node.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = reqwest::get(format!("{}/readyz", node.http())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["redis"]["state"], "down", "{body}");
    assert_eq!(body["ready"], true, "{body}");

    // So is a node whose audit database does not answer (found by the
    // writer's first write, the migrations at start).
    let node = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.database.url = format!("postgres://postgres@127.0.0.1:{closed}/test");
        s.database.timeout_ms = 200;
    }));
    within("/readyz to report the database", async {
        loop {
            let resp = reqwest::get(format!("{}/readyz", node.http())).await.unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap();
            if body["database"]["state"] == "down" {
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["ready"], true, "{body}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A roomcast process on a free port; its pid and port.
fn start_roomcast(env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.env("ROOMCAST__SERVER__HOST", "127.0.0.1")
        .env("ROOMCAST__SERVER__PORT", "0")
        .envs(env.iter().copied());
    common::start_binary(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_batches_and_exits_within_the_window() {
    const CLIENTS: usize = 16;
    let window = Duration::from_millis(3000);
    let dir = common::scratch_dir("drain");
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let spill = dir.join("spill.jsonl").display().to_string();
    let env = [
        ("ROOMCAST__DATABASE__URL", database.as_str()),
        ("ROOMCAST__AUDIT__SPILL_FILE", spill.as_str()),
        // Rows wait for a flush that only the shutdown brings.
        ("ROOMCAST__AUDIT__FLUSH_INTERVAL_MS", "600000"),
        ("ROOMCAST__AUDIT__BATCH_SIZE", "10000"),
    ];
    let (mut child, port) = start_roomcast(&[
        ("ROOMCAST__SERVER__DRAIN_WINDOW_MS", "3000"),
        ("ROOMCAST__SERVER__DRAIN_BATCHES", "4"),
        env[0],
        env[1],
        env[2],
        env[3],
    ]);
    let base = format!("http://127.0.0.1:{port}");
    // Connected clients, each reporting when and how it was closed.
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CLIENTS {
        let url = format!("ws://127.0.0.1:{port}{SIO}?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.next().await.unwrap().unwrap(); // open
        ws.send(Message::text("40")).await.unwrap();
        let connected = ws.next().await.unwrap().unwrap();
        assert!(connected.to_text().unwrap().starts_with("40{"));
        let closed_tx = closed_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Close(frame) => {
                        let code = frame.map(|f| u16::from(f.code));
                        let _ = closed_tx.send((Instant::now(), code));
                        return;
                    }
                    Message::Text(t) if t.as_str() == "2" => {
                        let _ = ws.send(Message::text("3")).await;
                    }
                    _ => {}
                }
            }
        });
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let signalled = Instant::now();
    // Not ready and refusing new sessions at once (as soon as the signal
    // is handled), while the clients are still being closed.
    let http = reqwest::Client::new();
    within("/readyz to turn false", async {
        loop {
            let resp = http.get(format!("{base}/readyz")).send().await.unwrap();
            if resp.status() == 503 {
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["draining"], true);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let resp = http
        .get(format!("{base}{SIO}?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    common::eio::assert_error_body(resp, 503, 4, "Server shutting down").await;

    let mut closes = Vec::new();
    for _ in 0..CLIENTS {
        let (at, code) = within("every client closed", closed.recv()).await.unwrap();
        assert_eq!(code, Some(1001), "server shutting down closes with 1001 (going away)");
        closes.push(at);
    }
    closes.sort();
    // Batches: the closes come in separate waves, spread over the window.
    let waves = 1 + closes
        .windows(2)
        .filter(|w| w[1] - w[0] > Duration::from_millis(150))
        .count();
    assert!(waves >= 3, "{waves} waves of closes");
    assert!(
        closes[CLIENTS - 1] - closes[0] >= window / 4,
        "spread {:?}",
        closes[CLIENTS - 1] - closes[0]
    );

    let status = within("the process to exit", async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "exit status {status}");
    // Within the window, give or take the time to notice the exit.
    assert!(signalled.elapsed() < window + SOON, "took {:?}", signalled.elapsed());

    // The audit log was flushed before the exit: one row per closed session.
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["audit", "--reason", "server shutting down", "--limit", "1000", "--json"])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(rows, CLIENTS, "{}", String::from_utf8_lossy(&out.stdout));
}

#[actix_web::test]
async fn metrics_report_the_audit_log() {
    let server = common::spawn(common::settings(common::quiet));
    // A parse error is an audit row.
    let (mut ws, _) = open(&server, SIO).await;
    send(&mut ws, "9garbage").await;
    let text = metrics_until(&server, "the audit event counted", |t| {
        t.contains("roomcast_audit_recorded_total 1")
    })
    .await;
    assert!(text.contains("roomcast_audit_queue "), "{text}");
    assert!(text.contains("roomcast_audit_spill_bytes "), "{text}");
    assert_eq!(sample(&text, "roomcast_audit_dropped_total"), 0.0);
}

#[actix_web::test]
async fn a_fresh_server_exposes_every_family() {
    let server = common::spawn(common::settings(|s| {
        common::quiet(s);
        s.server.node_name = "ops-node".into();
        s.socketio.namespaces = vec!["/".into(), "/chat".into()];
    }));
    let text = metrics(&server).await;
    // Every family declared has at least one sample.
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (family, kind) = line.split_once(' ').unwrap();
        let sample = match kind {
            "counter" => format!("{family}_total"),
            "info" => format!("{family}_info"),
            "histogram" => format!("{family}_count"),
            _ => family.to_owned(),
        };
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{sample} ")) || l.starts_with(&format!("{sample}{{"))),
            "family {family} ({kind}) has no sample in\n{text}"
        );
    }
    for line in [
        r#"roomcast_sessions{transport="polling"} 0"#,
        r#"roomcast_handshakes_total{transport="websocket"} 0"#,
        r#"roomcast_disconnects_total{reason="ping timeout"} 0"#,
        r#"roomcast_disconnects_total{reason="server shutting down"} 0"#,
        r#"roomcast_limit_breaches_total{limit="max_connections"} 0"#,
        r#"roomcast_invalid_events_total{code="unknown_event"} 0"#,
        r#"roomcast_sockets{namespace="/chat"} 0"#,
        "roomcast_build_info{version=\"0.1.0\",node=\"ops-node\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6, "{text}");
    assert!(sample(&text, "process_virtual_memory_bytes") > 1e6, "{text}");
    assert!(sample(&text, "process_open_fds") >= 3.0, "{text}");
    assert!(
        sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"),
        "{text}"
    );
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds");
    assert!(started <= now + 1.0 && started > now - 3600.0, "{started} vs {now}");
    assert!(text.ends_with("# EOF\n"), "one end marker, at the end");
    assert_eq!(text.matches("# EOF").count(), 1);
}
