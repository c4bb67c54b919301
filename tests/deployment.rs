//! Covers: the deployment files agree with each other and with roomcast,
//! without Docker: `Dockerfile`, `.dockerignore`, `docker-compose.yml`,
//! `deploy/haproxy.cfg` (the balancer's config, shared by compose and
//! `scripts/cluster`), `deploy/healthcheck` and `scripts/cluster`.
//! - every `ROOMCAST__*` variable of compose, the Dockerfile and
//!   scripts/cluster is a key of config/default.toml, and the nodes'
//!   environment in compose is a valid configuration;
//! - the port the nodes listen on, the Dockerfile's EXPOSE, the healthcheck's
//!   default and the port the balancer sends to are one port; the balancer
//!   publishes one public port;
//! - every variable the balancer's config reads (in the branch each
//!   topology takes) is set by compose's balancer service and by
//!   scripts/cluster, which names a compose service that is the node image;
//!   HAProxy itself accepts the file with each set (`haproxy -c`);
//! - the node service can be scaled (no published port, no container name),
//!   runs three replicas, every `depends_on` waits for a service that has a
//!   healthcheck;
//! - the health route (Docker's HEALTHCHECK, HAProxy's checks,
//!   scripts/cluster) is one route, and a real roomcast answers it 200
//!   (deploy/healthcheck run against it), while a wrong route fails;
//! - the Dockerfile builds roomcast (with the socket.io-client bundle from
//!   an npm stage) and runs it as a non-root user in a slim stage; the
//!   build context leaves out target/ and node_modules;
//! - what stops a node (compose's `stop_grace_period` with `stop_signal`
//!   SIGTERM, the image's STOPSIGNAL, scripts/cluster's STOP_TIMEOUT) waits
//!   longer than its shutdown bound (`server.drain_window_ms +
//!   audit.shutdown_flush_ms`) plus a second;
//! - the spill files live in a named volume the image prepares, one file
//!   per replica (`{host}` in `audit.spill_file`).
#![cfg(unix)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use roomcast::config::{Settings, DEFAULT_TOML};
use serde_norway::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

/// The secrets compose requires (`${VAR:?…}`: no baked-in values), as a
/// test sets them; README lists them.
const SECRETS: [(&str, &str); 5] = [
    ("ROOMCAST_API_KEY", "deployment-test-api-key"),
    ("ROOMCAST_JWT_SECRET", "deployment-test-jwt-secret-of-32-bytes-or-more"),
    ("ROOMCAST_ALLOWED_ORIGINS", "https://app.example.com"),
    ("ROOMCAST_POSTGRES_PASSWORD", "deployment-test-password"),
    ("ROOMCAST_LB_COOKIE_KEY", "deployment-test-cookie-key"),
];

