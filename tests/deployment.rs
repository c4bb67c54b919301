//! Covers: the deployment files agree with each other and with roomcast,
//! without Docker: `Dockerfile`, `.dockerignore`, `docker-compose.yml`,
//! `deploy/haproxy.cfg` (the balancer's config, shared by compose and
//! `scripts/cluster`), `deploy/healthcheck`, `scripts/cluster`, the
//! Kubernetes manifests of `deploy/kubernetes/` and the systemd unit of
//! `deploy/systemd/`.
//! - every `ROOMCAST__*` variable of compose, the Dockerfile and
//!   scripts/cluster is a key of config/default.toml, and the nodes'
//!   environment in compose is a valid configuration, sticky, and also
//!   without stickiness (advertising the admin listener);
//! - the port the nodes listen on, the Dockerfile's EXPOSE, the healthcheck's
//!   default and the port the balancer sends to are one port; the balancer
//!   publishes one public port;
//! - every variable the balancer's config reads (in the branch each
//!   topology takes) is set by compose's balancer service and by
//!   scripts/cluster, which names a compose service that is the node image;
//!   HAProxy itself accepts the file with each set (`haproxy -c`), in both
//!   ways of balancing (`ROOMCAST_LB_STICKY` true: a stickiness cookie;
//!   false: round robin, no cookie key read) and refuses any other value;
//!   in compose one switch sets the balancer's and the nodes'
//!   `cluster.sticky`, sticky unless set;
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
//!   per replica (`{host}` in `audit.spill_file`);
//! - Kubernetes: the kustomization lists every manifest; no Secret is
//!   committed, one Secret feeds the secrets and docs/deployment.md creates
//!   it with exactly the keys the Deployment reads; every variable is a
//!   real key and the environment with the profile is a valid
//!   configuration; the profile is a ConfigMap holding
//!   config/production.toml, mounted where ROOMCAST_CONFIG and the image
//!   put it; the container ports are server.port (the Dockerfile's EXPOSE)
//!   and admin.address's, Prometheus scrapes the admin one, each Service
//!   targets one of them and keeps a client on one pod; the grace period
//!   exceeds the shutdown bound; several replicas, rolled and disrupted
//!   one at a time; the image's non-root user, a read-only root file
//!   system and a writable volume for the spill file; the readiness probe
//!   asks compose's health route, liveness another, and against a real
//!   roomcast on those listeners both answer 200 and, while it drains,
//!   readiness 503 and liveness still 200;
//! - systemd: the unit runs the binary, profile and environment file its
//!   header installs from the repository, checks the configuration first,
//!   has no ExecReload; the environment file names real keys, is refused
//!   as shipped naming each empty one, and is valid once filled in (with
//!   its commented examples too); SIGTERM, and TimeoutStopSec above the
//!   shutdown bound; an unprivileged user without capabilities (ports
//!   above 1024), the hardening options, the data under the state
//!   directory; `systemd-analyze verify` finds nothing to say.
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
    assert!(
        settings.cluster.sticky,
        "sticky sessions unless ROOMCAST_STICKY says otherwise"
    );
    // ROOMCAST_STICKY=false: still valid, each replica advertising its
    // admin listener (admin.address's port) under its own host name.
    let mut nonsticky = env.clone();
    nonsticky.insert("ROOMCAST__CLUSTER__STICKY".into(), "false".into());
    let without = Settings::load_with_env(profile.as_deref(), Some(nonsticky))
        .unwrap_or_else(|e| panic!("the {name} service's environment with ROOMCAST_STICKY=false: {e}"));
    assert!(!without.cluster.sticky);
    let admin_port = without.admin.address.rsplit_once(':').map(|(_, p)| p.to_string());
    assert_eq!(
        without
            .cluster
            .advertise_address
            .rsplit_once(':')
            .map(|(_, p)| p.to_string()),
        admin_port,
        "the nodes advertise their admin listener: {}",
        without.cluster.advertise_address
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

/// The lines of deploy/haproxy.cfg HAProxy reads with exactly the variables
/// of `env` set (`.if [!]defined(V)`, `.if [!]streq("${V}",value)` /
/// `.else` / `.endif`, as HAProxy evaluates them: an unset variable is
/// empty). An `.if` read is among the lines, so the variables its
/// condition names count as read.
fn active_balancer_lines(env: &HashMap<String, String>) -> Vec<String> {
    let mut stack: Vec<bool> = Vec::new();
    let mut out = Vec::new();
    for raw in read("deploy/haproxy.cfg").lines() {
        let line = raw.trim();
        if let Some(cond) = line.strip_prefix(".if ") {
            if stack.iter().all(|&on| on) {
                out.push(line.to_string());
            }
            let (negate, cond) = cond.strip_prefix('!').map_or((false, cond), |c| (true, c));
            let holds = if let Some(var) = cond.strip_prefix("defined(").and_then(|c| c.strip_suffix(')')) {
                env.contains_key(var)
            } else if let Some((var, value)) = cond
                .strip_prefix("streq(\"${")
                .and_then(|c| c.strip_suffix(')'))
                .and_then(|c| c.split_once("}\","))
            {
                env.get(var).map_or("", String::as_str) == value.trim_matches('"')
            } else {
                panic!("unsupported condition {line}")
            };
            stack.push(holds != negate);
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
/// and it takes the branch that reads `branch_marker`. Returns what it reads.
fn balancer_reads_only(env: &HashMap<String, String>, branch_marker: &str, whose: &str) -> BTreeSet<String> {
    let defined: BTreeSet<String> = env.keys().cloned().collect();
    let needed = balancer_variables(&active_balancer_lines(env));
    let missing: Vec<_> = needed.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "deploy/haproxy.cfg reads {missing:?}, which {whose} does not set"
    );
    assert!(
        needed.contains(branch_marker),
        "{whose}: deploy/haproxy.cfg takes the branch reading {branch_marker}: {needed:?}"
    );
    needed
}

/// Both ways of balancing (`ROOMCAST_LB_STICKY`): with `env` and each
/// value, every variable read is set and HAProxy accepts the file; only
/// the sticky one reads the cookie's key.
fn both_balancing_modes(env: &HashMap<String, String>, branch_marker: &str, whose: &str) {
    for sticky in ["true", "false"] {
        let mut env = env.clone();
        env.insert("ROOMCAST_LB_STICKY".into(), sticky.into());
        let whose = format!("{whose} with ROOMCAST_LB_STICKY={sticky}");
        let read = balancer_reads_only(&env, branch_marker, &whose);
        assert_eq!(
            read.contains("ROOMCAST_LB_COOKIE_KEY"),
            sticky == "true",
            "{whose}: the stickiness cookie's key is read only when sessions stick: {read:?}"
        );
        haproxy_accepts(&env, &whose);
    }
    let mut typo = env.clone();
    typo.insert("ROOMCAST_LB_STICKY".into(), "0".into());
    assert!(
        !haproxy_check(&typo).status.success(),
        "{whose}: HAProxy refuses a ROOMCAST_LB_STICKY that is neither true nor false"
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

/// `haproxy -c` of deploy/haproxy.cfg with exactly the variables of `env`.
fn haproxy_check(env: &HashMap<String, String>) -> std::process::Output {
    let haproxy = common::suite::find_on_path("haproxy").unwrap_or_else(|| {
        panic!("haproxy is not on PATH: install HAProxy 2.6+ (Debian: apt-get install haproxy); scripts/test does")
    });
    Command::new(haproxy)
        .args(["-c", "-q", "-f"])
        .arg(repo().join("deploy/haproxy.cfg"))
        .env_clear()
        .envs(env)
        .output()
        .expect("running haproxy -c")
}

fn haproxy_accepts(env: &HashMap<String, String>, what: &str) {
    let out = haproxy_check(env);
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
    // One switch (the shell's ROOMCAST_STICKY) turns stickiness off in the
    // balancer and in the nodes together, sticky unless set.
    let raw = |s: &Value, var: &str| s["environment"][var].as_str().map(str::to_string);
    let switch = raw(lb, "ROOMCAST_LB_STICKY");
    assert!(switch.is_some(), "lb sets ROOMCAST_LB_STICKY");
    assert_eq!(
        raw(node, "ROOMCAST__CLUSTER__STICKY"),
        switch,
        "the nodes' cluster.sticky and the balancer's ROOMCAST_LB_STICKY come from one switch"
    );
    assert_eq!(
        env["ROOMCAST_LB_STICKY"], "true",
        "compose is sticky unless told otherwise"
    );
    both_balancing_modes(&env, "ROOMCAST_NODES_DNS", "lb's environment");

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
            } else if k == "ROOMCAST_LB_STICKY" {
                "true".to_string()
            } else {
                local[k].replace('$', "")
            };
            (k.clone(), v)
        })
        .collect();
    haproxy_accepts(&sample, "scripts/cluster");
    assert_eq!(
        local.get("ROOMCAST_LB_STICKY").map(String::as_str),
        Some("$STICKY"),
        "scripts/cluster hands HAProxy its ROOMCAST_CLUSTER_STICKY choice"
    );
    both_balancing_modes(&sample, "ROOMCAST_NODE_3", "scripts/cluster");
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

// ---------------------------------------------------------------------------
// Kubernetes: deploy/kubernetes/

const KUBERNETES: &str = "deploy/kubernetes";

/// Every object of the manifests the kustomization lists, with its file;
/// the kustomization lists every manifest of the directory.
fn kubernetes_objects() -> Vec<(String, Value)> {
    use serde::Deserialize as _;
    let kustomization: Value =
        serde_norway::from_str(&read(&format!("{KUBERNETES}/kustomization.yaml"))).expect("kustomization.yaml is YAML");
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo().join(KUBERNETES))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().to_string())
        .filter(|f| (f.ends_with(".yaml") || f.ends_with(".yml")) && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml lists every manifest of {KUBERNETES}, and only those"
    );
    let mut objects = Vec::new();
    for file in listed {
        let text = read(&format!("{KUBERNETES}/{file}"));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if object.is_null() {
                continue;
            }
            for field in ["apiVersion", "kind"] {
                assert!(object[field].as_str().is_some(), "{file}: an object without {field}");
            }
            assert!(
                object["metadata"]["name"].as_str().is_some(),
                "{file}: an object without a name"
            );
            objects.push((file.clone(), object));
        }
    }
    objects
}

