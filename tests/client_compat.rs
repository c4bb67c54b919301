//! Covers: client compatibility with real Socket.IO clients written by
//! others, against the real roomcast binary (no mocks):
//! - the socket.io-client 4.8 suite, tests/clients/js/*.test.mjs, run with
//!   Node's test runner (the dashboard and recovery_browser tests among
//!   them drive Debian's headless Chromium with playwright-core);
//! - the python-socketio 5 suite, tests/clients/py/test_*.py, run with
//!   unittest from tests/clients/.venv.
//!
//! Each suite starts its own roomcast processes from ROOMCAST_BIN (this
//! test's `CARGO_BIN_EXE_roomcast`) with tests/clients/roomcast-test.toml.
//! This test asserts that a suite passes and prints its whole output when it
//! does not. The client libraries are installed by scripts/test (`npm ci` in
//! tests/clients, and the venv from tests/clients/requirements.txt); when
//! they are missing the test fails and says so.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::suite::{node, run_suite, test_files};

/// Longest a suite may run before it is killed (it normally takes seconds).
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("clients")
}

#[test]
fn socket_io_client_suite() {
    let dir = clients_dir();
    assert!(
        dir.join("node_modules").join("socket.io-client").is_dir(),
        "tests/clients/node_modules/socket.io-client is missing: run scripts/test, which runs `npm ci` in tests/clients"
    );
    assert!(
        dir.join("node_modules").join("playwright-core").is_dir(),
        "tests/clients/node_modules/playwright-core is missing: run scripts/test, which runs `npm ci` in tests/clients"
    );
    let mut cmd = Command::new(node());
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        .args(test_files(&dir.join("js")));
    run_suite(
        "socket.io-client suite (node --test tests/clients/js)",
        cmd,
        &dir,
        SUITE_TIMEOUT,
    );
}

#[test]
fn python_socketio_suite() {
    let dir = clients_dir();
    let python = dir.join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test, which creates it from tests/clients/requirements.txt",
        python.display()
    );
    let import = Command::new(&python)
        .args(["-c", "import socketio, engineio, requests, websocket"])
        .output()
        .expect("running the venv's python");
    assert!(
        import.status.success(),
        "python-socketio[client] is not installed in tests/clients/.venv: run scripts/test\n{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let mut cmd = Command::new(python);
    cmd.args(["-m", "unittest", "discover", "-s", "py", "-t", "py", "-v"]);
    run_suite(
        "python-socketio suite (unittest tests/clients/py)",
        cmd,
        &dir,
        SUITE_TIMEOUT,
    );
}
