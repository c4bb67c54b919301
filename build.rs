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
//! - Embeds the Socket.IO Admin UI's built files (`@socket.io/admin-ui`'s
//!   `ui/dist`, without source maps) and the icon font its page loads
//!   (`@mdi/font`), from the same install, served at `admin_ui.path`.
//!   Its index.html is rewritten to load nothing from other sites: the
//!   Google Fonts stylesheet is dropped (the page falls back to the
//!   browser's sans-serif) and the icon font's stylesheet is the embedded
//!   one. Missing, the build still succeeds (a warning) and the UI's path
//!   answers 404 saying how to get it.

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
    let (files, missing) = match admin_ui(&out) {
        Ok(files) => (files, String::new()),
        Err(why) => {
            println!(
                "cargo:warning=no {ADMIN_UI} files: {why}. roomcast builds without them: admin_ui.path answers 404."
            );
            (Vec::new(), why)
        }
    };
    let mut listing = String::from(
        "/// The embedded Admin UI: (path, content type, bytes).\npub const FILES: &[(&str, &str, &[u8])] = &[\n",
    );
    for (path, kind) in &files {
        listing.push_str(&format!(
            "    ({path:?}, {kind:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/admin-ui/{path}\"))),\n"
        ));
    }
    listing.push_str(&format!(
        "];\n/// Why there are none (empty: there are).\npub const MISSING: &str = {missing:?};\n"
    ));
    fs::write(out.join("admin_ui_files.rs"), listing).expect("OUT_DIR is writable");
}

/// The Admin UI's package and the icon font's.
const ADMIN_UI: &str = "@socket.io/admin-ui";
const ICONS: &str = "@mdi/font";

/// Copies the Admin UI's files under `out/admin-ui` (index.html
/// rewritten): their paths there and content types.
fn admin_ui(out: &Path) -> Result<Vec<(String, &'static str)>, String> {
    let lock = fs::read_to_string("web/package-lock.json").map_err(|e| format!("web/package-lock.json: {e}"))?;
    let locked = |package: &str| locked_version_of(&lock, package);
    let ui_version = locked(ADMIN_UI).ok_or_else(|| format!("web/package-lock.json locks no {ADMIN_UI}"))?;
    let icons_version = locked(ICONS).ok_or_else(|| format!("web/package-lock.json locks no {ICONS}"))?;
    let has = |modules: &Path, package: &str, version: &str| {
        fs::read_to_string(modules.join(package).join("package.json"))
            .ok()
            .and_then(|m| string_after(&m, "\"version\""))
            .is_some_and(|v| v == version)
    };
    let modules = [Path::new("web/node_modules").to_path_buf(), out.join("npm").join("node_modules")]
        .into_iter()
        .find(|m| has(m, ADMIN_UI, &ui_version) && has(m, ICONS, &icons_version))
        .ok_or_else(|| {
            format!(
                "{ADMIN_UI} {ui_version} and {ICONS} {icons_version} are not installed (`npm ci --prefix web` installs them)"
            )
        })?;
    let dist = modules.join(ADMIN_UI).join("ui").join("dist");
    let icons = modules.join(ICONS);
    let target = out.join("admin-ui");
    let _ = fs::remove_dir_all(&target);
    let mut files = Vec::new();
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let copy = |from: &Path, to: &str, files: &mut Vec<(String, &'static str)>| -> Result<(), String> {
        let dest = target.join(to);
        fs::create_dir_all(dest.parent().expect("a file has a parent")).map_err(|e| io(&dest, e))?;
        fs::copy(from, &dest).map_err(|e| io(from, e))?;
        files.push((to.to_owned(), content_type(to)));
        Ok(())
    };
    for dir in ["", "css", "js", "img"] {
        let from = dist.join(dir);
        let entries = fs::read_dir(&from).map_err(|e| io(&from, e))?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".map") && n != "index.html")
            .collect();
        names.sort();
        for name in names {
            let to = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            copy(&from.join(&name), &to, &mut files)?;
        }
    }
    copy(
        &icons.join("css").join("materialdesignicons.min.css"),
        "mdi/css/materialdesignicons.min.css",
        &mut files,
    )?;
    copy(
        &icons.join("fonts").join("materialdesignicons-webfont.woff2"),
        "mdi/fonts/materialdesignicons-webfont.woff2",
        &mut files,
    )?;
    let index = fs::read_to_string(dist.join("index.html")).map_err(|e| io(&dist, e))?;
    let index = offline_index(&index)?;
    fs::write(target.join("index.html"), index).map_err(|e| io(&target, e))?;
    files.push(("index.html".to_owned(), content_type("index.html")));
    Ok(files)
}

/// The UI's index.html loading nothing from other sites: every
/// `<link rel="stylesheet">` to another site is dropped, and the
/// embedded icon stylesheet is loaded instead of the one from a CDN.
fn offline_index(index: &str) -> Result<String, String> {
    let mut out = String::with_capacity(index.len());
    let mut rest = index;
    let mut dropped = 0;
    while let Some(at) = rest.find("<link ") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('>').ok_or("index.html: a <link> does not end")? + at + 1;
        let tag = &rest[at..end];
        if tag.contains("href=\"https://") || tag.contains("href=\"http://") || tag.contains("href=\"//") {
            dropped += 1;
        } else {
            out.push_str(tag);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    if dropped == 0 {
        return Err("index.html has changed: no stylesheet of another site found to replace".into());
    }
    let icons = "<link rel=\"stylesheet\" href=\"mdi/css/materialdesignicons.min.css\">";
    let out = out.replacen("</head>", &format!("{icons}</head>"), 1);
    if ["https://", "http://", "//cdn", "//fonts"]
        .iter()
        .any(|s| out.contains(s))
    {
        return Err("index.html still names another site after the rewrite".into());
    }
    Ok(out)
}

/// The content type of an embedded file, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
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
    locked_version_of(lock, PACKAGE)
}

/// The version of `node_modules/<package>` in a package-lock.json.
fn locked_version_of(lock: &str, package: &str) -> Option<String> {
    let key = format!("\"node_modules/{package}\"");
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
