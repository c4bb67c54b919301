//! Running an external test suite (Node's test runner, Python's unittest)
//! as part of `cargo test`: in its own process group so a timeout ends it
//! with every process it started, its output shown when it fails.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `PATH` lookup.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `node`, or a failure saying how to install it.
pub fn node() -> PathBuf {
    find_on_path("node")
        .unwrap_or_else(|| panic!("node is not on PATH: install Node.js 18+ (with npm) and run scripts/test"))
}

/// The `*.test.mjs` files of `dir`, sorted; fails if there are none.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs in {}", dir.display());
    files
}

/// Runs `cmd` in `dir` with ROOMCAST_BIN set, kills its whole process group
/// after `timeout` (continuing it first, so a paused process does not
/// outlive it), and fails with its output unless it exits successfully.
pub fn run_suite(name: &str, mut cmd: Command, dir: &Path, timeout: Duration) {
    cmd.current_dir(dir)
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
        if started.elapsed() > timeout {
            for signal in ["-CONT", "-KILL"] {
                let _ = Command::new("kill")
                    .args([signal, "--", &format!("-{}", child.id())])
                    .status();
            }
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
        None => panic!("{name} did not finish within {timeout:?} and was killed\n{output}"),
        Some(status) if !status.success() => {
            panic!("{name} failed ({status}) after {:.1?}\n{output}", started.elapsed())
        }
        // Shown with `cargo test -- --nocapture`.
        Some(_) => println!("{name} passed in {:.1?}\n{output}", started.elapsed()),
    }
}