/// Compose's `${VAR:-default}` / `${VAR-default}` / `${VAR}` with nothing
/// set in the shell but [`SECRETS`]: the defaults, and the secrets for the
/// required `${VAR:?message}`.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        if let Some((name, _)) = inner.split_once(":?") {
            let secret = SECRETS.iter().find(|(n, _)| *n == name);
            out.push_str(
                secret
                    .unwrap_or_else(|| panic!("{value}: {name} is required but not in SECRETS"))
                    .1,
            );
        } else if let Some((_, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A service's `environment` (a map), interpolated.
fn environment(service: &Value) -> HashMap<String, String> {
    let Some(env) = service.get("environment") else {
        return HashMap::new();
    };
    env.as_mapping()
        .expect("environment is a map")
        .iter()
        .map(|(k, v)| {
            let k = k.as_str().expect("variable name").to_string();
            let v = match v {
                Value::String(s) => interpolate(s),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{k}: unexpected value {other:?}"),
            };
            (k, v)
        })
        .collect()
}

/// `ENV a=b c=d` lines of the Dockerfile's last stage (continuations joined).
fn dockerfile_runtime_env() -> HashMap<String, String> {
    let runtime = dockerfile_stages().pop().expect("a stage");
    let mut env = HashMap::new();
    for line in instructions(&runtime) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=value");
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    env
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The Dockerfile split at each FROM.
fn dockerfile_stages() -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    for line in instructions(&read("Dockerfile")) {
        if line.starts_with("FROM ") {
            stages.push(String::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push_str(&line);
            stage.push('\n');
        }
    }
    stages
}

fn dockerfile_instruction(stage: &str, name: &str) -> Vec<String> {
    instructions(stage)
        .into_iter()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .collect()
}

/// `SECTION__KEY` of `ROOMCAST__SECTION__KEY` names a key of default.toml.
fn assert_real_key(var: &str, whose: &str) {
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
        .build()
        .expect("defaults load");
    let key = var
        .strip_prefix("ROOMCAST__")
        .unwrap_or_else(|| panic!("{var}"))
        .to_lowercase()
        .replace("__", ".");
    assert!(
        defaults.get::<config::Value>(&key).is_ok(),
        "{whose} sets {var}, but config/default.toml has no key `{key}`"
    );
}

/// The node service: the one built from this repository's Dockerfile.
fn node_service(compose: &Value) -> (&str, &Value) {
    let services = compose["services"].as_mapping().expect("services");
    let built: Vec<_> = services
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(k, s)| (k.as_str().expect("service name"), s))
        .collect();
    assert_eq!(built.len(), 1, "one service is built from the Dockerfile");
    built[0]
}

fn exposed_port() -> u16 {
    let runtime = dockerfile_stages().pop().expect("a stage");
    let expose = dockerfile_instruction(&runtime, "EXPOSE");
    assert_eq!(expose.len(), 1, "one EXPOSE in the runtime stage");
    expose[0].trim().parse().expect("EXPOSE PORT")
}

#[test]
fn the_nodes_environment_is_a_valid_configuration_on_the_exposed_port() {
    let compose = compose();
    let (name, _) = node_service(&compose);
    let (env, profile) = node_env();
    for var in env.keys().filter(|k| k.starts_with("ROOMCAST")) {
        assert!(
            var.starts_with("ROOMCAST__"),
            "{var}: roomcast reads ROOMCAST__<SECTION>__<KEY> (and ROOMCAST_CONFIG)"
        );
        assert_real_key(var, &format!("the {name} service or the Dockerfile"));
    }
    let settings = Settings::load_with_env(profile.as_deref(), Some(env.clone())).unwrap_or_else(|e| {
        panic!(
            "the {name} service's environment: {e}: {:?}",
            std::error::Error::source(&e)
        )
    });
    assert_eq!(
        settings.server.port,
        exposed_port(),
        "ROOMCAST__SERVER__PORT vs the Dockerfile's EXPOSE"
    );
    assert_eq!(
        settings.server.host, "0.0.0.0",
        "a node in a container listens on every interface"
    );
    assert!(
        !settings.api.keys.is_empty(),
        "the API has a key (else it refuses every request)"
    );

    // Its Redis is a compose service on Redis's port.
    let url = &settings.redis.url;
    let host = url
        .strip_prefix("redis://")
        .and_then(|r| r.split(['/', ':']).next())
        .unwrap_or_else(|| panic!("redis.url {url:?}"));
    let redis = service(&compose, host);
    assert!(redis.get("healthcheck").is_some(), "service {host} has a healthcheck");
    assert!(url.contains(":6379"), "{url}: the redis image listens on 6379");
}

#[test]
fn the_node_service_scales_and_everything_waits_for_healthy_dependencies() {
    let compose = compose();
    let (name, node) = node_service(&compose);
    assert_eq!(node["build"].as_str(), Some("."), "{name} is built from ./Dockerfile");
    assert!(
        node.get("ports").is_none(),
        "{name} publishes no port (replicas would collide; the balancer is the way in)"
    );
    assert!(
        node.get("container_name").is_none(),
        "{name} has no container_name (it would stop --scale)"
    );
    assert_eq!(
        node["deploy"]["replicas"].as_u64(),
        Some(3),
        "{name} runs three replicas"
    );

    let services = compose["services"].as_mapping().expect("services");
    let has_healthcheck = |service: &str| {
        let s = &services[service];
        s.get("healthcheck").is_some() || (s.get("build").is_some() && read("Dockerfile").contains("\nHEALTHCHECK "))
    };
    let mut waited_for = BTreeSet::new();
    for (who, s) in services {
        let who = who.as_str().expect("service name");
        let Some(deps) = s.get("depends_on") else { continue };
        for (dep, how) in deps.as_mapping().expect("depends_on is a map with conditions") {
            let dep = dep.as_str().expect("service name");
            assert!(
                services.contains_key(dep),
                "{who} depends on {dep}, which is no service"
            );
            assert_eq!(
                how["condition"].as_str(),
                Some("service_healthy"),
                "{who} waits until {dep} is healthy"
            );
            assert!(
                has_healthcheck(dep),
                "{who} waits for {dep}'s health, but {dep} has no healthcheck"
            );
            waited_for.insert(dep.to_string());
        }
    }
    for needed in [name, "redis", "postgres"] {
        assert!(waited_for.contains(needed), "something waits for {needed}");
    }
    // Configuration only through the environment: no config file mounted
    // into the nodes (named volumes for data only), no command-line profile.
    assert!(node.get("command").is_none(), "{name}: environment only");
    for mount in node.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        let source = mount.as_str().and_then(|m| m.split(':').next()).unwrap_or_default();
        assert!(
            !source.is_empty() && !source.starts_with(['.', '/', '~']),
            "{name}: {mount:?} mounts a host path; environment only (named volumes for data)"
        );
    }
}

/// The lines of deploy/haproxy.cfg HAProxy reads when exactly `defined` are
/// set (`.if [!]defined(V)` / `.else` / `.endif`, as HAProxy evaluates them).
fn active_balancer_lines(defined: &BTreeSet<String>) -> Vec<String> {
    let mut stack: Vec<bool> = Vec::new();
    let mut out = Vec::new();
    for raw in read("deploy/haproxy.cfg").lines() {
        let line = raw.trim();
        if let Some(cond) = line.strip_prefix(".if ") {
            let (negate, cond) = cond.strip_prefix('!').map_or((false, cond), |c| (true, c));
            let var = cond
                .strip_prefix("defined(")
                .and_then(|c| c.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unsupported condition {line}"));
            stack.push(defined.contains(var) != negate);
        } else if line == ".else" {
            let top = stack.last_mut().expect(".else inside .if");
            *top = !*top;
        } else if line == ".endif" {
            stack.pop().expect(".endif closes an .if");
        } else if !line.starts_with('#') && stack.iter().all(|&on| on) {
            out.push(line.to_string());
        }
    }
    assert!(stack.is_empty(), "every .if of deploy/haproxy.cfg is closed");
    out
}

/// The `"${VAR}"` names in `lines`.
fn balancer_variables(lines: &[String]) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for line in lines {
        let mut rest = line.as_str();
        while let Some(start) = rest.find("${") {
            let end = rest[start..].find('}').expect("closing brace") + start;
            vars.insert(rest[start + 2..end].to_string());
            rest = &rest[end + 1..];
        }
    }
    vars
}

/// With the variables of `env` set, deploy/haproxy.cfg reads no other one,
/// and it takes the branch that reads `branch_marker`.
fn balancer_reads_only(env: &HashMap<String, String>, branch_marker: &str, whose: &str) {
    let defined: BTreeSet<String> = env.keys().cloned().collect();
    let needed = balancer_variables(&active_balancer_lines(&defined));
    let missing: Vec<_> = needed.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "deploy/haproxy.cfg reads {missing:?}, which {whose} does not set"
    );
    assert!(
        needed.contains(branch_marker),
        "{whose}: deploy/haproxy.cfg takes the branch reading {branch_marker}: {needed:?}"
    );
}

