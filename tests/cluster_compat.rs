//! Covers: cluster compatibility of roomcast's Redis adapter with the
//! official Socket.IO cluster software, end to end, with real processes (no
//! mocks): tests/cluster/*.test.mjs, run with Node's test runner. Each test
//! file starts a private `redis-server` on a free port and roomcast
//! processes from ROOMCAST_BIN (this test's `CARGO_BIN_EXE_roomcast`) with
//! tests/cluster/roomcast-cluster.toml:
//! - three_nodes: three roomcast nodes, socket.io-client 4.8 clients over
//!   WebSocket and long-polling; room publishes delivered exactly once on
//!   every node, no leak to other rooms, HTTP API publishes, binary data;
//! - emitter: `@socket.io/redis-emitter` 5.x emits to a room, several rooms,
//!   everyone, with `except`, binary included;
//! - fidelity: payloads arrive as sent (every object's keys in their order,
//!   unicode, numbers, binary values among keys) between a Node.js
//!   socket.io 4.8 server, two roomcast nodes and the emitter, in every
//!   adapter mode, from clients and the HTTP API;
//! - mixed: a Node.js socket.io 4.8 server with `@socket.io/redis-adapter`
//!   8.x and two roomcast nodes exchange publishes both ways, with the
//!   classic adapter and with the sharded one (dynamic and static);
//! - redis_outage: Redis SIGKILLed, restarted on the same port, paused with
//!   SIGSTOP and continued, under connected clients, in classic and in
//!   streams mode;
//! - requests: the adapter's requests between a Node.js server and roomcast
//!   (fetchSockets, allRooms, emitWithAck, serverSideEmitWithAck,
//!   socketsJoin, disconnectSockets; roomcast's cluster-wide presence), in
//!   the classic and both sharded modes;
//! - streams: a Node.js socket.io 4.8 server with
//!   `@socket.io/redis-streams-adapter` 0.3.1 and two roomcast nodes in
//!   streams mode: publishes both ways (rooms, except, the whole namespace,
//!   binary, order per publisher, one interleaving seen by every receiver),
//!   fetchSockets and presence, serverCount, emitWithAck and
//!   serverSideEmitWithAck, join, leave and disconnect both ways;
//! - recovery: connection state recovery across a streams cluster of
//!   roomcast nodes and Node.js servers with connectionStateRecovery: a
//!   client whose roomcast node is SIGKILLed or drained recovers on another
//!   roomcast node, a Node.js node's client recovers on roomcast, a killed
//!   roomcast node's client recovers on Node.js (same id, rooms, every
//!   missed event once and in order, binary included);
//! - socket_ids: three roomcast nodes and a Node.js server, in every mode:
//!   socket ids have Socket.IO's form; a client cannot name a socket id as
//!   a room (invalid_room, nothing delivered); roomcast's HTTP API, the Node
//!   server's `io.to(id)` and the emitter's `to(id)` reach exactly that
//!   socket on any node;
//! - admin_ui: the official Socket.IO Admin UI, as roomcast embeds it, in
//!   Debian's headless Chromium (playwright-core) against three roomcast
//!   nodes: login, the nodes and their socket counts, a socket's rooms,
//!   join, leave and disconnect of a socket on another node, a read-only
//!   node refusing commands; and a Node.js server running `instrument()`
//!   beside roomcast nodes, each node's stats and commands reaching the
//!   other kind.
//!
//! This test asserts that the suite passes and prints its whole output
//! (with the processes' logs of a failing test) when it does not. The Node
//! packages are installed by scripts/test (`npm ci` in tests/cluster); when
//! they, Node.js or redis-server are missing the test fails and says so.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::suite::{find_on_path, node, run_suite, test_files};

/// Longest the suite may run before it is killed (it normally takes ~15 s).
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);

/// The npm packages the suite imports (tests/cluster/package.json).
const PACKAGES: [&str; 8] = [
    "socket.io-client",
    "playwright-core",
    "@socket.io/admin-ui",
    "socket.io",
    "@socket.io/redis-adapter",
    "@socket.io/redis-emitter",
    "@socket.io/redis-streams-adapter",
    "redis",
];

fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("cluster")
}

#[test]
fn redis_cluster_suite() {
    let dir = cluster_dir();
    for package in PACKAGES {
        assert!(
            dir.join("node_modules").join(package).join("package.json").is_file(),
            "tests/cluster/node_modules/{package} is missing: run scripts/test, which runs `npm ci` in tests/cluster"
        );
    }
    assert!(
        find_on_path("redis-server").is_some(),
        "redis-server is not on PATH: the cluster tests start private Redis instances; install it (Debian: apt-get install redis-server)"
    );
    let mut cmd = Command::new(node());
    cmd.arg("--test").arg("--test-reporter=spec").args(test_files(&dir));
    run_suite("cluster suite (node --test tests/cluster)", cmd, &dir, SUITE_TIMEOUT);
}
