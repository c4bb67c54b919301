//! Covers: the cluster topology end to end through its load balancer:
//! tests/topology/*.test.mjs, run with Node's test runner, start
//! `scripts/cluster` (HAProxy with deploy/haproxy.cfg, three roomcast
//! processes of this test's `CARGO_BIN_EXE_roomcast`, a private Redis and a
//! private PostgreSQL, all on free ports, in a run dir under target/tmp) and
//! drive 200+ socket.io-client 4.8 clients through the balancer's port:
//! - outage: PostgreSQL stopped, then Redis killed, under traffic: every
//!   node stays ready, new clients connect through the balancer on every
//!   transport and delivery within each node goes on; both back:
//!   cross-node delivery resumes and every audit row written meanwhile is
//!   in the table exactly once;
//! - balancer: clients spread over the three nodes, WebSocket, polling and
//!   polling upgraded to WebSocket; every client and HTTP API publish
//!   reaches every other member of its room exactly once; no "Session ID
//!   unknown"; one node SIGKILLed, its clients reconnect through the
//!   balancer and receive again (the time it took is printed: run with
//!   `cargo test --test topology -- --nocapture`);
//! - rolling_restart: streams mode with connection state recovery, 264
//!   receivers in 30 rooms and 64 publishes a second (client publishers
//!   and the HTTP API) throughout a rolling restart (every node SIGTERMed
//!   and started again in turn, then one SIGKILLed and started again):
//!   every accepted publish reaches every member of its room exactly once
//!   and in each publisher's order, every client ends connected and the
//!   clients of every stopped node recovered; then the same scenario
//!   against three Node.js socket.io 4.8 servers with connectionStateRecovery
//!   behind the same HAProxy config, with @socket.io/redis-adapter and
//!   then with @socket.io/redis-streams-adapter, whose losses are counted,
//!   not asserted. The results are printed and written to
//!   rolling_restart.json in the run dir;
//! - nonsticky: the topology without sticky sessions (`scripts/cluster`
//!   with ROOMCAST_CLUSTER_STICKY=0: HAProxy round robin per request, no
//!   cookie; the nodes forward each request to its session's node), with
//!   socket.io-client and python-socketio clients that keep no cookies:
//!   polling-only clients connect, publish events with acks and binary, in
//!   order, to rooms with members on all three nodes, exactly once; each
//!   session's requests were served by several nodes and forwarded (HAProxy's
//!   log, the nodes' /metrics); never "Session ID unknown"; the default
//!   transports upgrade to WebSocket through whichever node; a node
//!   SIGKILLed: its sessions are unknown at once, its clients reconnect
//!   within the heartbeat bound and receive again.
//!
//! The run dir is stopped with `scripts/cluster stop` afterwards whatever
//! happened (PostgreSQL runs detached from the test's process group), and
//! removed unless the test failed (its logs are there).
//! Prerequisites missing (HAProxy, redis-server, PostgreSQL, Node.js, the
//! packages of tests/cluster and python-socketio in tests/clients/.venv)
//! fail the test with how to install them;
//! scripts/test installs them.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::suite::{find_on_path, node, run_suite, test_files};

/// Longest the suite may run before it is killed (alone on two cores it
/// took ~3 min: ~50 s for balancer and outage, ~2 min for rolling_restart;
/// then ~40 s for nonsticky; more when other suites run beside it).
const SUITE_TIMEOUT: Duration = Duration::from_secs(840);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Stops the topology of `dir` on drop, even when the suite failed.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // The run dir, and those of test files that keep theirs in a
        // subdirectory.
        let subdirs = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir());
        for dir in std::iter::once(self.0.clone()).chain(subdirs) {
            let _ = Command::new(repo().join("scripts/cluster"))
                .arg("stop")
                .env("ROOMCAST_CLUSTER_DIR", &dir)
                .status();
        }
        // Logs and the database stay for a look after a failure.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn topology_suite() {
    for (program, hint) in [
        ("haproxy", "install HAProxy 2.6+ (Debian: apt-get install haproxy)"),
        ("redis-server", "install Redis (Debian: apt-get install redis-server)"),
    ] {
        assert!(
            find_on_path(program).is_some(),
            "{program} is not on PATH: {hint}; scripts/test does"
        );
    }
    // scripts/cluster also looks where Debian's package puts PostgreSQL.
    let debian_postgres = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|version| version.path().join("bin/initdb").is_file());
    assert!(
        find_on_path("initdb").is_some() || debian_postgres,
        "PostgreSQL's initdb is missing: install PostgreSQL (Debian: apt-get install postgresql); scripts/test does"
    );
    let packages = repo().join("tests/cluster/node_modules/socket.io-client/package.json");
    assert!(
        packages.is_file(),
        "tests/cluster/node_modules/socket.io-client is missing: run scripts/test, which runs `npm ci` in tests/cluster"
    );
    let python = repo().join("tests/clients/.venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing (python-socketio for nonsticky.test.mjs): run scripts/test, which makes it from tests/clients/requirements.txt",
        python.display()
    );
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("topology-{}", std::process::id()));
    let _stop = StopOnDrop(run_dir.clone());

    let dir = repo().join("tests").join("topology");
    let mut cmd = Command::new(node());
    // One topology at a time: each is three nodes, Redis, PostgreSQL and
    // HAProxy on two cores.
    cmd.arg("--test")
        .arg("--test-concurrency=1")
        .arg("--test-reporter=spec")
        .args(test_files(&dir))
        .env("TOPOLOGY_RUN_DIR", &run_dir);
    run_suite("topology suite (node --test tests/topology)", cmd, &dir, SUITE_TIMEOUT);
}