/// The variables scripts/cluster hands HAProxy (its `lb_env=( ... )`).
fn script_balancer_env() -> HashMap<String, String> {
    let script = read("scripts/cluster");
    let block = script
        .split_once("local lb_env=(")
        .and_then(|(_, rest)| rest.split_once("\n  )"))
        .expect("scripts/cluster sets `local lb_env=( ... )`")
        .0;
    block
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn haproxy_accepts(env: &HashMap<String, String>, what: &str) {
    let haproxy = common::suite::find_on_path("haproxy").unwrap_or_else(|| {
        panic!("haproxy is not on PATH: install HAProxy 2.6+ (Debian: apt-get install haproxy); scripts/test does")
    });
    let out = Command::new(haproxy)
        .args(["-c", "-q", "-f"])
        .arg(repo().join("deploy/haproxy.cfg"))
        .env_clear()
        .envs(env)
        .output()
        .expect("running haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c rejects deploy/haproxy.cfg with the variables of {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_balancer_config_gets_every_variable_from_compose_and_from_the_script() {
    let compose = compose();
    let (node_name, node) = node_service(&compose);
    let lb = service(&compose, "lb");
    let env = environment(lb);

    let volumes: Vec<&str> = lb["volumes"]
        .as_sequence()
        .expect("lb volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        volumes.contains(&"./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"),
        "lb runs deploy/haproxy.cfg: {volumes:?}"
    );
    assert!(
        lb["image"].as_str().is_some_and(|i| i.starts_with("haproxy:")),
        "lb is HAProxy"
    );

    // Compose: every variable read is set, and they point at the nodes.
    balancer_reads_only(&env, "ROOMCAST_NODES_DNS", "lb's environment");
    assert_eq!(
        env["ROOMCAST_NODES_DNS"], node_name,
        "the balancer resolves the node service's name"
    );
    let node_port = environment(node)["ROOMCAST__SERVER__PORT"].clone();
    assert_eq!(
        env["ROOMCAST_NODES_PORT"], node_port,
        "the balancer sends to the nodes' port"
    );
    assert_eq!(
        env["ROOMCAST_NODES_PORT"],
        exposed_port().to_string(),
        "… which the Dockerfile exposes"
    );
    let max: u64 = env["ROOMCAST_NODES_MAX"]
        .parse()
        .expect("ROOMCAST_NODES_MAX is a number");
    assert!(
        max >= node["deploy"]["replicas"].as_u64().unwrap_or(1),
        "slots for every replica"
    );

    // One public port, the one the balancer binds.
    let ports: Vec<String> = lb["ports"]
        .as_sequence()
        .expect("lb publishes ports")
        .iter()
        .map(|p| p.as_str().expect("\"host:container\"").to_string())
        .collect();
    assert_eq!(ports, vec!["8080:8080".to_string()], "one public port, 8080");
    assert!(
        env["ROOMCAST_LB_BIND"].ends_with(":8080"),
        "the balancer binds the published port"
    );
    haproxy_accepts(&env, "docker-compose.yml's lb service");

    // scripts/cluster: the same file, the local branch, every variable set.
    let script = read("scripts/cluster");
    assert!(
        script.contains("HAPROXY_CFG=$ROOT/deploy/haproxy.cfg"),
        "scripts/cluster runs deploy/haproxy.cfg"
    );
    let local = script_balancer_env();
    balancer_reads_only(&local, "ROOMCAST_NODE_3", "scripts/cluster");
    let sample: HashMap<String, String> = local
        .keys()
        .map(|k| {
            let v = if k.starts_with("ROOMCAST_NODE_") || k == "ROOMCAST_LB_BIND" {
                "127.0.0.1:1".to_string()
            } else {
                local[k].replace('$', "")
            };
            (k.clone(), v)
        })
        .collect();
    haproxy_accepts(&sample, "scripts/cluster");
}

#[test]
fn the_script_sets_only_real_keys() {
    let script = read("scripts/cluster");
    let mut seen = 0;
    for line in script.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(start) = rest.find("ROOMCAST__") {
            let var: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[start + var.len()..];
            if var.matches("__").count() == 2 {
                assert_real_key(&var, "scripts/cluster");
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 4,
        "scripts/cluster configures its nodes through ROOMCAST__* ({seen} found)"
    );
}

/// The health route each of the three probes.
fn health_paths() -> [(String, &'static str); 3] {
    let healthcheck = read("deploy/healthcheck");
    let default = healthcheck
        .split_once("${ROOMCAST_HEALTH_PATH:-")
        .and_then(|(_, rest)| rest.split_once('}'))
        .expect("deploy/healthcheck defaults ROOMCAST_HEALTH_PATH")
        .0
        .to_string();
    let compose = environment(service(&compose(), "lb"))["ROOMCAST_HEALTH_PATH"].clone();
    let script = read("scripts/cluster")
        .lines()
        .find_map(|l| l.strip_prefix("export ROOMCAST_HEALTH_PATH="))
        .expect("scripts/cluster exports ROOMCAST_HEALTH_PATH")
        .to_string();
    [
        (default, "deploy/healthcheck (Docker's HEALTHCHECK)"),
        (compose, "docker-compose.yml's balancer"),
        (script, "scripts/cluster"),
    ]
}

#[actix_web::test]
async fn every_healthcheck_probes_one_real_route() {
    let paths = health_paths();
    for (path, whose) in &paths {
        assert_eq!(
            path, &paths[0].0,
            "{whose} probes {path}, {} probes {}",
            paths[0].1, paths[0].0
        );
    }
    let healthcheck = repo().join("deploy/healthcheck");
    // The image runs deploy/healthcheck as its HEALTHCHECK.
    let runtime = dockerfile_stages().pop().expect("a stage");
    let installed = dockerfile_instruction(&runtime, "COPY")
        .iter()
        .find_map(|c| {
            // COPY [--flag=...] SOURCE DEST
            let words: Vec<&str> = c.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            (words.first() == Some(&"deploy/healthcheck")).then(|| words[words.len() - 1].to_string())
        })
        .expect("the Dockerfile copies deploy/healthcheck into the image");
    let check = dockerfile_instruction(&runtime, "HEALTHCHECK");
    assert_eq!(check.len(), 1, "one HEALTHCHECK");
    let program = Path::new(&installed)
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .to_string();
    assert!(
        check[0].contains(&format!("CMD [\"{program}\"]")),
        "HEALTHCHECK runs {program}: {}",
        check[0]
    );
    assert!(
        read("deploy/healthcheck").contains("${ROOMCAST__SERVER__PORT:-3000}")
            && Settings::defaults().server.port == 3000,
        "deploy/healthcheck defaults to server.port's default"
    );

    let server = common::spawn(common::settings(|_| {}));
    let port = server.port.to_string();
    let run = |path: &str| {
        let healthcheck = healthcheck.clone();
        let (port, path) = (port.clone(), path.to_string());
        tokio::task::spawn_blocking(move || {
            Command::new(PathBuf::from("bash"))
                .arg(healthcheck)
                .args(["127.0.0.1", &port, &path])
                .status()
                .expect("running deploy/healthcheck")
        })
    };
    let ok = run(&paths[0].0).await.expect("join");
    assert!(
        ok.success(),
        "deploy/healthcheck {} against a running roomcast: {ok}",
        paths[0].0
    );
    let wrong = run("/no/such/route").await.expect("join");
    assert!(!wrong.success(), "deploy/healthcheck of a missing route must fail");
}

#[test]
fn the_image_builds_with_the_client_bundle_and_runs_unprivileged_in_a_slim_stage() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let runtime = stages.last().expect("runtime stage");
    let build = stages
        .iter()
        .find(|s| s.contains("cargo build --release --locked --bin roomcast"))
        .expect("a stage builds the roomcast binary");
    // build.rs embeds the socket.io-client bundle from web/node_modules.
    assert!(
        build.contains("web/node_modules") && stages.iter().any(|s| s.contains("npm ci")),
        "the build stage gets web/node_modules from an npm stage"
    );
    assert!(
        read("Cargo.toml").contains("[[bin]]\nname = \"roomcast\""),
        "a bin named roomcast"
    );
    let from = &dockerfile_instruction(runtime, "FROM")[0];
    assert!(from.contains("slim"), "a slim runtime image: {from}");
    let user = dockerfile_instruction(runtime, "USER");
    assert_eq!(user.len(), 1, "the runtime stage sets USER");
    assert!(
        !["root", "0"].contains(&user[0].trim()),
        "runs as a non-root user: {}",
        user[0]
    );
    assert!(
        dockerfile_instruction(runtime, "ENTRYPOINT")
            .iter()
            .any(|e| e.contains("roomcast")),
        "the image runs roomcast"
    );
    let ignore = read(".dockerignore");
    for excluded in ["target/", "**/node_modules/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore leaves out {excluded}"
        );
    }
}

/// `docker compose` (the plugin) or `docker-compose`; the command to run
/// `config` with.
fn compose_cli() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return cmd;
    }
    let standalone = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        standalone,
        "neither `docker compose` nor `docker-compose` runs: install one (Debian: apt-get install docker-compose; \
         scripts/test does) — `config` needs no Docker engine"
    );
    Command::new("docker-compose")
}

