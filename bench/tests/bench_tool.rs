//! Covers roomcast-bench, the load generator, against a real server: its
//! `connect` scenario opens every session it was asked for and reads the
//! server's memory and CPU from /proc; its `fanout` scenario counts every
//! delivery (no loss at a low rate) and reports latency figures; its
//! `poll-rtt` scenario makes the round trips it was asked for over
//! long-polling (handshake, CONNECT, acks read from GETs); its
//! `floor-send` / `floor-read` pair does every write it was asked for. No
//! figure is asserted beyond what must hold on any machine.
//!
//! The server is roomcast itself (this crate's dev-dependency), started in
//! the test process, so `--server-pid` is the test's own pid.

use std::process::Command;

use roomcast::config::Settings;
use roomcast::startup::Application;

/// Stops the server on drop.
struct Server {
    port: u16,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_rt::spawn(async move { handle.stop(false).await });
    }
}

/// Starts roomcast on a free loopback port inside the current actix system:
/// one worker, an audit log of its own under cargo's scratch directory,
/// heartbeats too slow to matter for a run of seconds.
fn spawn_roomcast() -> Server {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-tool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let mut s = Settings::defaults();
    s.database.url = format!("sqlite://{}", dir.join("audit.db").display());
    s.audit.spill_file = dir.join("spill.jsonl").display().to_string();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.workers = 1;
    s.engine.ping_interval_ms = 60_000;
    s.engine.ping_timeout_ms = 60_000;
    s.validate().expect("test settings are valid");
    let app = Application::build(s).expect("roomcast starts");
    let server = Server {
        port: app.port(),
        handle: app.handle(),
    };
    actix_rt::spawn(app.run_until_stopped());
    server
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(args)
        .output()
        .expect("roomcast-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "roomcast-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    v["result"].clone()
}

#[actix_rt::test]
async fn connect_and_fanout_scenarios_measure_a_real_server() {
    let server = spawn_roomcast();
    let url = format!("http://127.0.0.1:{}", server.port);
    let pid = std::process::id().to_string();
    let r = tokio::task::spawn_blocking({
        let url = url.clone();
        let pid = pid.clone();
        move || bench(&["connect", "--url", &url, "-n", "60", "--server-pid", &pid])
    })
    .await
    .unwrap();
    assert_eq!(r["sessions"], 60, "{r}");
    assert!(r["sessions_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["handshake_p99_ms"].as_f64().unwrap() >= r["handshake_p50_ms"].as_f64().unwrap(),
        "{r}"
    );
    assert!(r["server_rss_mib"].as_f64().unwrap() > 0.0, "{r}");

    let args = [
        "fanout",
        "--url",
        &url,
        "--rooms",
        "3",
        "--subscribers",
        "4",
        "--publishers",
        "2",
        "--rate",
        "60",
        "--duration",
        "1",
        "--drain",
        "10",
    ];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let r = tokio::task::spawn_blocking(move || bench(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap();
    let published = r["published"].as_u64().unwrap();
    assert!(published >= 50, "{r}");
    // Every publish reaches the 4 members of its room, exactly once.
    assert_eq!(r["expected"].as_u64(), Some(published * 4), "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["loss"], 0.0, "{r}");
    assert!(r["max_ms"].as_f64().unwrap() >= r["p99_ms"].as_f64().unwrap(), "{r}");

    // 4 polling sessions, 40 publishes a second in all, for 1 s measured.
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "poll-rtt",
            "--url",
            &url,
            "--sessions",
            "4",
            "--rate",
            "40",
            "--duration",
            "1",
        ])
    })
    .await
    .unwrap();
    let trips = r["round_trips"].as_u64().unwrap();
    assert!((30..=44).contains(&trips), "{r}");
    assert!(r["rtt_p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["rtt_max_ms"].as_f64().unwrap() >= r["rtt_p99_ms"].as_f64().unwrap(),
        "{r}"
    );
}

#[test]
fn write_floor_does_every_write_and_reports_its_cpu() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let reader = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .args(["floor-read", "--port", &port, "--sockets", "20"])
        .spawn()
        .expect("roomcast-bench floor-read runs");
    let r = bench(&[
        "floor-send",
        "--port",
        &port,
        "--sockets",
        "20",
        "--rate",
        "2000",
        "--duration",
        "1",
    ]);
    let mut reader = reader;
    assert!(
        reader.wait().unwrap().success(),
        "floor-read ends when the writer closes"
    );
    let per_s = r["writes_per_s"].as_f64().unwrap();
    assert!(per_s > 500.0 && per_s <= 2100.0, "{r}");
    assert!(r["sys_us_per_write"].as_f64().unwrap() >= 0.0, "{r}");
    assert_eq!(r["sockets"], 20, "{r}");
}