/// The objects of `kind`.
fn of_kind<'a>(objects: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect()
}

/// The one object of `kind`.
fn the<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "one {kind} in {KUBERNETES}");
    found[0]
}

/// The Deployment's pod template and its roomcast container.
fn pod_and_container(deployment: &Value) -> (&Value, &Value) {
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    (pod, &containers[0])
}

/// `selector` (a label map) picks the pods of `template`.
fn selects(selector: &Value, pod: &Value, whose: &str) {
    let labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    let selector = selector.as_mapping().unwrap_or_else(|| panic!("{whose}: a selector"));
    assert!(!selector.is_empty(), "{whose}: an empty selector picks every pod");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{whose} selects {k:?}={v:?}, which the pods lack"
        );
    }
}

/// A stand-in for what the Secret holds, by the variable it feeds.
fn kubernetes_secret_sample(var: &str) -> &'static str {
    match var {
        "ROOMCAST__API__KEYS" => "kubernetes-test-api-key-0123",
        "ROOMCAST__AUTH__JWT_SECRET" => "kubernetes-test-jwt-secret-of-32-bytes-or-more",
        "ROOMCAST__SERVER__ALLOWED_ORIGINS" => "https://app.example.com",
        "ROOMCAST__REDIS__URL" => "redis://redis:6379/0",
        "ROOMCAST__DATABASE__URL" => "postgres://roomcast:password@postgres:5432/roomcast",
        other => panic!("{other} comes from the Secret: give this test a sample value for it"),
    }
}