/// `docker compose config` in the repository with `secrets` set (and every
/// other ROOMCAST variable of the caller's environment removed).
fn compose_config(secrets: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = compose_cli();
    cmd.current_dir(repo()).args(["-f", "docker-compose.yml", "config"]);
    for (name, _) in SECRETS {
        cmd.env_remove(name);
    }
    cmd.envs(secrets.iter().copied());
    cmd.output().expect("compose runs")
}

#[test]
fn compose_refuses_to_start_without_its_secrets_and_publishes_only_the_balancer() {
    assert!(
        !repo().join(".env").exists(),
        "a .env in the repository would hand compose its secrets"
    );
    // Without any secret, and without each one in turn: refused, naming it.
    let none = compose_config(&[]);
    assert!(!none.status.success(), "compose config passed without secrets");
    for (missing, _) in SECRETS {
        let others: Vec<_> = SECRETS.iter().copied().filter(|(n, _)| *n != missing).collect();
        let out = compose_config(&others);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "compose config passed without {missing}");
        assert!(stderr.contains(missing), "the refusal names {missing}:\n{stderr}");
    }
    // With them: accepted; only the balancer publishes a port, and no secret
    // has a default.
    let out = compose_config(&SECRETS);
    assert!(
        out.status.success(),
        "compose config with every secret:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resolved: Value = serde_norway::from_slice(&out.stdout).expect("compose config prints YAML");
    let services = resolved["services"].as_mapping().expect("services");
    let publishing: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s.get("ports").is_some())
        .map(|(n, _)| n.as_str().unwrap())
        .collect();
    assert_eq!(publishing, ["lb"], "only the balancer publishes a port");
    let text = String::from_utf8_lossy(&out.stdout);
    for (_, value) in SECRETS {
        assert!(text.contains(value), "{value} reaches the services");
    }
    for baked in ["change-me", "compose-api-key", "POSTGRES_PASSWORD: roomcast"] {
        assert!(!text.contains(baked), "a baked-in secret: {baked}");
    }
    // The balancer forwards the nodes' public port, not their admin one.
    let compose = compose();
    let (_, node) = node_service(&compose);
    let env = environment(node);
    let admin = env
        .get("ROOMCAST__ADMIN__ADDRESS")
        .expect("the nodes have an admin listener");
    let admin_port = admin.rsplit(':').next().unwrap();
    assert_ne!(admin_port, env["ROOMCAST__SERVER__PORT"]);
    assert_eq!(
        environment(service(&compose, "lb"))["ROOMCAST_NODES_PORT"],
        env["ROOMCAST__SERVER__PORT"]
    );
}

