//! Covers the audit log's durability and the shutdown bound, on the real
//! binary (a child process with a config file) where it matters:
//! - SIGTERM on a node with 1,000 sessions (WebSocket, polling with a GET
//!   pending, polling with none) whose audit database is a black hole (a
//!   port that accepts and never answers): the process exits 0 within the
//!   documented bound (`server.drain_window_ms + audit.shutdown_flush_ms`),
//!   every pending GET is answered with the close packet before that, and
//!   the 1,000 "server shutting down" rows are in the spill file;
//! - the next run, with the database back, is killed (SIGKILL) while it
//!   replays that file; a restart replays it again, and the table holds
//!   each row exactly once (1,000 rows, 1,000 ids), with no spill file left;
//! - a torn last line (a crash or a full disk in the middle of an append)
//!   is set aside at start to a `.torn-*` file, counted
//!   (`AuditStats::spill_torn_lines`), and the next row starts a line of its
//!   own;
//! - a transient read error during a replay (a directory where the replay
//!   file should be: read(2) fails with EISDIR) is retried: the file is
//!   not set aside, and once it is readable again every row reaches the
//!   database once;
//! - lines that do not parse are set aside (`.unparsable-*`) and counted,
//!   the rows around them replayed;
//! - one cap (`audit.spill_max_bytes`) over every spill file together: the
//!   append file, the replay file and set-aside files;
//! - a spill file is one process's: a second opener is refused (a lock);
//! - `audit.spill_fsync`: every policy keeps what it appended (the figures
//!   of its cost come from `spill_fsync_cost`, ignored by default).
#![cfg(unix)]

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use common::audit::{count, Backend, TestDb};
use common::SIO;

/// Sessions of the shutdown test, by kind.
const WEBSOCKETS: usize = 400;
const POLLING_PENDING: usize = 400;
const POLLING_IDLE: usize = 200;
const SESSIONS: usize = WEBSOCKETS + POLLING_PENDING + POLLING_IDLE;

/// The drain window of the shutdown test (shorter than the default, to
/// keep the test short; the bound scales with it).
const DRAIN_WINDOW_MS: u64 = 4000;

/// A roomcast process started with `--config <profile>`; its port, and a
/// thread keeping its stderr drained.
fn start_roomcast(profile: &Path) -> (Child, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.arg("--config").arg(profile);
    common::start_binary(cmd)
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill {name}");
}

