//! Shared by the integration tests: start a real roomcast on port 0, the
//! endpoints and timing helpers; Engine.IO clients in `eio`, HTTP and
//! WebSocket written by hand over TCP in `raw`.
#![allow(dead_code)]

#[cfg(unix)]
pub mod audit;
pub mod eio;
pub mod raw;
#[cfg(unix)]
pub mod redis;
#[cfg(unix)]
pub mod suite;
#[cfg(unix)]
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use roomcast::config::Settings;
use roomcast::startup::Application;

/// A running server.
pub struct TestServer {
    /// Bound port.
    pub port: u16,
    /// Stops the server on drop.
    pub handle: actix_web::dev::ServerHandle,
    /// The Socket.IO endpoint's sessions.
    pub registry: roomcast::conn::Registry,
    /// Namespace sockets joining and leaving.
    pub events: tokio::sync::broadcast::Receiver<roomcast::conn::events::SocketEvent>,
    /// Graceful shutdown.
    pub shutdown: roomcast::startup::Shutdown,
    /// The cluster adapter's state.
    pub cluster: std::sync::Arc<roomcast::adapter::AdapterStatus>,
    /// The audit log's handle (counters, node id).
    pub audit: roomcast::audit::AuditHandle,
    /// The admin listener's port (`admin.address`).
    pub admin_port: Option<u16>,
}

impl TestServer {
    /// `http://127.0.0.1:PORT`
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `ws://127.0.0.1:PORT`
    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

/// A new empty directory under cargo's scratch directory for integration
/// tests (`target/tmp`), unique to this process and call.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Test settings: loopback, port 0, one worker, fast heartbeats, the echo
/// endpoint at `/engine.io/`, the audit log in a SQLite file and spill file
/// of its own (see [`scratch_dir`]); `tweak` adjusts them further.
pub fn settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings::defaults();
    let dir = scratch_dir("audit");
    s.database.url = format!("sqlite://{}", dir.join("audit.db").display());
    s.audit.spill_file = dir.join("spill.jsonl").display().to_string();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.workers = 1;
    s.server.echo_path = "/engine.io/".into();
    s.engine.ping_interval_ms = 300;
    s.engine.ping_timeout_ms = 200;
    tweak(&mut s);
    s.validate().expect("test settings are valid");
    s
}

/// Starts a server inside the current actix system (use `#[actix_web::test]`).
pub fn spawn(settings: Settings) -> TestServer {
    let app = Application::build_watched(settings).expect("server starts");
    let port = app.port();
    let admin_port = app.admin_port();
    let handle = app.handle();
    let registry = app.registry.clone();
    let events = app.events();
    let shutdown = app.shutdown();
    let cluster = app.cluster.clone();
    let audit = app.audit.clone();
    actix_web::rt::spawn(app.run_until_stopped());
    TestServer {
        port,
        handle,
        registry,
        events,
        shutdown,
        cluster,
        audit,
        admin_port,
    }
}

/// The echo endpoint: every message is sent back.
pub const ECHO: &str = "/engine.io/";
/// The Socket.IO endpoint; `server.registry` holds its sessions. The
/// Engine.IO tests send it only Engine.IO-level input (what it makes of
/// messages is the Socket.IO layer's business).
pub const SIO: &str = "/socket.io/";
/// Upper bound for anything that should happen "now".
pub const SOON: Duration = Duration::from_secs(5);

/// Heartbeat far away, for tests that are not about it.
pub fn quiet(s: &mut Settings) {
    s.engine.ping_interval_ms = 60_000;
    s.engine.ping_timeout_ms = 60_000;
}

/// `fut`, which must complete within `SOON`.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Tests that measure the whole process (its open fds, its resident
/// memory) run alone; every other test of such a file holds a share.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A share of the process, for a test that measures nothing process-wide.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    PROCESS.read().await
}

/// The process to itself, for a test that counts fds or memory.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    PROCESS.write().await
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A request to the HTTP API of `server` with the bearer `key` and a JSON
/// `body` (null for none): the status and the JSON answer (null when none).
pub async fn api(
    server: &TestServer,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}/api/v1{path}", server.http()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("an API answer");
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

/// Starts the roomcast binary as `cmd` says (its stdout discarded, stderr
/// read), waits for the line that says where it listens on 127.0.0.1, and
/// keeps reading its log so the pipe never fills; the process and its port.
pub fn start_binary(mut cmd: std::process::Command) -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("roomcast starts");
    // unwrap: stderr is piped just above.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("roomcast logs its address")
            .expect("stderr is text");
        if let Some(rest) = line.split("roomcast listening on http://127.0.0.1:").nth(1) {
            break rest
                .split('/')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port in the log line");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

/// A counter or gauge of `/metrics` (`name` with its labels), 0 when absent.
pub async fn metric(server: &TestServer, name: &str) -> u64 {
    let body = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a whole number"))
}

/// Polls `check` until it holds, for at most `SOON`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SOON;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until the Socket.IO endpoint has no session left.
pub async fn registry_empties(server: &TestServer) {
    let deadline = Instant::now() + SOON;
    while !server.registry.is_empty() {
        assert!(
            Instant::now() < deadline,
            "session still registered: {}",
            server.registry.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