/// The container's environment: plain values, and the Secret's keys each
/// variable reads (`(secret, key)`).
fn container_env(container: &Value) -> (HashMap<String, String>, HashMap<String, (String, String)>) {
    let mut plain = HashMap::new();
    let mut from_secret = HashMap::new();
    for var in container["env"].as_sequence().expect("the container's env") {
        let name = var["name"].as_str().expect("env name").to_string();
        if let Some(value) = var.get("value") {
            let value = match value {
                Value::String(s) => s.clone(),
                other => panic!("{name}: env values are strings in Kubernetes, not {other:?}"),
            };
            plain.insert(name, value);
        } else {
            let secret = &var["valueFrom"]["secretKeyRef"];
            let (Some(secret_name), Some(key)) = (secret["name"].as_str(), secret["key"].as_str()) else {
                panic!("{name}: a value or a secretKeyRef");
            };
            from_secret.insert(name, (secret_name.to_string(), key.to_string()));
        }
    }
    (plain, from_secret)
}

/// The nodes' configuration in Kubernetes, with stand-ins for the Secret:
/// the profile ROOMCAST_CONFIG names (which must be the ConfigMap's copy
/// of config/production.toml), then the container's environment.
fn kubernetes_settings(objects: &[(String, Value)]) -> Settings {
    let (_, container) = pod_and_container(the(objects, "Deployment"));
    let (mut env, from_secret) = container_env(container);
    for var in from_secret.keys() {
        env.insert(var.clone(), kubernetes_secret_sample(var).to_string());
    }
    let profile = env
        .remove("ROOMCAST_CONFIG")
        .map(|_| repo().join("config/production.toml"));
    Settings::load_with_env(profile.as_deref(), Some(env))
        .unwrap_or_else(|e| panic!("the Deployment's environment: {e}: {:?}", std::error::Error::source(&e)))
}

