//! Covers the operators' side of the `roomcast` binary, run as a child
//! process:
//! - `config check`: exit 0 on a valid configuration; exit 1 listing every
//!   error with its key (a type error, an enum with its valid values, a
//!   log level that is not one, values that parse but make no sense), not
//!   just the first;
//! - `--config` with a file without extension is read as TOML; another
//!   extension or a missing file is refused naming the file;
//! - `config show`: the effective configuration (file, then environment),
//!   as TOML or JSON, the node name resolved, secrets redacted (API keys,
//!   the JWT secret, passwords in the Redis and database URLs);
//! - `--help` stands on its own where roomcast is installed without its
//!   source tree (the image, a package): no help text names a file, the
//!   top one says how the configuration is layered and that `config
//!   defaults` prints the defaults; `config defaults`, run where there is
//!   no `config/`, prints the compiled-in defaults, a comment before every
//!   key, whatever the environment says, and they are a valid profile;
//! - `token`: an HS256 token from the configured secret, RS256 and ES256
//!   tokens from a private key given on the command line, each accepted by
//!   the configured verifier with its `sub` and `exp`; a key that is not
//!   the configured one's pair, or none, is refused;
//! - `audit` run where there is no audit database says so, naming the
//!   path, and creates nothing there;
//! - errors name what failed: a port in use names host:port, an
//!   unreachable PostgreSQL names host:port and the cause (once);
//! - `serve` refuses `log.level = "verbose"`; its log lines carry the node
//!   name, in text and JSON, and no colour codes when stderr is not a
//!   terminal.
#![cfg(unix)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// `roomcast ARGS` in `dir` with `env` (and no `ROOMCAST*` of the test's
/// own environment); its output.
fn roomcast(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ROOMCAST") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("roomcast runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port() -> u16 {
    // unwrap: loopback has free ports.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn config_check_lists_every_error_with_its_key() {
    let dir = common::scratch_dir("check");
    let out = roomcast(&dir, &["config", "check"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("configuration valid"), "{}", stdout(&out));

    let out = roomcast(
        &dir,
        &["config", "check"],
        &[
            ("ROOMCAST__LOG__LEVEL", "verbose"),
            ("ROOMCAST__LOG__FORMAT", "xml"),
            ("ROOMCAST__SERVER__PORT", "abc"),
            ("ROOMCAST__ENGINE__PING_INTERVAL_MS", "0"),
            ("ROOMCAST__SERVER__NODE_NAME", "web 1"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("5 configuration errors"), "{err}");
    for needle in [
        "`log.format`",
        r#""text", "json""#,
        "`server.port`",
        "`engine.ping_interval_ms`",
        "`log.level`",
        "trace, debug, info, warn, error, off",
        "`server.node_name`",
    ] {
        assert!(err.contains(needle), "{needle} missing from\n{err}");
    }
}

#[test]
fn a_config_file_without_extension_is_toml_and_others_are_named() {
    let dir = common::scratch_dir("noext");
    std::fs::write(dir.join("roomcast"), "[server]\nport = 4321\n").unwrap();
    let out = roomcast(&dir, &["--config", "roomcast", "config", "check"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(":4321"), "{}", stdout(&out));

    std::fs::write(dir.join("roomcast.yaml"), "server:\n  port: 1\n").unwrap();
    let out = roomcast(&dir, &["--config", "roomcast.yaml", "config", "check"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("roomcast.yaml") && err.contains("TOML"), "{err}");

    let out = roomcast(&dir, &["--config", "missing.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing.toml: does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_show_prints_the_effective_configuration_without_secrets() {
    let dir = common::scratch_dir("show");
    std::fs::write(dir.join("profile.toml"), "[server]\nport = 4000\nworkers = 3\n").unwrap();
    let env = [
        ("ROOMCAST__SERVER__PORT", "4321"),
        ("ROOMCAST__API__KEYS", "first-api-key-0123456,second-api-key-0123456"),
        ("ROOMCAST__AUTH__JWT_ALGORITHM", "HS256"),
        ("ROOMCAST__AUTH__JWT_SECRET", "a-jwt-secret-of-at-least-32-bytes!!"),
        ("ROOMCAST__REDIS__URL", "redis://:redis-password@cache:6379/0"),
        (
            "ROOMCAST__DATABASE__URL",
            "postgres://roomcast:db-password@db:5432/audit",
        ),
    ];
    let out = roomcast(&dir, &["--config", "profile.toml", "config", "show"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for secret in [
        "first-api-key",
        "second-api-key",
        "a-jwt-secret",
        "redis-password",
        "db-password",
    ] {
        assert!(!text.contains(secret), "{secret} shown in\n{text}");
    }
    for line in [
        "[server]",
        "port = 4321",
        "workers = 3",
        "keys = [\"<redacted>\", \"<redacted>\"]",
        "jwt_secret = \"<redacted>\"",
        "url = \"redis://:***@cache:6379/0\"",
        "url = \"postgres://roomcast:***@db:5432/audit\"",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    // The host name an empty node name stands for.
    assert!(!text.lines().any(|l| l == "node_name = \"\""), "{text}");

    let out = roomcast(&dir, &["config", "show", "--json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["server"]["port"], 4321);
    assert_eq!(shown["api"]["keys"], json!(["<redacted>", "<redacted>"]));
    assert_eq!(shown["log"]["level"], "info");
}

/// The help texts an operator reads: the top one and each command's.
const HELP_PAGES: [&[&str]; 10] = [
    &["--help"],
    &["serve", "--help"],
    &["migrate", "--help"],
    &["audit", "--help"],
    &["token", "--help"],
    &["config", "--help"],
    &["config", "check", "--help"],
    &["config", "show", "--help"],
    &["config", "defaults", "--help"],
    &["help", "config"],
];

#[test]
fn help_names_no_file_and_config_defaults_prints_the_compiled_in_defaults() {
    // A directory without the source tree's config/, as in the image.
    let dir = common::scratch_dir("help");
    for args in HELP_PAGES {
        let out = roomcast(&dir, args, &[]);
        assert!(out.status.success(), "roomcast {args:?}: {}", stderr(&out));
        let text = stdout(&out);
        for file in [".toml", ".json", "config/"] {
            assert!(
                !text.contains(file),
                "`roomcast {}` names a file ({file}) that an installed roomcast may not have:\n{text}",
                args.join(" ")
            );
        }
    }
    let top = stdout(&roomcast(&dir, &["--help"], &[]));
    for needle in [
        "roomcast config defaults",
        "--config FILE",
        "ROOMCAST_CONFIG",
        "ROOMCAST__<SECTION>__<KEY>",
        "roomcast config check",
        "roomcast config show",
    ] {
        assert!(
            top.contains(needle),
            "`roomcast --help` does not mention {needle}:\n{top}"
        );
    }
    let config = stdout(&roomcast(&dir, &["config", "--help"], &[]));
    assert!(
        config.lines().any(|l| l.trim_start().starts_with("defaults ")),
        "`roomcast config --help` lists `defaults`:\n{config}"
    );

    // The compiled-in defaults, untouched by the environment or a profile.
    std::fs::write(dir.join("profile.toml"), "[server]\nport = 4000\n").unwrap();
    let out = roomcast(
        &dir,
        &["--config", "profile.toml", "config", "defaults"],
        &[("ROOMCAST__SERVER__WORKERS", "7")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let defaults = stdout(&out);
    assert_eq!(defaults, roomcast::config::DEFAULT_TOML);
    assert!(
        !dir.join("config").exists(),
        "config defaults wrote a config/ directory"
    );

    // A comment says what each key does: every run of `key = value` lines
    // follows a comment line.
    let mut previous = "";
    let mut keys = 0;
    for line in defaults.lines().map(str::trim) {
        let is_key = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
        if is_key {
            keys += 1;
            let after_key = !previous.starts_with('#') && previous.contains(" = ");
            assert!(
                previous.starts_with('#') || after_key,
                "config defaults: `{line}` has no comment before it"
            );
        }
        previous = line;
    }
    assert!(keys > 50, "config defaults printed {keys} keys");

    // They are a valid profile to start from, with the default port.
    std::fs::write(dir.join("defaults.toml"), &defaults).unwrap();
    let out = roomcast(&dir, &["--config", "defaults.toml", "config", "check"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(":3000)"), "{}", stdout(&out));
    // ... and hold every key of the effective configuration.
    let out = roomcast(&dir, &["config", "show", "--json"], &[]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for (section, keys) in shown.as_object().expect("sections") {
        let block = defaults
            .split_once(&format!("\n[{section}]\n"))
            .unwrap_or_else(|| panic!("config defaults has no [{section}]"))
            .1
            .split("\n[")
            .next()
            .unwrap_or_default();
        for key in keys.as_object().expect("keys").keys() {
            assert!(
                block.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "config defaults has no {section}.{key}"
            );
        }
    }
}

/// The configured verifier's view of `token`: its user.
fn verify(env: &[(&str, &str)], token: &str) -> Result<Option<String>, &'static str> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let settings = roomcast::config::Settings::load_with_env(None, Some(env)).expect("valid settings");
    let verifier = roomcast::auth::Verifier::from_settings(&settings.auth).expect("a verifier");
    verifier
        .check("/", &json!({ "token": token }))
        .map(|identity| identity.user)
        .map_err(|e| e.code)
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn token_signs_with_the_hs256_secret() {
    let dir = common::scratch_dir("token-hs");
    let env = [
        ("ROOMCAST__AUTH__JWT_ALGORITHM", "HS256"),
        ("ROOMCAST__AUTH__JWT_SECRET", "a-jwt-secret-of-at-least-32-bytes!!"),
        ("ROOMCAST__AUTH__JWT_AUDIENCE", "chat"),
    ];
    let out = roomcast(
        &dir,
        &["token", "--sub", "alice", "--ttl", "90s", "--subscribe", "room:*"],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(verify(&env, &token), Ok(Some("alice".into())));
    let c = claims(&token);
    assert_eq!((c["sub"].clone(), c["aud"].clone()), (json!("alice"), json!("chat")));
    assert_eq!(c["subscribe"], json!(["room:*"]));
    let exp = c["exp"].as_u64().unwrap();
    assert!(exp >= now() + 85 && exp <= now() + 95, "{c}");

    // Without an algorithm the configuration ignores tokens: said so.
    let out = roomcast(&dir, &["token", "--sub", "alice"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("auth.jwt_algorithm"), "{}", stderr(&out));
}

/// An openssl-made key pair in `dir`: (private, public) PEM files.
fn key_pair(dir: &Path, name: &str, algorithm: &[&str]) -> (PathBuf, PathBuf) {
    let (private, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    let ok = Command::new("openssl")
        .args(["genpkey"])
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)")
        .success();
    assert!(ok, "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    (private, public)
}

#[test]
fn token_signs_rs256_and_es256_with_the_private_key_given() {
    let dir = common::scratch_dir("token-keys");
    for (alg, args) in [
        ("RS256", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
        (
            "ES256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
    ] {
        let (private, public) = key_pair(&dir, alg, args);
        let (other, _) = key_pair(&dir, &format!("{alg}-other"), args);
        let public = public.display().to_string();
        let env = [
            ("ROOMCAST__AUTH__JWT_ALGORITHM", alg),
            ("ROOMCAST__AUTH__JWT_PUBLIC_KEY_FILE", public.as_str()),
        ];
        let key = private.display().to_string();
        let out = roomcast(&dir, &["token", "--sub", "bob", "--key", &key], &env);
        assert!(out.status.success(), "{alg}: {}", stderr(&out));
        let token = stdout(&out).trim().to_owned();
        assert_eq!(verify(&env, &token), Ok(Some("bob".into())), "{alg}");
        let exp = claims(&token)["exp"].as_u64().unwrap();
        assert!(
            exp >= now() + 3590 && exp <= now() + 3610,
            "{alg}: the default ttl is 1h"
        );

        let out = roomcast(&dir, &["token", "--sub", "bob"], &env);
        assert_eq!(out.status.code(), Some(1), "{alg}");
        assert!(stderr(&out).contains("--key"), "{alg}: {}", stderr(&out));

        let other = other.display().to_string();
        let out = roomcast(&dir, &["token", "--sub", "bob", "--key", &other], &env);
        assert_eq!(out.status.code(), Some(1), "{alg}");
        assert!(stderr(&out).contains("does not verify"), "{alg}: {}", stderr(&out));
    }
}

#[test]
fn audit_without_a_database_names_the_path_and_creates_nothing() {
    let dir = common::scratch_dir("audit-elsewhere");
    let out = roomcast(&dir, &["audit"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let expected = dir.canonicalize().unwrap().join("data/audit.db");
    assert!(
        err.contains(&format!("no audit database at {}", expected.display())),
        "{err}"
    );
    assert!(!dir.join("data").exists(), "nothing created in {}", dir.display());
}

#[test]
fn a_port_in_use_is_named() {
    let dir = common::scratch_dir("port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = roomcast(
        &dir,
        &[],
        &[
            ("ROOMCAST__SERVER__HOST", "127.0.0.1"),
            ("ROOMCAST__SERVER__PORT", &port),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn an_unreachable_postgres_is_named_with_the_cause_once() {
    let dir = common::scratch_dir("pg-down");
    let port = free_port();
    let url = format!("postgres://roomcast:secret@127.0.0.1:{port}/audit");
    let env = [
        ("ROOMCAST__DATABASE__URL", url.as_str()),
        ("ROOMCAST__DATABASE__TIMEOUT_MS", "300"),
    ];
    for args in [&["migrate"][..], &["audit"][..]] {
        let out = roomcast(&dir, args, &env);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{args:?}: {err}");
        assert!(err.contains("refused"), "{args:?}: the cause: {err}");
        assert!(err.matches("pool timed out").count() <= 1, "{args:?}: {err}");
        assert!(!err.contains("secret"), "{args:?}: {err}");
    }
}

#[test]
fn serve_refuses_a_log_level_that_is_not_one() {
    let dir = common::scratch_dir("verbose");
    let out = roomcast(&dir, &[], &[("ROOMCAST__LOG__LEVEL", "verbose")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("log.level") && err.contains("\"verbose\" is not a level"),
        "{err}"
    );
}

/// The first log line of a roomcast started with `env`, stderr piped.
fn first_log_line(env: &[(&str, &str)]) -> String {
    let dir = common::scratch_dir("log-line");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ROOMCAST") || key == "RUST_LOG" || key == "NO_COLOR" {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .current_dir(&dir)
        .env("ROOMCAST__SERVER__HOST", "127.0.0.1")
        .env("ROOMCAST__SERVER__PORT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomcast starts");
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .expect("a log line")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn log_lines_name_the_node_and_carry_no_colour_in_a_pipe() {
    let line = first_log_line(&[("ROOMCAST__SERVER__NODE_NAME", "edge-3")]);
    assert!(!line.contains('\u{1b}'), "colour codes in a pipe: {line:?}");
    assert!(line.contains(" node=edge-3 "), "{line}");

    let line = first_log_line(&[
        ("ROOMCAST__SERVER__NODE_NAME", "edge-4"),
        ("ROOMCAST__LOG__FORMAT", "json"),
    ]);
    let object: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(object["node"], "edge-4", "{line}");
    assert!(object["level"].is_string() && object["message"].is_string(), "{line}");
}
