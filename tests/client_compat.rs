//! Covers: client compatibility with real Socket.IO clients written by
//! others, against the real roomcast binary (no mocks):
//! - the socket.io-client 4.8 suite, tests/clients/js/*.test.mjs, run with
//!   Node's test runner;
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

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Longest a suite may run before it is killed (it normally takes seconds).
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("clients")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `cmd` in tests/clients, in its own process group (so a timeout can
/// end it together with the roomcast processes it started), and fails with
/// its output unless it exits successfully.
fn run_suite(name: &str, mut cmd: Command) {
    cmd.current_dir(clients_dir())
        .env("ROOMCAST_BIN", env!("CARGO_BIN_EXE_roomcast"))
        .env("NO_COLOR", "1")
        .env_remove("FORCE_COLOR")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    let drain = |mut stream: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));

    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the suite") {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            // The whole group: the runner and every roomcast it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    match status {
        None => panic!("{name} did not finish within {SUITE_TIMEOUT:?} and was killed\n{output}"),
        Some(status) if !status.success() => {
            panic!("{name} failed ({status}) after {:.1?}\n{output}", started.elapsed())
        }
        // Shown with `cargo test -- --nocapture`.
        Some(_) => println!("{name} passed in {:.1?}\n{output}", started.elapsed()),
    }
}

#[test]
fn socket_io_client_suite() {
    let dir = clients_dir();
    assert!(
        dir.join("node_modules").join("socket.io-client").is_dir(),
        "tests/clients/node_modules/socket.io-client is missing: run scripts/test, which runs `npm ci` in tests/clients"
    );
    let node = find_on_path("node")
        .unwrap_or_else(|| panic!("node is not on PATH: install Node.js 18+ (with npm) and run scripts/test"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("js"))
        .expect("tests/clients/js")
        .map(|entry| entry.expect("tests/clients/js entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests/clients/js/*.test.mjs");

    let mut cmd = Command::new(node);
    cmd.arg("--test").arg("--test-reporter=spec").args(&files);
    run_suite("socket.io-client suite (node --test tests/clients/js)", cmd);
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
    run_suite("python-socketio suite (unittest tests/clients/py)", cmd);
}