/// A container port's number by its name.
fn container_port(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

/// The port of `host:port`.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} is not host:port"))
}

#[test]
fn kubernetes_manifests_match_the_configuration_the_image_and_the_shutdown_bound() {
    let objects = kubernetes_objects();
    for (file, object) in &objects {
        assert_ne!(
            object["kind"].as_str(),
            Some("Secret"),
            "{file}: no Secret is committed (its values are created in the cluster)"
        );
    }
    let deployment = the(&objects, "Deployment");
    let (pod, container) = pod_and_container(deployment);
    selects(&deployment["spec"]["selector"]["matchLabels"], pod, "the Deployment");

    // The image this repository builds, as compose tags it.
    let compose = compose();
    let (_, node) = node_service(&compose);
    assert_eq!(container["image"], node["image"], "the image docker-compose.yml builds");

    // Every variable is a key of the configuration, and together with the
    // profile they make a valid one.
    let (plain, from_secret) = container_env(container);
    for var in plain.keys().chain(from_secret.keys()) {
        if var != "ROOMCAST_CONFIG" {
            assert_real_key(var, "deploy/kubernetes/deployment.yaml");
        }
    }
    let settings = kubernetes_settings(&objects);

    // Secrets: one Secret, created by hand as docs/deployment.md says
    // (every key it reads, and only those).
    let secrets: BTreeSet<&str> = from_secret.values().map(|(s, _)| s.as_str()).collect();
    assert_eq!(secrets.len(), 1, "one Secret feeds the nodes: {secrets:?}");
    for (var, value) in &plain {
        assert!(
            !["SECRET", "KEYS", "PASSWORD"].iter().any(|s| var.contains(s)) && !value.contains('@'),
            "{var} is a secret: read it from the Secret"
        );
    }
    for required in [
        "ROOMCAST__AUTH__JWT_SECRET",
        "ROOMCAST__API__KEYS",
        "ROOMCAST__SERVER__ALLOWED_ORIGINS",
    ] {
        assert!(from_secret.contains_key(required), "{required} comes from the Secret");
    }
    let keys: BTreeSet<&str> = from_secret.values().map(|(_, k)| k.as_str()).collect();
    let docs = read("docs/deployment.md");
    let documented: BTreeSet<&str> = docs
        .split("--from-literal=")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        documented, keys,
        "docs/deployment.md's `kubectl create secret` names the Secret's keys the Deployment reads"
    );
    let secret_name = secrets.iter().next().expect("a Secret");
    assert!(
        docs.contains(&format!("kubectl create secret generic {secret_name}")),
        "docs/deployment.md creates the Secret {secret_name}"
    );

    // The profile: ROOMCAST_CONFIG is where the image has
    // config/production.toml, and the ConfigMap mounted there holds the
    // same file.
    let profile = plain.get("ROOMCAST_CONFIG").expect("ROOMCAST_CONFIG names the profile");
    let (_, in_image) = node_env();
    assert!(
        in_image.is_some_and(|p| p.ends_with("config/production.toml")),
        "the image has config/production.toml"
    );
    assert!(
        read("Dockerfile").contains(&format!("COPY config/production.toml {profile}\n")),
        "the Dockerfile copies config/production.toml to {profile}, where ROOMCAST_CONFIG points"
    );
    let profile_path = Path::new(profile);
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == profile_path.parent())
        .unwrap_or_else(|| panic!("a volume is mounted at {profile}'s directory"));
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume is declared");
    let config_map_name = volume["configMap"]["name"]
        .as_str()
        .expect("the profile comes from a ConfigMap");
    let config_map = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == config_map_name)
        .unwrap_or_else(|| panic!("no ConfigMap {config_map_name}"));
    let file_name = profile_path.file_name().expect("a file").to_string_lossy();
    assert_eq!(
        config_map["data"][&*file_name].as_str(),
        Some(read("config/production.toml").as_str()),
        "the ConfigMap's {file_name} is config/production.toml"
    );

    // Ports: the public one is the image's and the configuration's; the
    // admin listener (metrics, dashboard, API) has its own.
    assert_eq!(container_port(container, "http"), settings.server.port, "server.port");
    assert_eq!(
        container_port(container, "http"),
        exposed_port(),
        "the Dockerfile's EXPOSE"
    );
    assert_eq!(settings.server.host, "0.0.0.0", "a pod listens on every interface");
    let admin = port_of(&settings.admin.address);
    assert_eq!(container_port(container, "admin"), admin, "admin.address");
    assert!(
        settings.admin.address.starts_with("0.0.0.0:"),
        "the admin listener is reachable from other pods (Prometheus, backends)"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // Services: each targets a port of the container, the public one
    // sticky (a long-polling session's requests must reach its pod).
    let services = of_kind(&objects, "Service");
    let mut targeted = BTreeSet::new();
    for service in &services {
        let name = service["metadata"]["name"].as_str().unwrap_or_default();
        selects(&service["spec"]["selector"], pod, &format!("Service {name}"));
        assert_eq!(
            service["spec"]["sessionAffinity"].as_str(),
            Some("ClientIP"),
            "Service {name} keeps a client on one pod"
        );
        for port in service["spec"]["ports"].as_sequence().expect("service ports") {
            let target = port["targetPort"].as_str().expect("targetPort by name");
            container_port(container, target);
            targeted.insert(target.to_string());
        }
    }
    assert_eq!(
        targeted,
        BTreeSet::from(["http".to_string(), "admin".to_string()]),
        "Services for the public and the admin port"
    );

    // Whatever stops a pod waits longer than its shutdown bound.
    let bound = shutdown_bound(&settings);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds (Kubernetes' default is 30 s)");
    assert!(
        std::time::Duration::from_secs(grace) >= bound + EXIT_MARGIN,
        "terminationGracePeriodSeconds {grace} vs the shutdown bound {bound:?} (drain_window_ms + shutdown_flush_ms)"
    );

    // Several replicas, replaced and disrupted one at a time.
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "more than one node: {replicas}");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0),
        "a rollout starts a new node before an old one drains"
    );
    let pdb = the(&objects, "PodDisruptionBudget");
    selects(&pdb["spec"]["selector"]["matchLabels"], pod, "the PodDisruptionBudget");
    let allowed = match (
        pdb["spec"]["maxUnavailable"].as_u64(),
        pdb["spec"]["minAvailable"].as_u64(),
    ) {
        (Some(max), None) => max,
        (None, Some(min)) => replicas.saturating_sub(min),
        other => panic!("the PodDisruptionBudget sets maxUnavailable or minAvailable as a number: {other:?}"),
    };
    assert!(
        (1..replicas).contains(&allowed),
        "voluntary disruptions take some pods but never all: {allowed} of {replicas}"
    );

    // Unprivileged as in the image, with a read-only root file system and
    // a writable volume for the data the working directory holds.
    let uid = read("Dockerfile")
        .split_once("--uid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|u| u.parse::<u64>().ok())
        .expect("the Dockerfile's useradd --uid");
    let security = &pod["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["runAsUser"].as_u64(), Some(uid), "the image's roomcast user");
    let container_security = &container["securityContext"];
    assert_eq!(container_security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(container_security["readOnlyRootFilesystem"].as_bool(), Some(true));
    let workdir = dockerfile_instruction(&dockerfile_stages().pop().expect("a stage"), "WORKDIR")
        .pop()
        .expect("the runtime stage has a WORKDIR");
    let spill = Path::new(workdir.trim()).join(&settings.audit.spill_file);
    let writable = container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .filter(|m| m["readOnly"].as_bool() != Some(true))
        .filter_map(|m| m["mountPath"].as_str())
        .any(|path| spill.starts_with(path));
    assert!(writable, "a writable volume holds the spill file {}", spill.display());
}

/// `GET path` on `port`: the status.
async fn status_of(port: u16, path: &str) -> u16 {
    reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status()
        .as_u16()
}

#[actix_web::test]
async fn kubernetes_probes_ask_real_routes_and_only_readiness_fails_while_draining() {
    let objects = kubernetes_objects();
    let (_, container) = pod_and_container(the(&objects, "Deployment"));
    let settings = kubernetes_settings(&objects);
    let probe = |name: &str| {
        let get = &container[name]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is an httpGet with a path"))
            .to_string();
        let port = container_port(container, get["port"].as_str().expect("a port by name"));
        (path, port)
    };
    let (ready_path, ready_port) = probe("readinessProbe");
    let (live_path, live_port) = probe("livenessProbe");
    // The route the balancer and the image's HEALTHCHECK ask as well.
    assert_eq!(
        ready_path,
        health_paths()[0].0,
        "readiness asks the health route of compose"
    );
    assert_ne!(
        live_path, ready_path,
        "liveness is not readiness: a draining or full node would be restarted"
    );

    // A real roomcast with the Kubernetes listeners: the public one and the
    // admin one, each probe on the listener of its port.
    let server = common::spawn(common::settings(|s| {
        s.admin.address = "127.0.0.1:0".into();
        // Long enough that the drain below is still going on when the
        // probes are asked.
        s.server.drain_window_ms = 60_000;
    }));
    let admin_port = server.admin_port.expect("the admin listener");
    let listener = |port: u16| {
        if port == settings.server.port {
            server.port
        } else if port == port_of(&settings.admin.address) {
            admin_port
        } else {
            panic!("a probe asks port {port}, which roomcast does not listen on")
        }
    };
    let (ready_port, live_port) = (listener(ready_port), listener(live_port));
    assert_eq!(status_of(ready_port, &ready_path).await, 200, "readiness {ready_path}");
    assert_eq!(status_of(live_port, &live_path).await, 200, "liveness {live_path}");

    // Draining (SIGTERM): readiness fails at once, liveness holds.
    let session = reqwest::get(format!("{}{}?EIO=4&transport=polling", server.http(), common::SIO))
        .await
        .expect("a handshake");
    assert_eq!(session.status().as_u16(), 200, "a session keeps the drain going");
    let shutdown = server.shutdown.clone();
    actix_web::rt::spawn(async move { shutdown.run().await });
    common::within("readiness to fail while draining", async {
        while status_of(ready_port, &ready_path).await != 503 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        status_of(live_port, &live_path).await,
        200,
        "liveness {live_path} while draining: the kubelet would kill the drain"
    );
}

// ---------------------------------------------------------------------------
// systemd: deploy/systemd/

/// The unit's sections: each key's values in order (a key may repeat).
fn systemd_unit() -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut sections: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut current = None;
    for line in read("deploy/systemd/roomcast.service").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "no continuation lines: {line}");
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let section = current.clone().unwrap_or_else(|| panic!("{line}: outside a section"));
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{line}: not KEY=value"));
        sections
            .get_mut(&section)
            .expect("the section")
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

/// The one value of `key` in `[Service]`.
fn unit_value(unit: &HashMap<String, HashMap<String, Vec<String>>>, key: &str) -> String {
    let values = unit["Service"]
        .get(key)
        .unwrap_or_else(|| panic!("roomcast.service sets {key}"));
    assert_eq!(values.len(), 1, "{key} once");
    values[0].clone()
}

/// The `install … SOURCE DEST` lines of the unit's header: where each file
/// of the repository goes.
fn systemd_installs() -> HashMap<String, String> {
    read("deploy/systemd/roomcast.service")
        .lines()
        .filter_map(|l| l.trim_start_matches('#').trim().strip_prefix("install "))
        .map(|l| {
            let words: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with('-') && !w.chars().all(|c| c.is_ascii_digit()))
                .collect();
            assert_eq!(words.len(), 2, "install [OPTIONS] SOURCE DEST: {l}");
            (words[0].to_string(), words[1].to_string())
        })
        .collect()
}

/// The example environment file: `(variable, value, commented out)`.
fn systemd_env_file() -> Vec<(String, String, bool)> {
    read("deploy/systemd/roomcast.env")
        .lines()
        .filter_map(|l| {
            let (commented, l) = match l.strip_prefix('#') {
                Some(rest) => (true, rest),
                None => (false, l),
            };
            let (k, v) = l.split_once('=')?;
            (k.starts_with("ROOMCAST") && !k.contains(' ')).then(|| (k.to_string(), v.to_string(), commented))
        })
        .collect()
}

/// A stand-in for a value the operator fills in.
fn systemd_sample(var: &str) -> &'static str {
    match var {
        "ROOMCAST__AUTH__JWT_SECRET" => "systemd-test-jwt-secret-of-32-bytes-or-more",
        "ROOMCAST__SERVER__ALLOWED_ORIGINS" => "https://app.example.com",
        "ROOMCAST__API__KEYS" => "systemd-test-api-key-0123",
        other => panic!("roomcast.env leaves {other} empty: give this test a sample value for it"),
    }
}