#[test]
fn the_production_profile_turns_anonymous_access_off_and_requires_origins() {
    let profile = repo().join("config/production.toml");
    let secrets = |origins: &str| {
        let mut env = HashMap::new();
        env.insert(
            "ROOMCAST__AUTH__JWT_SECRET".to_string(),
            "deployment-test-jwt-secret-of-32-bytes-or-more".to_string(),
        );
        env.insert("ROOMCAST__SERVER__ALLOWED_ORIGINS".to_string(), origins.to_string());
        env
    };
    let settings = Settings::load_with_env(Some(&profile), Some(secrets("https://app.example.com")))
        .expect("the production profile with its secrets");
    assert!(settings.auth.anonymous_namespaces.is_empty());
    assert!(settings.auth.anonymous_subscribe.is_empty() && settings.auth.anonymous_publish.is_empty());
    assert_eq!(settings.server.allowed_origins, ["https://app.example.com"]);
    let err = Settings::load_with_env(Some(&profile), Some(secrets(""))).expect_err("no origins: refused");
    assert!(err.to_string().contains("server.allowed_origins"), "{err}");
}

/// The nodes' environment (the image's ENV, compose's environment over
/// it, without `ROOMCAST_CONFIG`) and the profile file in the repository
/// that `ROOMCAST_CONFIG` names in the image.
fn node_env() -> (HashMap<String, String>, Option<PathBuf>) {
    let compose = compose();
    let (_, node) = node_service(&compose);
    let mut env = dockerfile_runtime_env();
    env.extend(environment(node));
    let profile = env.remove("ROOMCAST_CONFIG").map(|in_image| {
        let copy = dockerfile_instruction(&dockerfile_stages().pop().expect("a stage"), "COPY")
            .into_iter()
            .find(|c| c.trim().ends_with(&format!(" {in_image}")))
            .unwrap_or_else(|| panic!("ROOMCAST_CONFIG={in_image}: the Dockerfile copies no file there"));
        repo().join(copy.split_whitespace().next().expect("COPY SOURCE DEST"))
    });
    (env, profile)
}

