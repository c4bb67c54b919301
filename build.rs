//! - Rebuilds when a migration is added: `sqlx::migrate!` embeds them.
//! - Embeds the socket.io-client browser bundle, which roomcast serves at
//!   `{server.path}socket.io.js` as Node's socket.io does (and the dashboard's
//!   live view loads). The version is the one `web/package-lock.json` locks,
//!   taken from the first of:
//!   1. `web/node_modules` (`npm ci --prefix web`; the Dockerfile's npm stage
//!      and scripts/test install it there), when it holds that version;
//!   2. an install of `web/package.json` and its lockfile that this script
//!      made earlier under OUT_DIR (kept until the lockfile changes);
//!   3. `npm ci --ignore-scripts` of them, run now under OUT_DIR, unless
//!      `ROOMCAST_NO_NPM=1` (set it to build without ever running npm).
//!
//!   Where none works (no npm, offline, ROOMCAST_NO_NPM) the build still
//!   succeeds with a `cargo:warning` saying what is missing and how to get
//!   it; that route then answers 404 with the same hint. npm is not run
//!   again until something in `web/` changes (`npm ci --prefix web` after
//!   such a build embeds the bundle at the next build) or ROOMCAST_NO_NPM
//!   does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGE: &str = "socket.io-client";
/// Set (to anything but `0` or nothing) to build without running npm.
const NO_NPM: &str = "ROOMCAST_NO_NPM";
/// Longest `npm ci` may take before it is stopped (a hung registry).
const NPM_TIMEOUT: Duration = Duration::from_secs(300);
/// Written next to this script's own install once it succeeded: the
/// lockfile it installed.
const STAMP: &str = "roomcast-installed-lock.json";

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    // The directory, not its files: package.json and the lockfile, and
    // web/node_modules appearing, changing or going away.
    println!("cargo:rerun-if-changed=web");
    println!("cargo:rerun-if-env-changed={NO_NPM}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (bundle, version) = client_bundle(&out).unwrap_or_else(|why| {
        for line in [
            format!("no {PACKAGE} browser bundle: {why}."),
            "roomcast builds without it: /socket.io/socket.io.js answers 404 and the dashboard has no live view \
             (its figures still update)."
                .to_owned(),
            "To embed it: install Node.js 18+ with npm, run `npm ci --prefix web` (it needs to reach the npm \
             registry), then build again."
                .to_owned(),
        ] {
            println!("cargo:warning={line}");
        }
        (Vec::new(), String::new())
    });
    fs::write(out.join("socket.io.min.js"), bundle).expect("OUT_DIR is writable");
    fs::write(out.join("socket.io-client.version"), version).expect("OUT_DIR is writable");
}

/// The bundle and its version, or why there is none.
fn client_bundle(out: &Path) -> Result<(Vec<u8>, String), String> {
    let lock = fs::read_to_string("web/package-lock.json").map_err(|e| format!("web/package-lock.json: {e}"))?;
    let locked = locked_version(&lock).ok_or_else(|| format!("web/package-lock.json locks no {PACKAGE}"))?;

    let web = Path::new("web/node_modules").join(PACKAGE);
    match installed(&web) {
        Some((bundle, version)) if version == locked => return Ok((bundle, version)),
        Some((_, version)) => println!(
            "cargo:warning=web/node_modules has {PACKAGE} {version} but web/package-lock.json locks {locked}: \
             not used (`npm ci --prefix web` installs the locked one)"
        ),
        None => {}
    }

    let dir = out.join("npm");
    let ours = dir.join("node_modules").join(PACKAGE);
    if fs::read_to_string(dir.join(STAMP)).is_ok_and(|stamp| stamp == lock) {
        if let Some(found) = installed(&ours).filter(|(_, version)| *version == locked) {
            return Ok(found);
        }
    }

    if std::env::var(NO_NPM).is_ok_and(|v| !v.is_empty() && v != "0") {
        return Err(format!(
            "web/node_modules/{PACKAGE} is missing and {NO_NPM} is set, so npm was not run"
        ));
    }
    npm_ci(&dir, &lock)?;
    match installed(&ours) {
        Some((bundle, version)) if version == locked => {
            fs::write(dir.join(STAMP), &lock).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok((bundle, version))
        }
        Some((_, version)) => Err(format!("npm ci installed {PACKAGE} {version}, not the locked {locked}")),
        None => Err(format!(
            "npm ci succeeded but installed no {PACKAGE}/dist/socket.io.min.js"
        )),
    }
}

/// `npm ci` of web/package.json and `lock` in `dir`, without the packages'
/// install scripts.
fn npm_ci(dir: &Path, lock: &str) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    fs::create_dir_all(dir).map_err(io)?;
    let _ = fs::remove_file(dir.join(STAMP));
    fs::copy("web/package.json", dir.join("package.json")).map_err(|e| format!("web/package.json: {e}"))?;
    fs::write(dir.join("package-lock.json"), lock).map_err(io)?;
    let log_path = dir.join("npm-ci.log");
    let log = fs::File::create(&log_path).map_err(io)?;
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let mut child = Command::new(npm)
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            // Offline, npm's defaults retry for over a minute.
            "--fetch-retries=1",
            "--fetch-retry-mintimeout=2000",
            "--fetch-retry-maxtimeout=10000",
            "--loglevel=error",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io)?)
        .stderr(log)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "npm is not installed (not on PATH)".to_owned(),
            _ => format!("npm could not be started: {e}"),
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| format!("waiting for npm: {e}"))? {
            Some(status) => break status,
            None if started.elapsed() > NPM_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("npm ci did not finish within {} s", NPM_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if status.success() {
        return Ok(());
    }
    // npm's own summary: its error code and first message (npm 10 writes
    // "npm error …", older ones "npm ERR! …").
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = output
        .lines()
        .map(|l| l.trim_start_matches("npm error").trim_start_matches("npm ERR!").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let code = lines.iter().find_map(|l| l.strip_prefix("code "));
    let message = lines
        .iter()
        .find(|l| !["code ", "syscall ", "errno ", "at "].iter().any(|p| l.starts_with(p)));
    let summary = [code, message.copied()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    Err(format!(
        "npm ci failed ({status}): {summary} (its output: {})",
        log_path.display()
    ))
}

/// The minified bundle and the version of the package installed at `dir`.
fn installed(dir: &Path) -> Option<(Vec<u8>, String)> {
    let bundle = fs::read(dir.join("dist").join("socket.io.min.js")).ok()?;
    let manifest = fs::read_to_string(dir.join("package.json")).ok()?;
    let version = string_after(&manifest, "\"version\"")?;
    (!bundle.is_empty()).then_some((bundle, version))
}

/// The version of `node_modules/socket.io-client` in a package-lock.json
/// (lockfileVersion 2 or 3).
fn locked_version(lock: &str) -> Option<String> {
    let key = format!("\"node_modules/{PACKAGE}\"");
    let mut rest = lock;
    while let Some(at) = rest.find(&key) {
        rest = &rest[at + key.len()..];
        if rest.trim_start().starts_with(':') {
            return string_after(rest, "\"version\"");
        }
    }
    None
}

/// The JSON string value of the first `"key"` in `text`.
fn string_after(text: &str, key: &str) -> Option<String> {
    let (_, rest) = text.split_once(key)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest.split('"').next()?.to_owned())
}