#[test]
fn the_systemd_unit_runs_the_installed_binary_with_a_valid_configuration_and_waits_for_the_drain() {
    let unit = systemd_unit();
    for section in ["Unit", "Service", "Install"] {
        assert!(unit.contains_key(section), "roomcast.service has [{section}]");
    }
    // What the header installs comes from the repository, and the unit
    // uses it from where it goes.
    let installs = systemd_installs();
    for source in installs.keys() {
        assert!(
            source.starts_with("target/release/") || repo().join(source).is_file(),
            "roomcast.service's header installs {source}, which the repository lacks"
        );
    }
    let binary = &installs["target/release/roomcast"];
    let profile = &installs["config/production.toml"];
    let env_file = &installs["deploy/systemd/roomcast.env"];
    assert!(installs.contains_key("deploy/systemd/roomcast.service"));
    let exec_start = unit_value(&unit, "ExecStart");
    let words: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(words[0], binary, "ExecStart runs the installed binary");
    assert_eq!(&words[1..], ["--config", profile, "serve"], "ExecStart: {exec_start}");
    assert_eq!(
        unit_value(&unit, "ExecStartPre"),
        format!("{binary} --config {profile} config check"),
        "the configuration is checked before the start, every error in the journal"
    );
    assert_eq!(&unit_value(&unit, "EnvironmentFile"), env_file);
    // roomcast reloads nothing: a reload signal would end it (SIGHUP's
    // default), so there is no ExecReload.
    assert!(
        !unit["Service"].contains_key("ExecReload"),
        "roomcast has no reload; `systemctl restart` drains and starts it again"
    );
    assert_eq!(unit_value(&unit, "Type"), "exec");

    // The environment file: real keys only. As shipped it is refused,
    // naming what to fill in; filled in, with its examples or without, it
    // is a valid configuration over the profile.
    let entries = systemd_env_file();
    assert!(entries.len() >= 5, "roomcast.env sets the nodes' variables");
    for (var, _, _) in &entries {
        assert_real_key(var, "deploy/systemd/roomcast.env");
    }
    let active: HashMap<String, String> = entries
        .iter()
        .filter(|(_, _, commented)| !commented)
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let empty: Vec<&String> = active.iter().filter(|(_, v)| v.is_empty()).map(|(k, _)| k).collect();
    assert!(!empty.is_empty(), "roomcast.env leaves the secrets for the operator");
    let profile_file = repo().join("config/production.toml");
    let refused = Settings::load_with_env(Some(&profile_file), Some(active.clone()))
        .expect_err("roomcast.env as shipped (its secrets empty) is refused");
    let refused = format!("{refused}: {:?}", std::error::Error::source(&refused));
    let errors = Settings::check_with(
        Some(&profile_file),
        Some(active.clone()),
        roomcast::startup::owner_problems,
    )
    .expect_err("refused");
    let listed = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    for var in &empty {
        let key = var
            .trim_start_matches("ROOMCAST__")
            .to_lowercase()
            .replacen("__", ".", 1);
        assert!(listed.contains(&key), "the refusal names {key}:\n{listed}\n{refused}");
    }
    let mut filled = active.clone();
    for var in &empty {
        filled.insert((*var).clone(), systemd_sample(var).to_string());
    }
    let settings = Settings::load_with_env(Some(&profile_file), Some(filled.clone()))
        .unwrap_or_else(|e| panic!("roomcast.env filled in: {e}: {:?}", std::error::Error::source(&e)));
    let mut with_examples = filled.clone();
    for (k, v, _) in entries.iter().filter(|(_, _, commented)| *commented) {
        with_examples.insert(k.clone(), v.clone());
    }
    Settings::load_with_env(Some(&profile_file), Some(with_examples)).unwrap_or_else(|e| {
        panic!(
            "roomcast.env with its examples: {e}: {:?}",
            std::error::Error::source(&e)
        )
    });

    // SIGTERM drains; systemd's SIGKILL comes after the shutdown bound.
    assert_eq!(unit_value(&unit, "KillSignal"), "SIGTERM");
    let timeout =
        humantime::parse_duration(&unit_value(&unit, "TimeoutStopSec")).expect("TimeoutStopSec is a duration");
    let bound = shutdown_bound(&settings);
    assert!(
        timeout >= bound + EXIT_MARGIN,
        "TimeoutStopSec {timeout:?} vs the shutdown bound {bound:?} (drain_window_ms + shutdown_flush_ms)"
    );

    // Unprivileged: its own user, no capability, so its ports are not
    // privileged ones.
    assert!(
        unit_value(&unit, "DynamicUser") == "yes"
            || unit["Service"]
                .get("User")
                .is_some_and(|u| u[0] != "root" && u[0] != "0"),
        "roomcast runs as an unprivileged user"
    );
    assert_eq!(unit_value(&unit, "CapabilityBoundingSet"), "", "no capability");
    for port in [settings.server.port, port_of(&settings.admin.address)] {
        assert!(
            port >= 1024,
            "port {port} needs CAP_NET_BIND_SERVICE, which the unit drops"
        );
    }
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("UMask", "0077"),
    ] {
        assert_eq!(unit_value(&unit, key), value, "hardening: {key}");
    }
    // With ProtectSystem=strict only the state directory is writable: the
    // working directory is it, and the data paths are relative to it.
    let state = unit_value(&unit, "StateDirectory");
    assert_eq!(unit_value(&unit, "WorkingDirectory"), format!("/var/lib/{state}"));
    assert!(
        Path::new(&settings.audit.spill_file).is_relative(),
        "the spill file is under the state directory"
    );
    let sqlite = settings
        .database
        .url
        .strip_prefix("sqlite://")
        .expect("SQLite by default");
    assert!(
        Path::new(sqlite).is_relative(),
        "the SQLite audit log is under the state directory"
    );
    let nofile: u64 = unit_value(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 65536, "sessions follow the open-file limit: {nofile}");

    // systemd itself reads every line (a misspelt key or a bad value is
    // only a warning to it), with the binary where the test built it.
    let analyze = common::suite::find_on_path("systemd-analyze").unwrap_or_else(|| {
        panic!("systemd-analyze is not on PATH: install systemd (Debian: apt-get install systemd); scripts/test does")
    });
    let dir = common::scratch_dir("systemd");
    let copy = dir.join("roomcast.service");
    std::fs::write(
        &copy,
        read("deploy/systemd/roomcast.service").replace(binary.as_str(), env!("CARGO_BIN_EXE_roomcast")),
    )
    .expect("a copy of the unit");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("running systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify roomcast.service:\n{said}"
    );
}