/// The nodes' configuration as compose gives it: the image's ENV, compose's
/// environment over it, the profile ROOMCAST_CONFIG names.
fn node_settings() -> Settings {
    let (env, profile) = node_env();
    Settings::load_with_env(profile.as_deref(), Some(env)).expect("the nodes' configuration loads")
}

/// What a node's shutdown may take: `server.drain_window_ms +
/// audit.shutdown_flush_ms` (`roomcast::startup::Shutdown::bound`).
fn shutdown_bound(settings: &Settings) -> std::time::Duration {
    std::time::Duration::from_millis(settings.server.drain_window_ms + settings.audit.shutdown_flush_ms)
}

/// Time for the process to exit after its shutdown ends, and for whatever
/// stops it to notice, kept on top of the bound.
const EXIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

#[test]
fn whatever_stops_a_node_waits_longer_than_its_shutdown_bound() {
    let compose = compose();
    let (name, node) = node_service(&compose);
    let bound = shutdown_bound(&node_settings());
    // Compose: SIGTERM, then SIGKILL after stop_grace_period.
    assert_eq!(
        node.get("stop_signal").and_then(Value::as_str),
        Some("SIGTERM"),
        "the {name} service stops its nodes with SIGTERM (the drain)"
    );
    let grace = node
        .get("stop_grace_period")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the {name} service sets stop_grace_period (Docker's default is 10 s)"));
    let grace = humantime::parse_duration(grace).expect("stop_grace_period is a duration");
    assert!(
        grace >= bound + EXIT_MARGIN,
        "stop_grace_period {grace:?} vs the shutdown bound {bound:?} (drain_window_ms + shutdown_flush_ms)"
    );
    // The image: SIGTERM too (`docker stop` without compose).
    let runtime = dockerfile_stages().pop().expect("a stage");
    assert_eq!(dockerfile_instruction(&runtime, "STOPSIGNAL"), ["SIGTERM"]);
    // scripts/cluster: its SIGKILL comes after STOP_TIMEOUT seconds, and
    // its nodes run with the defaults.
    let script = read("scripts/cluster");
    let timeout: u64 = script
        .lines()
        .find_map(|l| l.strip_prefix("STOP_TIMEOUT="))
        .and_then(|v| v.trim().parse().ok())
        .expect("scripts/cluster sets STOP_TIMEOUT=<seconds>");
    let defaults = shutdown_bound(&Settings::defaults());
    assert!(
        std::time::Duration::from_secs(timeout) >= defaults + EXIT_MARGIN,
        "scripts/cluster's STOP_TIMEOUT {timeout}s vs the shutdown bound {defaults:?}"
    );
}

#[test]
fn the_spill_files_live_in_a_named_volume_one_per_replica() {
    let compose = compose();
    let (name, node) = node_service(&compose);
    let settings = node_settings();
    // A relative spill file is under the image's WORKDIR.
    let runtime = dockerfile_stages().pop().expect("a stage");
    let workdir = dockerfile_instruction(&runtime, "WORKDIR")
        .pop()
        .expect("the runtime stage has a WORKDIR");
    let spill = Path::new(workdir.trim()).join(&settings.audit.spill_file);
    let mounts: Vec<&str> = node
        .get("volumes")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("the {name} service mounts a volume for its data"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let named = compose.get("volumes").and_then(Value::as_mapping);
    let holder = mounts
        .iter()
        .filter_map(|m| m.split_once(':'))
        .find(|(_, target)| spill.starts_with(target.split(':').next().unwrap_or_default()))
        .unwrap_or_else(|| panic!("no volume of {mounts:?} holds the spill file {}", spill.display()));
    assert!(
        named.is_some_and(|v| v.contains_key(holder.0)),
        "{}: a named volume (declared under `volumes:`), which outlives the container",
        holder.0
    );
    // Replicas share the volume: each needs a file of its own.
    assert!(
        settings.audit.spill_file.contains("{host}"),
        "{}: one spill file per replica ({{host}})",
        settings.audit.spill_file
    );
    // The image makes the mount point, owned by roomcast.
    let runs = dockerfile_instruction(&runtime, "RUN").join("\n");
    let target = holder.1.split(':').next().unwrap_or_default();
    assert!(
        runs.contains(&format!("mkdir -p {target}")) && runs.contains("roomcast:roomcast"),
        "the image creates {target} for the roomcast user: {runs}"
    );
}