/// Waits for the process to exit; its status and when it exited.
async fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        // unwrap: try_wait on our own child.
        if let Some(status) = child.try_wait().unwrap() {
            return (status, Instant::now());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("roomcast still runs after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The profile of the shutdown test's node: `database` for the audit log
/// (its statements time out after `timeout_ms`), `extra` in `[audit]`.
fn profile(dir: &Path, database: &str, timeout_ms: u64, extra: &str) -> PathBuf {
    let spill = dir.join("data").join("spill.jsonl");
    let text = format!(
        r#"
[server]
host = "127.0.0.1"
port = 0
workers = 2
drain_window_ms = {DRAIN_WINDOW_MS}
drain_batches = 4

[database]
url = "{database}"
timeout_ms = {timeout_ms}

[audit]
spill_file = "{spill}"
{extra}
"#,
        spill = spill.display()
    );
    let path = dir.join(format!("profile-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, text).expect("profile written");
    path
}

/// Every row of every spill file in `dir` (`spill.jsonl*`): (reason, id).
fn spilled_rows(dir: &Path) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir.join("data")).expect("data dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if !name.starts_with("spill.jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("spill file readable");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
            rows.push((
                v["reason"].as_str().unwrap_or_default().to_owned(),
                v["id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    rows
}

/// The names of the files in `dir/data`.
fn data_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("data"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Opens a polling session; its sid.
async fn polling_handshake(http: &reqwest::Client, base: &str) -> String {
    let body = http
        .get(format!("{base}{SIO}?EIO=4&transport=polling"))
        .send()
        .await
        .expect("handshake sent")
        .text()
        .await
        .expect("handshake answered");
    let open = common::eio::parse_open(&body);
    open["sid"].as_str().expect("a sid").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_bound_and_spills_then_replays_exactly_once() {
    let dir = common::scratch_dir("durability");
    // A black hole: connections are accepted (by the kernel, into the
    // backlog) and never answered, the worst a dead database does.
    let hole = TcpListener::bind("127.0.0.1:0").expect("a port");
    let hole_port = hole.local_addr().expect("bound").port();
    let dead = format!("postgres://postgres@127.0.0.1:{hole_port}/roomcast");
    // A connection attempt that outlasts the whole shutdown: the flush
    // has to cut it short.
    let run1 = profile(&dir, &dead, 60_000, "");
    // The documented bound: the drain window plus the flush's.
    let settings = roomcast::config::Settings::load(Some(&run1)).expect("the profile loads");
    let bound = Duration::from_millis(settings.server.drain_window_ms + settings.audit.shutdown_flush_ms);
    let (mut child, port) = start_roomcast(&run1);
    let base = format!("http://127.0.0.1:{port}");

    // 1,000 sessions.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for chunk in 0..WEBSOCKETS / 50 {
        let opened = futures_util::future::join_all((0..50).map(|_| async {
            let url = format!("ws://127.0.0.1:{port}{SIO}?EIO=4&transport=websocket");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket opens");
            let open = ws.next().await.expect("open packet").expect("a frame");
            assert!(open.to_text().expect("text").starts_with("0{"));
            ws
        }))
        .await;
        for mut ws in opened {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(_)) = ws.next().await {}
                let _ = closed_tx.send(());
            });
        }
        let _ = chunk;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("client");
    let mut pending = Vec::new();
    for _ in 0..POLLING_PENDING / 50 {
        let sids = futures_util::future::join_all((0..50).map(|_| polling_handshake(&http, &base))).await;
        for sid in sids {
            let (http, url) = (http.clone(), format!("{base}{SIO}?EIO=4&transport=polling&sid={sid}"));
            pending.push(tokio::spawn(async move {
                let resp = http.get(url).send().await.expect("GET answered");
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default(), Instant::now())
            }));
        }
    }
    for _ in 0..POLLING_IDLE / 50 {
        futures_util::future::join_all((0..50).map(|_| polling_handshake(&http, &base))).await;
    }
    // The GETs reach the server and wait there.
    tokio::time::sleep(Duration::from_millis(500)).await;

    signal(&child, "-TERM");
    let signalled = Instant::now();
    let (status, exited) = wait_exit(&mut child, Duration::from_secs(60)).await;
    let took = exited - signalled;
    eprintln!("shutdown with {SESSIONS} sessions and a dead database took {took:?} (bound {bound:?})");
    assert!(status.success(), "exit status {status}");
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    // Every pending GET was answered with the close packet, before the exit.
    for get in pending {
        let (status, body, at) = get.await.expect("GET task");
        assert_eq!(
            (status, body.as_str()),
            (200, "1"),
            "a pending GET is answered at close"
        );
        assert!(at <= exited, "answered before the exit");
    }
    let mut ws_closed = 0;
    while closed_rx.try_recv().is_ok() {
        ws_closed += 1;
    }
    assert_eq!(ws_closed, WEBSOCKETS, "every WebSocket ended");
    // The rows the shutdown made, all in the spill file.
    let rows = spilled_rows(&dir);
    let shutting: HashSet<&str> = rows
        .iter()
        .filter(|(reason, _)| reason == "server shutting down")
        .map(|(_, id)| id.as_str())
        .collect();
    assert_eq!(shutting.len(), SESSIONS, "files: {:?}", data_files(&dir));
    drop(hole);

    // The database is back: a run replays the file, one row per insert (so
    // that the replay takes a while), and is killed in the middle of it.
    let db = TestDb::new(Backend::Postgres).await;
    let run2 = profile(&dir, &db.url, 5000, "batch_size = 1");
    let (mut child, _) = start_roomcast(&run2);
    let at_kill = loop {
        let n = table_rows(&db.url).await;
        if n > 0 {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    signal(&child, "-KILL");
    wait_exit(&mut child, Duration::from_secs(10)).await;
    let after_kill = table_rows(&db.url).await;
    eprintln!("killed with {at_kill}..{after_kill} of {SESSIONS} rows replayed");
    assert!(after_kill < SESSIONS as i64, "the kill came during the replay");

    // A restart replays the rest; every row is there once.
    let run3 = profile(&dir, &db.url, 5000, "");
    let (mut child, _) = start_roomcast(&run3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while table_rows(&db.url).await < SESSIONS as i64 {
        assert!(Instant::now() < deadline, "the restart replays the spill file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db.url).await, (SESSIONS as i64, SESSIONS as i64));
    signal(&child, "-TERM");
    let (status, _) = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert!(status.success());
    let left: Vec<String> = data_files(&dir)
        .into_iter()
        .filter(|n| n.starts_with("spill.jsonl") && n != "spill.jsonl.lock")
        .collect();
    assert!(left.is_empty(), "spill files left: {left:?}");
    db.drop_db().await;
}

/// Rows in the table (0 while it does not exist).
async fn table_rows(url: &str) -> i64 {
    use sqlx::Connection as _;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return 0;
    };
    sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .map(|r| r.0)
        .unwrap_or(0)
}

// ------------------------------------------------ the spill file on its own

use std::sync::Arc;

use roomcast::audit::spill::Spill;
use roomcast::audit::{AuditEvent, AuditKind, AuditReason, AuditRow, AuditStats};
use roomcast::config::SpillFsync;

fn row(n: usize) -> AuditRow {
    let event = AuditEvent::new(
        AuditKind::ParseError,
        AuditReason::engineio(roomcast::engineio::ErrorCode::BadRequest),
        format!("row {n}"),
    );
    AuditRow::from_event(event, "node")
}

fn rows(n: usize) -> Vec<AuditRow> {
    (0..n).map(row).collect()
}

/// A spill file in a scratch directory; its path.
fn spill_path(tag: &str) -> PathBuf {
    common::scratch_dir(tag).join("data").join("spill.jsonl")
}

/// Files next to `path` whose name has `infix`.
fn siblings(path: &Path, infix: &str) -> Vec<PathBuf> {
    let name = path.file_name().expect("a name").to_string_lossy().to_string();
    let mut found: Vec<PathBuf> = std::fs::read_dir(path.parent().expect("a dir"))
        .expect("dir readable")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&name) && n.contains(infix)
        })
        .collect();
    found.sort();
    found
}

fn appended(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("spill file");
    f.write_all(bytes).expect("appended");
}

/// Every row of the replay file, read as the writer does.
fn replay_all(spill: &Spill, stats: &AuditStats) -> Vec<AuditRow> {
    assert!(spill.begin_replay().expect("replay begins"));
    let mut all = Vec::new();
    loop {
        let chunk = spill.read_chunk(7, stats).expect("readable");
        all.extend(chunk.rows);
        spill.commit(chunk.next);
        if chunk.eof {
            spill.finish_replay().expect("removed");
            return all;
        }
    }
}

#[test]
fn a_torn_last_line_is_set_aside_at_start_and_never_glued_to_the_next_row() {
    let path = spill_path("torn");
    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens");
    let first = rows(10);
    assert!(spill.append(&first, &stats));
    drop(spill);
    // A crash in the middle of the next append: half a row, no newline.
    let torn = br#"{"id":"0190aaaa-torn","at":"2026-01-0"#;
    appended(&path, torn);

    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens again");
    assert_eq!(AuditStats::get(&stats.spill_torn_lines), 1);
    let aside = siblings(&path, ".torn-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).expect("aside readable"), torn);
    assert!(std::fs::read(&path).expect("spill readable").ends_with(b"\n"));
    // The set-aside bytes count against the cap.
    assert_eq!(spill.aside_bytes(), torn.len() as u64);

    // The next row starts a line of its own: every row comes back.
    let last = row(10);
    assert!(spill.append(std::slice::from_ref(&last), &stats));
    let back = replay_all(&spill, &stats);
    let ids: Vec<&str> = back.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<&str> = first.iter().chain([&last]).map(|r| r.id.as_str()).collect();
    assert_eq!(ids, want);
    assert_eq!(AuditStats::get(&stats.spill_unparsable_lines), 0);

    // The same for a replay file a crash left behind.
    assert!(spill.append(&rows(3), &stats));
    assert!(spill.begin_replay().expect("replay begins"));
    drop(spill);
    appended(&path.with_file_name("spill.jsonl.replay"), b"{\"id\":");
    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens again");
    assert_eq!(AuditStats::get(&stats.spill_torn_lines), 1);
    assert_eq!(replay_all(&spill, &stats).len(), 3);
}

#[test]
fn lines_that_do_not_parse_are_set_aside_once_and_the_rows_around_them_replayed() {
    let path = spill_path("unparsable");
    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens");
    assert!(spill.append(&rows(2), &stats));
    appended(&path, b"not json at all\n\x00\xff\xfe binary\n");
    assert!(spill.append(&rows(2), &stats));
    assert!(spill.begin_replay().expect("replay begins"));
    // A chunk read again (its insert failed) sets nothing aside twice.
    let once = spill.read_chunk(100, &stats).expect("readable");
    let again = spill.read_chunk(100, &stats).expect("readable");
    assert_eq!((once.rows.len(), again.rows.len()), (4, 4));
    assert!(once.eof);
    assert_eq!(AuditStats::get(&stats.spill_unparsable_lines), 2);
    let aside = siblings(&path, ".unparsable-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).expect("aside readable"),
        b"not json at all\n\x00\xff\xfe binary\n"
    );
}

#[test]
fn one_cap_bounds_every_spill_file_together() {
    let path = spill_path("cap");
    let one = serde_json::to_vec(&row(0)).expect("serialises").len() as u64 + 1;
    // Room for five rows (and the newline an append may need first).
    let cap = 5 * one + 1;
    let stats = AuditStats::default();
    let spill = Spill::open(&path, cap, SpillFsync::Never, &stats).expect("opens");
    for n in 0..5 {
        assert!(spill.append(&[row(n)], &stats), "row {n} fits");
    }
    assert!(!spill.append(&[row(5)], &stats), "the sixth does not");
    // Being replayed, the rows still take their room.
    assert!(spill.begin_replay().expect("replay begins"));
    assert!(!spill.append(&[row(6)], &stats), "the replay file counts");
    assert_eq!(spill.used_bytes(), 5 * one);
    let chunk = spill.read_chunk(100, &stats).expect("readable");
    spill.commit(chunk.next);
    spill.finish_replay().expect("removed");
    assert!(spill.append(&[row(7)], &stats), "room again once replayed");
    assert_eq!(AuditStats::get(&stats.dropped), 2);

    // Files set aside count too, until an operator removes them.
    drop(spill);
    let aside = path.with_file_name("spill.jsonl.replay.unparsable-test");
    std::fs::write(&aside, vec![b'x'; 4 * one as usize]).expect("written");
    let spill = Spill::open(&path, cap, SpillFsync::Never, &stats).expect("opens again");
    assert_eq!(spill.used_bytes(), 5 * one);
    assert!(!spill.append(&[row(8)], &stats), "set-aside bytes count");
    std::fs::remove_file(&aside).expect("removed");
    assert!(spill.append(&[row(9)], &stats), "measured again when full");
}

#[test]
fn a_spill_file_is_one_process_s() {
    let path = spill_path("lock");
    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens");
    let again = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats);
    let err = again.err().expect("a second one is refused");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    drop(spill);
    Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("free again");
}

#[test]
fn every_fsync_policy_keeps_what_it_appended() {
    for policy in [SpillFsync::Always, SpillFsync::Batch, SpillFsync::Never] {
        let path = spill_path("fsync");
        let stats = AuditStats::default();
        let spill = Spill::open(&path, 1 << 20, policy, &stats).expect("opens");
        assert!(spill.append(&rows(3), &stats));
        spill.sync();
        assert!(spill.append(&rows(2), &stats));
        assert_eq!(replay_all(&spill, &stats).len(), 5, "{policy:?}");
    }
}

// --------------------------------------------- the writer on a read error

#[actix_web::test]
async fn a_read_error_during_the_replay_is_retried_not_set_aside() {
    use actix::Actor as _;
    use roomcast::audit::writer::{AuditWriter, Cutoff, WriterConfig};

    let path = spill_path("read-error");
    let stats = AuditStats::default();
    let spill = Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens");
    assert!(spill.append(&rows(100), &stats));
    assert!(spill.begin_replay().expect("replay begins"));
    drop(spill);
    // A directory where the replay file should be: open(2) works, read(2)
    // fails (EISDIR), as a failing disk or a file system gone read-errors
    // would.
    let replay = path.with_file_name("spill.jsonl.replay");
    let held = path.with_file_name("held");
    std::fs::rename(&replay, &held).expect("moved away");
    std::fs::create_dir(&replay).expect("a directory in its place");

    let db = path.with_file_name("audit.db");
    let url = format!("sqlite://{}", db.display());
    let stats = Arc::new(AuditStats::default());
    let spill = Arc::new(Spill::open(&path, 1 << 20, SpillFsync::Batch, &stats).expect("opens"));
    let config = WriterConfig {
        queue: 100,
        batch_size: 10,
        flush_interval: Duration::from_millis(20),
        retry_interval: Duration::from_millis(50),
        retention: None,
        prune_interval: Duration::from_secs(3600),
        cutoff: Cutoff::default(),
    };
    let _writer = AuditWriter::new(common::audit::store(&url), spill.clone(), stats.clone(), config).start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while AuditStats::get(&stats.spill_read_errors) < 3 {
        assert!(Instant::now() < deadline, "read errors are retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Tried again and again, and kept where it is.
    assert!(replay.is_dir());
    assert!(siblings(&path, "unreadable").is_empty() && siblings(&path, "unparsable").is_empty());
    assert_eq!(count(&url).await.0, 0);
    assert!(!stats.database_down.load(std::sync::atomic::Ordering::Relaxed));

    // Readable again: every row reaches the database, once.
    std::fs::remove_dir(&replay).expect("directory removed");
    std::fs::rename(&held, &replay).expect("moved back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&url).await.0 < 100 {
        assert!(Instant::now() < deadline, "replayed once readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&url).await, (100, 100));
    assert!(!replay.exists(), "the replay file is removed");
    assert!(!spill.pending());
}
