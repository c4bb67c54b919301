//! build.rs and the socket.io-client bundle, as a newcomer's first
//! `cargo run --release` on a fresh clone meets it. The build script is
//! compiled on its own (it uses std only) and run as cargo runs it: in a
//! directory holding copies of web/package.json and web/package-lock.json,
//! with OUT_DIR set. Covers:
//! - without npm on PATH it succeeds, embeds an empty bundle, and its
//!   cargo:warning lines say what is missing and how to get it; with
//!   ROOMCAST_NO_NPM=1 likewise, without running npm where there is one;
//! - with npm it installs the lockfile's socket.io-client under OUT_DIR and
//!   embeds its browser bundle and version; run again without npm on PATH,
//!   it embeds the same from that install (npm is not run on every build);
//! - a web/node_modules with the locked version (`npm ci --prefix web`) is
//!   embedded without npm; one with another version is not, and the warning
//!   says so;
//! - it asks cargo to run it again when web/ or ROOMCAST_NO_NPM changes;
//! - the Admin UI's files (`@socket.io/admin-ui`'s ui/dist and `@mdi/font`)
//!   come from the same install: listed for embedding with index.html
//!   rewritten to load nothing from another site; without them a warning
//!   says so and the listing is empty with the reason.
//!
//! npm (Node.js 18+) must be installed and reach its registry (scripts/test
//! needs both anyway); without it the test fails and says so.
#![cfg(unix)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A fresh directory under cargo's scratch space for this test.
fn scratch(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("client-bundle-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// build.rs, compiled once.
fn build_script() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = scratch("bin");
        let bin = dir.join("build-script");
        let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .args(["--edition", "2021", "--crate-name", "build_script_build"])
            .arg(Path::new(REPO).join("build.rs"))
            .arg("-o")
            .arg(&bin)
            .output()
            .expect("rustc runs (install the Rust toolchain)");
        assert!(
            out.status.success(),
            "build.rs does not compile on its own:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// A package root as cargo gives the build script: web/package.json and the
/// lockfile (copies), and its OUT_DIR.
struct Root {
    dir: PathBuf,
    out: PathBuf,
}

impl Root {
    fn new(tag: &str) -> Root {
        let dir = scratch(tag);
        fs::create_dir_all(dir.join("web")).unwrap();
        for file in ["package.json", "package-lock.json"] {
            fs::copy(Path::new(REPO).join("web").join(file), dir.join("web").join(file)).unwrap();
        }
        let out = dir.join("out");
        fs::create_dir_all(&out).unwrap();
        Root { dir, out }
    }

    /// Runs the build script with PATH = `path` (None: this process's) and
    /// `env`; its stdout (the cargo: lines). It must succeed whatever npm does.
    fn build(&self, path: Option<&Path>, env: &[(&str, &str)]) -> String {
        let mut cmd = Command::new(build_script());
        cmd.current_dir(&self.dir)
            .env("OUT_DIR", &self.out)
            .env_remove("ROOMCAST_NO_NPM")
            .envs(env.iter().copied());
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let out = cmd.output().expect("the build script runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the build script failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The Admin UI's listing the build wrote (admin_ui_files.rs).
    fn admin_ui(&self) -> String {
        fs::read_to_string(self.out.join("admin_ui_files.rs")).expect("the listing is always written")
    }

    /// What the build embeds: (bundle, version).
    fn embedded(&self) -> (Vec<u8>, String) {
        (
            fs::read(self.out.join("socket.io.min.js")).expect("the bundle file is always written"),
            fs::read_to_string(self.out.join("socket.io-client.version")).expect("the version file is always written"),
        )
    }
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// A directory with nothing in it, as PATH: no npm.
fn no_npm() -> PathBuf {
    scratch("empty-path")
}

/// socket.io-client's version in web/package-lock.json.
fn locked_version() -> String {
    let lock: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(Path::new(REPO).join("web/package-lock.json")).unwrap()).unwrap();
    lock["packages"]["node_modules/socket.io-client"]["version"]
        .as_str()
        .expect("web/package-lock.json locks socket.io-client")
        .to_owned()
}

fn warnings(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("cargo:warning="))
        .collect()
}

/// The warning of a build without the bundle: what is missing, what it
/// means, how to get it.
fn assert_explains_missing_bundle(stdout: &str, why: &str) {
    let warnings = warnings(stdout);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("no socket.io-client browser bundle: ") && w.contains(why)),
        "{stdout}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("/socket.io/socket.io.js answers 404")),
        "{stdout}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("install Node.js 18+ with npm, run `npm ci --prefix web`")),
        "{stdout}"
    );
}

fn npm_on_path() {
    let npm = Command::new("npm").arg("--version").output();
    assert!(
        npm.is_ok_and(|o| o.status.success()),
        "npm is not installed: install Node.js 18+ with npm (Debian: apt-get install nodejs npm)"
    );
}

#[test]
fn without_npm_the_build_succeeds_and_says_how_to_get_the_bundle() {
    let root = Root::new("no-npm");
    let stdout = root.build(Some(&no_npm()), &[]);
    assert_explains_missing_bundle(&stdout, "npm is not installed");
    assert_eq!(root.embedded(), (Vec::new(), String::new()));
    assert!(
        warnings(&stdout)
            .iter()
            .any(|w| w.starts_with("no @socket.io/admin-ui files: ") && w.contains("admin_ui.path answers 404")),
        "{stdout}"
    );
    let listing = root.admin_ui();
    assert!(listing.contains("FILES: &[(&str, &str, &[u8])] = &[\n];"), "{listing}");
    assert!(listing.contains("npm ci --prefix web"), "the reason: {listing}");
    for line in [
        "cargo:rerun-if-changed=web",
        "cargo:rerun-if-env-changed=ROOMCAST_NO_NPM",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}:\n{stdout}");
    }
}

#[test]
fn roomcast_no_npm_keeps_npm_from_running() {
    npm_on_path();
    let root = Root::new("opt-out");
    let stdout = root.build(None, &[("ROOMCAST_NO_NPM", "1")]);
    assert_explains_missing_bundle(&stdout, "ROOMCAST_NO_NPM is set, so npm was not run");
    assert_eq!(root.embedded(), (Vec::new(), String::new()));
    assert!(!root.out.join("npm").exists(), "npm ran");
}

#[test]
fn with_npm_the_locked_bundle_is_installed_once_and_embedded() {
    npm_on_path();
    let locked = locked_version();
    let root = Root::new("npm");
    let first = root.build(None, &[]);
    assert_eq!(warnings(&first), Vec::<&str>::new(), "{first}");
    let (bundle, version) = root.embedded();
    assert_eq!(version, locked);
    let installed = root.out.join("npm/node_modules/socket.io-client");
    assert_eq!(
        bundle,
        fs::read(installed.join("dist/socket.io.min.js")).unwrap(),
        "the installed package's minified browser bundle"
    );
    assert!(
        String::from_utf8_lossy(&bundle).contains(&format!("Socket.IO v{locked}")),
        "its banner names the locked version"
    );
    // The Admin UI from the same install, its page offline.
    let listing = root.admin_ui();
    for file in [
        "\"index.html\"",
        "\"mdi/fonts/materialdesignicons-webfont.woff2\"",
        "\"js/app.",
    ] {
        assert!(listing.contains(file), "{file} in {listing}");
    }
    assert!(!listing.contains(".map\""), "no source maps: {listing}");
    let index = fs::read_to_string(root.out.join("admin-ui/index.html")).unwrap();
    assert!(!index.contains("https://") && !index.contains("//fonts"), "{index}");
    assert!(
        index.contains("href=\"mdi/css/materialdesignicons.min.css\""),
        "{index}"
    );

    // The next build needs no npm: it takes what the first installed.
    fs::remove_file(root.out.join("socket.io.min.js")).unwrap();
    let again = root.build(Some(&no_npm()), &[]);
    assert_eq!(warnings(&again), Vec::<&str>::new(), "{again}");
    assert_eq!(root.embedded(), (bundle.clone(), locked.clone()));

    // A web/node_modules with the locked version comes first, without npm
    // (the files differ from the install under OUT_DIR only by a marker).
    let web = Root::new("web-node-modules");
    let package = web.dir.join("web/node_modules/socket.io-client");
    fs::create_dir_all(package.join("dist")).unwrap();
    fs::copy(installed.join("package.json"), package.join("package.json")).unwrap();
    let mut marked = bundle.clone();
    marked.extend_from_slice(b"\n// from web/node_modules\n");
    fs::write(package.join("dist/socket.io.min.js"), &marked).unwrap();
    for ui in ["@socket.io/admin-ui", "@mdi/font"] {
        copy_dir(
            &root.out.join("npm/node_modules").join(ui),
            &web.dir.join("web/node_modules").join(ui),
        );
    }
    let stdout = web.build(Some(&no_npm()), &[]);
    assert_eq!(warnings(&stdout), Vec::<&str>::new(), "{stdout}");
    assert_eq!(web.embedded(), (marked, locked.clone()));

    // One with another version is not used, and the warning says so.
    let manifest = fs::read_to_string(package.join("package.json")).unwrap().replacen(
        &format!("\"version\": \"{locked}\""),
        "\"version\": \"0.0.1\"",
        1,
    );
    assert!(manifest.contains("\"version\": \"0.0.1\""), "{manifest}");
    fs::write(package.join("package.json"), manifest).unwrap();
    let stdout = web.build(Some(&no_npm()), &[]);
    assert!(
        warnings(&stdout)[0].starts_with(&format!(
            "web/node_modules has socket.io-client 0.0.1 but web/package-lock.json locks {locked}: not used"
        )),
        "{stdout}"
    );
    assert_explains_missing_bundle(&stdout, "npm is not installed");
    assert_eq!(web.embedded(), (Vec::new(), String::new()));
}
