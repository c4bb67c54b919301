//! Typed configuration, read once at start and handed down as sections.
//!
//! Layers, later ones win: `config/default.toml` (compiled in, so the binary
//! runs from any directory), an optional profile file, then environment
//! variables `ROOMCAST__<SECTION>__<KEY>`. Every key has its default and a
//! comment in `config/default.toml`; unknown keys are rejected so a typo does
//! not silently fall back to a default.
//!
//! This module checks its own values and imports no owner of them: the
//! owners' checks (auth, Redis, the audit store, IP ranges) run where
//! `startup` builds each of them, reporting the key (see
//! [`Settings::validate`]).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::engineio::{Limits, TransportKind};

/// The defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file, a variable or a value did not parse (the message names the
    /// key or the file).
    #[error("configuration: {}", explain(.0))]
    Load(config::ConfigError),
    /// The profile file is not one roomcast can read.
    #[error("configuration file {path}: {message}")]
    File {
        /// The file as given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `engine.ping_interval_ms`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// More than one of the above, in the order found.
    #[error("{} configuration errors:\n{}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

impl ConfigError {
    /// One error for `errors` (which must not be empty): itself when there
    /// is one.
    pub fn of(mut errors: Vec<ConfigError>) -> ConfigError {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Several(errors)
        }
    }

    /// Every single error (a [`ConfigError::Several`] taken apart).
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().flat_map(ConfigError::each).collect(),
            one => vec![one],
        }
    }
}

/// config's message, with the valid values of an enum it names (its own
/// message for an unknown variant lists none).
fn explain(e: &config::ConfigError) -> String {
    let message = e.to_string();
    let enums = [
        ("LogFormat", "\"text\", \"json\""),
        ("RedisMode", "\"classic\", \"sharded\", \"streams\""),
        ("SubscriptionMode", "\"static\", \"dynamic\""),
    ];
    match enums
        .iter()
        .find(|(name, _)| message.contains(&format!("enum {name} does not have variant")))
    {
        Some((_, valid)) => format!("{message} (valid: {valid})"),
        None => message,
    }
}

fn list(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
}

/// The levels `log.level` accepts (tracing's, case-insensitive).
pub const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `log.level`: levels or `target=level` directives, comma
/// separated. A bare word that is not a level is refused although tracing's
/// filter syntax takes it (as a target name, enabling only that target):
/// `verbose` would otherwise silence every log line without a word.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let valid = "valid: trace, debug, info, warn, error, off, or directives `target=level` separated by commas (e.g. \"info,roomcast=debug\")";
    if level.trim().is_empty() {
        return Err(format!("is empty ({valid})"));
    }
    for directive in level.split(',').map(str::trim) {
        let (target, lvl) = match directive.rsplit_once('=') {
            Some((target, lvl)) => (Some(target), lvl),
            None => (None, directive),
        };
        if target.is_some_and(str::is_empty) || !LOG_LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!("{directive:?} is not a level ({valid})"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| format!("{level:?}: {e} ({valid})"))
}

/// This machine's host name (`server.node_name`'s default): the kernel's,
/// else `$HOSTNAME`, else "roomcast".
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "roomcast".to_owned())
}

/// The host and port of a `postgres://` URL (5432 when not given), for
/// messages: a database is named by where it is, never by its URL (which
/// may hold a password).
pub fn postgres_endpoint(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        // Not the inside of a bracketed IPv6 address.
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "localhost" } else { host };
    Some((host.to_owned(), port))
}

/// Where a database or Redis is, for log lines (never the URL, which may
/// hold a password): `host:port` of PostgreSQL (5432 by default) or Redis,
/// the file of SQLite.
pub fn location(url: &str) -> String {
    if let Some((host, port)) = postgres_endpoint(url) {
        return format!("{host}:{port}");
    }
    if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        return rest.split('?').next().unwrap_or_default().to_owned();
    }
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_owned()
}

/// Longest `server.node_name`: a host name label's limit (RFC 1035 §2.3.4).
pub const MAX_NODE_NAME: usize = 63;

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listener and endpoints.
    pub server: ServerSettings,
    /// Engine.IO session parameters.
    pub engine: EngineSettings,
    /// Socket.IO layer.
    pub socketio: SocketIoSettings,
    /// WebSocket handshake negotiation.
    pub websocket: WebSocketSettings,
    /// Logging.
    pub log: LogSettings,
    /// Test behaviour (compliance suites, client tests).
    pub testing: TestingSettings,
    /// Rooms.
    pub rooms: RoomSettings,
    /// Client authentication.
    pub auth: AuthSettings,
    /// HTTP API.
    pub api: ApiSettings,
    /// Cluster adapter.
    pub redis: RedisSettings,
    /// The audit database.
    pub database: DatabaseSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Per-address, per-request and per-connection limits.
    pub limits: LimitSettings,
    /// The internal listener for operators.
    pub admin: AdminSettings,
    /// Connection state recovery.
    pub recovery: RecoverySettings,
    /// How the nodes of a cluster share sessions.
    pub cluster: ClusterSettings,
    /// The Socket.IO Admin UI's namespace and the embedded UI.
    pub admin_ui: AdminUiSettings,
}

/// `[cluster]`: long-polling without sticky sessions, see
/// docs/clustering.md ("Without sticky sessions").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `true` (the default): every request of a session must reach the
    /// node that holds it (a balancer with affinity). `false`: a request
    /// for another node's session is forwarded there (needs `redis.url`
    /// and `advertise_address`).
    pub sticky: bool,
    /// `host:port` at which the other nodes reach this one (its admin
    /// listener, or its public one); published in Redis. `{host}` stands
    /// for this machine's host name (a container's, which Docker's DNS
    /// resolves); port 0 for the port this node's admin listener (else its
    /// public one) is bound to.
    pub advertise_address: String,
    /// Requests this node forwards at once; beyond, 503 with `Retry-After`.
    pub max_forwarded: usize,
    /// Longest a forwarded request waits to connect to its owner, in ms
    /// (then the session counts as gone).
    pub forward_connect_ms: u64,
    /// How often a node says in Redis that it is alive, in ms.
    pub heartbeat_ms: u64,
    /// How long a node counts as alive after its last heartbeat, in ms.
    pub node_ttl_ms: u64,
}

/// `[admin_ui]`: the namespace `@socket.io/admin-ui` logs in to, as
/// Node.js's `instrument()` serves it, and the UI's built files (see
/// docs/admin-ui.md and `crate::adminui`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUiSettings {
    /// Off by default: then there is no admin namespace at all.
    pub enabled: bool,
    /// The admin namespace (`instrument()`'s `namespaceName`).
    pub namespace: String,
    /// Whether a login is required (`auth: false` in `instrument()` when
    /// not): dangerous, anyone who reaches the listener controls sockets.
    pub auth: bool,
    /// The login's user name.
    pub username: String,
    /// The bcrypt hash of the login's password; no default.
    pub password_hash: String,
    /// Only the event stream: join, leave and disconnect are refused.
    pub read_only: bool,
    /// Where the embedded UI is served on the admin listener (empty: not
    /// served).
    pub path: String,
    /// The name this node has in the UI's server list (empty:
    /// `server.node_name#pid`).
    pub server_id: String,
    /// How often each node reports its figures (`server_stats`), in ms.
    pub stats_interval_ms: u64,
    /// Most socket, room and event updates this node sends to the UI per
    /// second; the rest are dropped and counted.
    pub max_events_per_second: u32,
    /// Most sockets listed to a UI that logs in (`all_sockets`).
    pub max_listed_sockets: usize,
    /// How long a login's session id stays valid, in seconds.
    pub session_ttl_s: u64,
}

/// `[recovery]`: connection state recovery (Socket.IO 4.6+'s
/// `connectionStateRecovery`), see docs/recovery.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySettings {
    /// Off by default: every event of a recovering namespace gets its
    /// offset as an extra last argument, which clients without recovery
    /// (python-socketio, …) hand to their handlers.
    pub enabled: bool,
    /// The namespaces with recovery (each one of `socketio.namespaces`).
    pub namespaces: Vec<String>,
    /// Longest disconnection after which a client still recovers, in ms
    /// (Node.js `maxDisconnectionDuration`).
    pub max_disconnection_ms: u64,
    /// Verify a recovering client's token again (Node.js skips its
    /// middlewares on recovery by default: `skipMiddlewares: true`).
    pub verify_token: bool,
    /// Bytes of broadcasts this node keeps for recovery; the oldest go
    /// first beyond it.
    pub max_log_bytes: usize,
    /// Disconnected sessions this node keeps (single node, classic and
    /// sharded modes; `streams` mode keeps them in Redis).
    pub max_sessions: usize,
    /// `streams` mode: how often a connected socket's session is written
    /// to Redis again, in ms, so a node killed outright leaves its sockets'
    /// sessions behind for as long as `max_disconnection_ms` after the last
    /// write.
    pub refresh_ms: u64,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// `host:port` of the internal listener for `/metrics`, `/dashboard` and
    /// `/api/v1` (and health); empty = they are served on the public one.
    pub address: String,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// New sessions per second per client address; 0 = no limit.
    pub handshakes_per_second: u32,
    /// Sessions a client address may open at once on top of the rate.
    pub handshake_burst: u32,
    /// Open sessions per client address; 0 = no limit.
    pub connections_per_ip: u32,
    /// Addresses and ranges the per-address limits skip.
    pub exempt: Vec<String>,
    /// Longest request target.
    pub max_url_len: usize,
    /// Largest request head (header names and values).
    pub max_header_bytes: usize,
    /// Time to send a request head, in ms.
    pub request_head_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this many ms.
    pub keep_alive_ms: u64,
    /// Time a polling POST body may take, in ms.
    pub body_timeout_ms: u64,
    /// Engine.IO messages per second per connection; 0 = no limit.
    pub packets_per_second: u32,
    /// Burst on top of `packets_per_second`.
    pub packets_burst: u32,
    /// Bytes per second per connection; 0 = no limit.
    pub bytes_per_second: u64,
    /// Burst on top of `bytes_per_second`.
    pub bytes_burst: u64,
    /// Refusals before a connection is closed.
    pub refused_before_close: u32,
    /// Audit rows a client may cause per second per node (see default.toml).
    pub audit_rows_per_second: u32,
    /// Audit rows one connection may cause while it stays open.
    pub audit_rows_per_connection: u32,
    /// Bytes of incomplete client input the node holds at most.
    pub input_budget_bytes: u64,
    /// Time for a Socket.IO packet's attachments to arrive, in ms.
    pub attachment_timeout_ms: u64,
    /// Publishes one connection may have waiting on the broker at once.
    pub publish_window: usize,
    /// Their encoded bytes.
    pub publish_window_bytes: usize,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite:<file>` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Longest wait for a connection or a statement, in ms; longer counts as down.
    pub timeout_ms: u64,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Rows waiting for the writer before they go to the spill file.
    pub queue: usize,
    /// Rows per insert.
    pub batch_size: usize,
    /// Longest a row waits for its batch, in ms.
    pub flush_interval_ms: u64,
    /// Pause between attempts while the database is down, in ms.
    pub retry_interval_ms: u64,
    /// The spill file (JSON lines); `{host}` stands for the host name.
    pub spill_file: String,
    /// Bytes every spill file together may hold (the append file, the
    /// replay file and the files set aside); beyond it rows are dropped
    /// (counted), so one cap bounds the disk the audit log can take.
    pub spill_max_bytes: u64,
    /// When appended rows are forced to the disk (see default.toml for the
    /// cost of each policy and what a power loss takes with it).
    pub spill_fsync: SpillFsync,
    /// Longest the shutdown waits for the database after the drain, in ms;
    /// what it has not taken by then goes to the spill file. The shutdown
    /// bound is `server.drain_window_ms` plus this.
    pub shutdown_flush_ms: u64,
    /// Days rows are kept; 0 = forever.
    pub retention_days: u64,
    /// Seconds between retention runs.
    pub prune_interval_s: u64,
    /// Record every disconnect (kind `disconnect`).
    pub record_disconnects: bool,
    /// Record every refused handshake (kind `handshake_refused`).
    pub record_handshake_refusals: bool,
}

impl ClusterSettings {
    /// `advertise_address` with `{host}` replaced by this machine's host
    /// name and port 0 by `bound`: one setting serves every replica.
    pub fn advertised(&self, bound: u16) -> String {
        let address = self.advertise_address.trim().replace("{host}", &host_name());
        match address.strip_suffix(":0") {
            Some(host) => format!("{host}:{bound}"),
            None => address,
        }
    }
}

impl AuditSettings {
    /// `spill_file` with `{host}` replaced by this machine's host name: one
    /// setting gives every replica sharing a volume a file of its own (a
    /// spill file is one process's; [`crate::audit::spill::Spill::open`]
    /// refuses one that another process holds).
    pub fn spill_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.spill_file.replace("{host}", &host_name()))
    }
}

/// `audit.spill_fsync`: when rows appended to the spill file are forced to
/// the disk. A crash of the process alone (SIGKILL, OOM) loses nothing
/// appended whatever the policy: the kernel holds it; this is about a crash
/// of the machine or a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpillFsync {
    /// After every append, on the appending thread (a connection's, when
    /// the queue is full).
    Always,
    /// After every batch the writer appends; rows connections append when
    /// the queue is full are forced at the writer's next tick
    /// (`audit.flush_interval_ms`).
    Batch,
    /// Never: the kernel writes back when it likes (about 30 s on Linux).
    Never,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL, empty = single node; `rediss://` for TLS, with the ACL
    /// user and password in it (`rediss://user:password@host:port/db`).
    pub url: String,
    /// PEM file of the CA that signed the Redis servers' certificates
    /// (`rediss://`); empty = the public web roots built in.
    pub tls_ca_file: String,
    /// Channel prefix.
    pub key: String,
    /// Command timeout in ms.
    pub command_timeout_ms: u64,
    /// Reconnect backoff cap in ms.
    pub reconnect_max_ms: u64,
    /// Publish queue length.
    pub queue: usize,
    /// Cluster-wide request timeout in ms.
    pub requests_timeout_ms: u64,
    /// `classic` (PUBLISH/PSUBSCRIBE), `sharded` (Redis 7 SPUBLISH/SSUBSCRIBE)
    /// or `streams` (`@socket.io/redis-streams-adapter`: XADD/XREAD).
    pub mode: RedisMode,
    /// Sharded mode: `dynamic` (a channel per public room) or `static`.
    pub subscription_mode: SubscriptionMode,
    /// Sharded mode: `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Streams mode: the stream's name (the streams adapter's `streamName`).
    pub stream_name: String,
    /// Streams mode: streams the namespaces are spread over (`streamCount`).
    pub stream_count: usize,
    /// Streams mode: entries the stream keeps, trimmed with `MAXLEN ~`
    /// (`maxLen`).
    pub stream_max_len: usize,
    /// Streams mode: entries read per `XREAD` (`readCount`).
    pub stream_read_count: usize,
    /// Streams mode: how long an `XREAD` blocks, in ms (`blockTimeInMs`).
    pub stream_block_ms: u64,
    /// Streams mode: the prefix of the session keys (`sessionKeyPrefix`).
    pub session_key_prefix: String,
}

/// `redis.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// The official adapter's `createAdapter` (and the emitter).
    Classic,
    /// The official adapter's `createShardedAdapter`.
    Sharded,
    /// `@socket.io/redis-streams-adapter`: broadcasts in a Redis stream,
    /// sessions in keys; connection state recovery across nodes.
    Streams,
}

/// `redis.subscription_mode` (the sharded adapter's `subscriptionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionMode {
    /// Two channels per namespace.
    Static,
    /// Two channels per namespace plus one per public room.
    Dynamic,
}

/// `[rooms]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSettings {
    /// Longest room name.
    pub max_name_len: usize,
    /// Rooms per socket.
    pub max_per_socket: usize,
    /// Rooms per namespace.
    pub max_total: usize,
    /// Distinct rooms per namespace for the sockets of one client address; 0 = no quota.
    pub max_per_address: usize,
    /// Distinct rooms per namespace for the sockets of one JWT subject; 0 = no quota.
    pub max_per_user: usize,
    /// Members listed by presence.
    pub presence_limit: usize,
    /// Namespaces with join/leave notifications.
    pub notify_namespaces: Vec<String>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Namespaces without a token requirement.
    pub anonymous_namespaces: Vec<String>,
    /// Anonymous subscribe patterns.
    pub anonymous_subscribe: Vec<String>,
    /// Anonymous publish patterns.
    pub anonymous_publish: Vec<String>,
    /// Pinned JWT algorithm, empty = no tokens.
    pub jwt_algorithm: String,
    /// HS256 secret.
    pub jwt_secret: String,
    /// RS256/ES256 public key file.
    pub jwt_public_key_file: String,
    /// Required audience.
    pub jwt_audience: String,
    /// Required issuer.
    pub jwt_issuer: String,
    /// Clock skew tolerance.
    pub jwt_leeway_s: u64,
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer keys.
    pub keys: Vec<String>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address.
    pub host: String,
    /// Listen port; 0 picks a free one (tests).
    pub port: u16,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Connections the kernel queues before they are accepted.
    pub listen_backlog: u32,
    /// The Socket.IO endpoint path.
    pub path: String,
    /// The raw Engine.IO echo endpoint path, empty = off.
    pub echo_path: String,
    /// The raw WebSocket echo endpoint path (Autobahn|Testsuite), empty = off.
    pub ws_echo_path: String,
    /// Serve the socket.io-client browser bundle (when the build has one).
    pub serve_client: bool,
    /// CORS origins for polling; `*` = any.
    pub cors_allowed_origins: Vec<String>,
    /// Milliseconds a shutdown spreads its disconnects over (and ends within).
    pub drain_window_ms: u64,
    /// Batches the disconnects of a shutdown are sent in.
    pub drain_batches: usize,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Origins that may open sessions; empty = any.
    pub allowed_origins: Vec<String>,
    /// A start with no `allowed_origins` is refused (the production profile).
    pub require_allowed_origins: bool,
    /// Sessions held at once; 0 = from the open-file limit.
    pub max_connections: usize,
    /// This node's name in audit rows, log lines and metrics; empty in the
    /// files = the host name (filled in at load, see [`host_name`]).
    pub node_name: String,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// pingInterval in ms.
    pub ping_interval_ms: u64,
    /// pingTimeout in ms.
    pub ping_timeout_ms: u64,
    /// maxPayload in bytes.
    pub max_payload: usize,
    /// Upgrade timeout in ms.
    pub upgrade_timeout_ms: u64,
    /// Offered transports.
    pub transports: Vec<String>,
    /// Outgoing frames buffered per session before it counts as slow.
    pub max_buffered_packets: usize,
    /// Packets per polling POST.
    pub max_packets_per_payload: usize,
    /// Packets per polling GET's answer (python-engineio refuses more
    /// than 16).
    pub max_packets_per_poll: usize,
}

/// `[socketio]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIoSettings {
    /// Namespaces clients may connect to.
    pub namespaces: Vec<String>,
    /// Time to join a namespace, in ms.
    pub connect_timeout_ms: u64,
    /// Attachments per packet.
    pub max_attachments: usize,
    /// Bytes of one packet's attachments together.
    pub max_attachment_bytes: usize,
    /// Namespace name length.
    pub max_namespace_len: usize,
    /// Namespaces one connection may be in at once.
    pub max_namespaces: usize,
    /// Time a client has to ack a server event, in ms.
    pub ack_timeout_ms: u64,
}

/// `[testing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSettings {
    /// The test hooks (see config/default.toml).
    pub hooks: bool,
}

/// `[websocket]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Accepted subprotocols in order of preference.
    pub subprotocols: Vec<String>,
    /// Microseconds a frame may wait for others bound for the same
    /// WebSocket, to be written together; 0 = written at once.
    pub broadcast_coalesce_us: u64,
    /// Most frames one message may arrive in; 0 = any number.
    pub max_fragments: u32,
    /// Time one message may take to arrive, in ms; 0 = no limit.
    pub message_timeout_ms: u64,
    /// Time a frame may wait for the client to read, in ms; 0 = no limit.
    pub write_timeout_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// EnvFilter directive.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Settings {
    /// Loads defaults, then `profile` if given, then the environment.
    pub fn load(profile: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(profile, None)
    }

    /// Like [`Settings::load`], with `env` standing for the process
    /// environment when given: the deployment files' `ROOMCAST__*`
    /// variables are checked this way without touching the test process's
    /// environment.
    pub fn load_with_env(
        profile: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        Self::from_config(Self::layers(profile, env)?)
    }

    /// The layers merged: defaults, `profile`, the environment (or `env`).
    fn layers(
        profile: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<config::Config, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = profile {
            builder = builder.add_source(profile_source(path)?);
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ROOMCAST")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.cors_allowed_origins")
                .with_list_parse_key("engine.transports")
                .with_list_parse_key("websocket.subprotocols")
                .with_list_parse_key("socketio.namespaces")
                .with_list_parse_key("rooms.notify_namespaces")
                .with_list_parse_key("auth.anonymous_namespaces")
                .with_list_parse_key("auth.anonymous_subscribe")
                .with_list_parse_key("auth.anonymous_publish")
                .with_list_parse_key("api.keys")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("server.allowed_origins")
                .with_list_parse_key("limits.exempt")
                .with_list_parse_key("recovery.namespaces")
                .try_parsing(true)
                .source(env),
        );
        builder.build().map_err(|e| match profile {
            // Parsing the profile is the only step of `build` that can fail
            // on a file: name it (config's own message may not).
            Some(path) if !e.to_string().contains(&path.display().to_string()) => ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            },
            _ => ConfigError::Load(e),
        })
    }

    /// The defaults alone, with overrides applied by the caller (tests).
    pub fn defaults() -> Settings {
        // unwrap: the compiled-in defaults are covered by a unit test.
        Self::from_config(
            config::Config::builder()
                .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
                .build()
                .unwrap(),
        )
        .unwrap()
    }

    fn from_config(cfg: config::Config) -> Result<Settings, ConfigError> {
        Self::typed(cfg, |_| Vec::new()).map_err(ConfigError::of)
    }

    /// Every problem of the merged layers, not only the first: each
    /// section is read on its own (a section that does not parse stands at
    /// its defaults for the checks of the others), then every value is
    /// checked, by this module and by `owners`. What `roomcast config check`
    /// lists.
    fn typed(
        cfg: config::Config,
        owners: impl Fn(&Settings) -> Vec<ConfigError>,
    ) -> Result<Settings, Vec<ConfigError>> {
        let (mut settings, mut errors) = match cfg.clone().try_deserialize::<Settings>() {
            Ok(settings) => (settings, Vec::new()),
            Err(whole) => Self::key_by_key(&cfg, whole)?,
        };
        if settings.server.node_name.is_empty() {
            settings.server.node_name = host_name();
        }
        errors.extend(settings.problems());
        errors.extend(owners(&settings));
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// When the merged layers do not deserialise: every key that does not,
    /// each tried alone over the defaults (serde stops at the first), and
    /// the settings with the other keys applied, for the value checks.
    fn key_by_key(
        cfg: &config::Config,
        whole: config::ConfigError,
    ) -> Result<(Settings, Vec<ConfigError>), Vec<ConfigError>> {
        let defaults =
            || config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let load = |e| vec![ConfigError::Load(e)];
        let top: config::Map<String, config::Value> = cfg.clone().try_deserialize().map_err(load)?;
        let mut keys = Vec::new();
        for (section, value) in top {
            match value.clone().into_table() {
                Ok(table) => keys.extend(table.into_iter().map(|(k, v)| (format!("{section}.{k}"), v))),
                Err(_) => keys.push((section, value)),
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut good = defaults();
        let mut errors = Vec::new();
        for (key, value) in keys {
            let alone = defaults()
                .set_override(key.as_str(), value.clone())
                .and_then(|b| b.build())
                .and_then(config::Config::try_deserialize::<Settings>);
            match alone {
                Ok(_) => good = good.set_override(key.as_str(), value).map_err(load)?,
                Err(e) => errors.push(ConfigError::Load(e)),
            }
        }
        if errors.is_empty() {
            errors.push(ConfigError::Load(whole));
        }
        let settings = good
            .build()
            .and_then(config::Config::try_deserialize::<Settings>)
            .map_err(load)?;
        Ok((settings, errors))
    }

    /// The layers merged, before any type or value is checked: what
    /// `roomcast config show` prints.
    pub fn merged(
        profile: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<serde_json::Value, ConfigError> {
        Ok(Self::layers(profile, env)?.try_deserialize::<serde_json::Value>()?)
    }

    /// Every problem of `profile` and the environment merged over the
    /// defaults, or the settings: this module's checks only.
    pub fn check(
        profile: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, Vec<ConfigError>> {
        Self::check_with(profile, env, |_| Vec::new())
    }

    /// [`Settings::check`], with the checks of the values' owners
    /// (`startup::owner_problems`), all listed together: `roomcast config
    /// check`.
    pub fn check_with(
        profile: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
        owners: impl Fn(&Settings) -> Vec<ConfigError>,
    ) -> Result<Settings, Vec<ConfigError>> {
        Self::typed(Self::layers(profile, env).map_err(|e| vec![e])?, owners)
    }

    /// Every value that parses but makes no sense on its own, each naming
    /// its key and what would be valid. What only an owner can tell (a key
    /// file that does not read, a URL its client refuses, an address range)
    /// the owner reports where `startup` builds it;
    /// [`Settings::validate`] (defined there) runs both.
    pub fn problems(&self) -> Vec<ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        let mut errors = Vec::new();
        if self.server.require_allowed_origins && self.server.allowed_origins.is_empty() {
            errors.push(invalid(
                "server.allowed_origins",
                "is empty, and server.require_allowed_origins (the production profile) requires the sites whose \
                 pages may connect, e.g. ROOMCAST__SERVER__ALLOWED_ORIGINS=https://app.example.com",
            ));
        }
        let admin = self.admin.address.trim();
        if !admin.is_empty() && admin.parse::<std::net::SocketAddr>().is_err() {
            errors.push(invalid(
                "admin.address",
                format!("{admin:?} is not an address and port like \"0.0.0.0:9090\" (empty = no admin listener)"),
            ));
        }
        let e = &self.engine;
        if e.ping_interval_ms == 0 {
            errors.push(invalid("engine.ping_interval_ms", "must be at least 1"));
        }
        if e.ping_timeout_ms == 0 {
            errors.push(invalid("engine.ping_timeout_ms", "must be at least 1"));
        }
        if e.upgrade_timeout_ms == 0 {
            errors.push(invalid("engine.upgrade_timeout_ms", "must be at least 1"));
        }
        if e.max_payload < 16 {
            errors.push(invalid("engine.max_payload", "must be at least 16 bytes"));
        }
        if e.max_buffered_packets == 0 {
            errors.push(invalid("engine.max_buffered_packets", "must be at least 1"));
        }
        if e.max_packets_per_poll == 0 {
            errors.push(invalid("engine.max_packets_per_poll", "must be at least 1"));
        }
        if e.max_packets_per_payload == 0 {
            errors.push(invalid("engine.max_packets_per_payload", "must be at least 1"));
        }
        if e.transports.is_empty() {
            errors.push(invalid("engine.transports", "lists no transport"));
        }
        for t in &e.transports {
            if t != "polling" && t != "websocket" {
                errors.push(invalid(
                    "engine.transports",
                    format!("unknown transport {t:?} (expected \"polling\" or \"websocket\")"),
                ));
            }
        }
        for (key, path) in [
            ("server.path", &self.server.path),
            ("server.echo_path", &self.server.echo_path),
            ("server.ws_echo_path", &self.server.ws_echo_path),
        ] {
            let disabled = path.is_empty() && key != "server.path";
            let well_formed = path.starts_with('/') && path.ends_with('/');
            if !(disabled || well_formed) {
                errors.push(invalid(key, format!("{path:?} must start and end with '/'")));
            }
        }
        let sio = &self.socketio;
        if sio.namespaces.is_empty() {
            errors.push(invalid("socketio.namespaces", "lists no namespace"));
        }
        for name in &sio.namespaces {
            if !crate::socketio::is_valid_namespace(name) || name.len() > sio.max_namespace_len {
                errors.push(invalid(
                    "socketio.namespaces",
                    format!("{name:?}: a namespace starts with '/', has no comma and at most socketio.max_namespace_len bytes"),
                ));
            }
        }
        if sio.connect_timeout_ms == 0 {
            errors.push(invalid("socketio.connect_timeout_ms", "must be at least 1"));
        }
        if sio.ack_timeout_ms == 0 {
            errors.push(invalid("socketio.ack_timeout_ms", "must be at least 1"));
        }
        if self.rooms.max_name_len == 0 {
            errors.push(invalid("rooms.max_name_len", "must be at least 1"));
        }
        if self.limits.publish_window == 0 {
            errors.push(invalid("limits.publish_window", "must be at least 1"));
        }
        if self.limits.publish_window_bytes == 0 {
            errors.push(invalid("limits.publish_window_bytes", "must be at least 1"));
        }
        if self.rooms.max_per_socket == 0 {
            errors.push(invalid("rooms.max_per_socket", "must be at least 1"));
        }
        let rec = &self.recovery;
        if rec.enabled {
            if rec.max_disconnection_ms == 0 {
                errors.push(invalid("recovery.max_disconnection_ms", "must be at least 1"));
            }
            if rec.refresh_ms == 0 {
                errors.push(invalid("recovery.refresh_ms", "must be at least 1"));
            }
            for name in &rec.namespaces {
                if !sio.namespaces.contains(name) {
                    errors.push(invalid(
                        "recovery.namespaces",
                        format!("{name:?} is not one of socketio.namespaces"),
                    ));
                }
            }
        }
        if !self.cluster.sticky {
            if self.redis.url.trim().is_empty() {
                errors.push(invalid(
                    "cluster.sticky",
                    "false needs redis.url: the nodes find each other's addresses in Redis",
                ));
            }
            let address = self.cluster.advertise_address.trim();
            let port = address.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok()
            });
            if port.is_none() {
                errors.push(invalid(
                    "cluster.advertise_address",
                    format!(
                        "{address:?} is not host:port; with cluster.sticky = false each node needs the address \
                         the others reach it at, e.g. ROOMCAST__CLUSTER__ADVERTISE_ADDRESS=10.0.0.5:9090"
                    ),
                ));
            }
        }
        if self.cluster.max_forwarded == 0 {
            errors.push(invalid("cluster.max_forwarded", "must be at least 1"));
        }
        if self.cluster.forward_connect_ms == 0 {
            errors.push(invalid("cluster.forward_connect_ms", "must be at least 1"));
        }
        if self.cluster.heartbeat_ms == 0 {
            errors.push(invalid("cluster.heartbeat_ms", "must be at least 1"));
        }
        if self.cluster.node_ttl_ms <= self.cluster.heartbeat_ms {
            errors.push(invalid(
                "cluster.node_ttl_ms",
                "must be more than cluster.heartbeat_ms (a node would expire between its heartbeats)",
            ));
        }
        errors.extend(self.admin_ui_problems());
        if self.redis.mode == RedisMode::Streams {
            let r = &self.redis;
            if r.stream_name.is_empty() {
                errors.push(invalid("redis.stream_name", "must not be empty"));
            }
            if r.stream_count == 0 {
                errors.push(invalid("redis.stream_count", "must be at least 1"));
            }
            if r.stream_max_len == 0 || r.stream_read_count == 0 {
                errors.push(invalid(
                    "redis.stream_max_len",
                    "redis.stream_max_len and redis.stream_read_count must be at least 1",
                ));
            }
            if r.stream_block_ms == 0 {
                // XREAD BLOCK 0 waits for ever: a hung Redis would go unseen.
                errors.push(invalid("redis.stream_block_ms", "must be at least 1"));
            }
        }
        if self.redis.key.is_empty() || self.redis.key.contains('#') {
            errors.push(invalid("redis.key", "must be non-empty and without '#'"));
        }
        if self.redis.command_timeout_ms == 0 || self.redis.queue == 0 {
            errors.push(invalid(
                "redis.command_timeout_ms",
                "timeouts and queue must be at least 1",
            ));
        }
        if self.redis.cluster && self.redis.mode != RedisMode::Sharded {
            errors.push(invalid(
                "redis.cluster",
                "a Redis Cluster needs redis.mode = \"sharded\" (classic pub/sub does not shard)",
            ));
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            errors.push(invalid("api.keys", "every key must be at least 16 characters"));
        }
        let l = &self.limits;
        if l.handshakes_per_second > 0 && l.handshake_burst == 0 {
            errors.push(invalid("limits.handshake_burst", "must be at least 1"));
        }
        if l.packets_per_second > 0 && l.packets_burst == 0 {
            errors.push(invalid("limits.packets_burst", "must be at least 1"));
        }
        if l.bytes_per_second > 0 && l.bytes_burst < e.max_payload as u64 {
            errors.push(invalid(
                "limits.bytes_burst",
                "must be at least engine.max_payload (one largest message must be able to pass)",
            ));
        }
        if l.max_url_len == 0 || l.max_header_bytes == 0 {
            errors.push(invalid(
                "limits.max_url_len",
                "limits.max_url_len and max_header_bytes must be at least 1",
            ));
        }
        if l.request_head_timeout_ms == 0 || l.keep_alive_ms == 0 || l.body_timeout_ms == 0 {
            errors.push(invalid(
                "limits.request_head_timeout_ms",
                "limits.request_head_timeout_ms, keep_alive_ms and body_timeout_ms must be at least 1",
            ));
        }
        if sio.max_namespaces == 0 {
            errors.push(invalid("socketio.max_namespaces", "must be at least 1"));
        }
        if self.database.max_connections == 0 || self.database.timeout_ms == 0 {
            errors.push(invalid(
                "database.max_connections",
                "database.max_connections and database.timeout_ms must be at least 1",
            ));
        }
        let a = &self.audit;
        if a.queue == 0 || a.batch_size == 0 || a.flush_interval_ms == 0 || a.retry_interval_ms == 0 {
            errors.push(invalid(
                "audit.queue",
                "audit.queue, batch_size, flush_interval_ms and retry_interval_ms must be at least 1",
            ));
        }
        if a.batch_size > 10_000 {
            errors.push(invalid("audit.batch_size", "at most 10000"));
        }
        if a.spill_file.is_empty() {
            errors.push(invalid("audit.spill_file", "must name a file"));
        }
        if a.prune_interval_s == 0 {
            errors.push(invalid("audit.prune_interval_s", "must be at least 1"));
        }
        if self.server.path == self.server.echo_path {
            errors.push(invalid("server.echo_path", "must differ from server.path"));
        }
        let ws_echo = &self.server.ws_echo_path;
        if !ws_echo.is_empty() && (*ws_echo == self.server.path || *ws_echo == self.server.echo_path) {
            errors.push(invalid(
                "server.ws_echo_path",
                "must differ from server.path and server.echo_path",
            ));
        }
        self.more_problems(&mut errors);
        errors
    }

    /// The `[admin_ui]` settings' own problems (the password hash is
    /// checked by its owner, `adminui`).
    fn admin_ui_problems(&self) -> Vec<ConfigError> {
        let a = &self.admin_ui;
        let mut errors = Vec::new();
        if !a.enabled {
            return errors;
        }
        let mut invalid = |key: &'static str, message: String| errors.push(ConfigError::Invalid { key, message });
        if a.auth && a.password_hash.trim().is_empty() {
            invalid(
                "admin_ui.password_hash",
                "is empty, and admin_ui.enabled requires one (there is no default password): a bcrypt hash, e.g. \
                 ROOMCAST__ADMIN_UI__PASSWORD_HASH=\"$(htpasswd -nbBC 10 '' 'your password' | cut -d: -f2)\" \
                 (or admin_ui.auth = false, which lets anyone who reaches the listener in)"
                    .into(),
            );
        }
        if !a.namespace.starts_with('/') || a.namespace.len() < 2 {
            invalid(
                "admin_ui.namespace",
                format!("{:?} is not a namespace like \"/admin\"", a.namespace),
            );
        } else if self.socketio.namespaces.contains(&a.namespace) {
            invalid(
                "admin_ui.namespace",
                format!(
                    "{:?} is one of socketio.namespaces: the admin namespace must be its own",
                    a.namespace
                ),
            );
        }
        if !a.path.is_empty() && (!a.path.starts_with('/') || !a.path.ends_with('/') || a.path == "/") {
            invalid(
                "admin_ui.path",
                format!(
                    "{:?} is not a path like \"/admin-ui/\" (starting and ending with /; empty = not served)",
                    a.path
                ),
            );
        }
        if a.stats_interval_ms < 100 {
            invalid("admin_ui.stats_interval_ms", "must be at least 100".into());
        }
        if a.max_events_per_second == 0 {
            invalid("admin_ui.max_events_per_second", "must be at least 1".into());
        }
        if a.session_ttl_s == 0 {
            invalid("admin_ui.session_ttl_s", "must be at least 1".into());
        }
        errors
    }

    /// The checks added with `config check` (node name, log level, origins,
    /// namespaces named elsewhere, timeouts).
    fn more_problems(&self, errors: &mut Vec<ConfigError>) {
        let mut invalid = |key: &'static str, message: String| errors.push(ConfigError::Invalid { key, message });
        let name = &self.server.node_name;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > MAX_NODE_NAME || !name.chars().all(name_ok) {
            invalid(
                "server.node_name",
                format!("{name:?}: 1 to {MAX_NODE_NAME} characters of A-Z a-z 0-9 . _ - (empty = the host name)"),
            );
        }
        if self.server.host.trim().is_empty() {
            invalid(
                "server.host",
                "is empty (an address such as \"0.0.0.0\", \"127.0.0.1\", \"::\" or a host name)".into(),
            );
        }
        if self.server.drain_batches == 0 {
            invalid("server.drain_batches", "must be at least 1".into());
        }
        if let Err(message) = check_log_level(&self.log.level) {
            invalid("log.level", message);
        }
        for (key, origins, star) in [
            ("server.cors_allowed_origins", &self.server.cors_allowed_origins, true),
            ("server.allowed_origins", &self.server.allowed_origins, false),
        ] {
            for origin in origins {
                let star_ok = star && origin == "*";
                if !star_ok && !is_origin(origin) {
                    let valid = if star { "\"*\" or " } else { "" };
                    invalid(
                        key,
                        format!("{origin:?} is not an origin ({valid}scheme://host[:port], e.g. \"https://app.example.com\", no path)"),
                    );
                }
            }
        }
        let offered = &self.socketio.namespaces;
        for (key, names) in [
            ("auth.anonymous_namespaces", &self.auth.anonymous_namespaces),
            ("rooms.notify_namespaces", &self.rooms.notify_namespaces),
        ] {
            for name in names.iter().filter(|n| !offered.contains(n)) {
                invalid(
                    key,
                    format!("{name:?} is not in socketio.namespaces (valid: {})", offered.join(", ")),
                );
            }
        }
        for p in &self.websocket.subprotocols {
            let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
            if p.is_empty() || !p.chars().all(token) {
                invalid(
                    "websocket.subprotocols",
                    format!("{p:?} is not a subprotocol token (letters, digits and !#$%&'*+-.^_`|~)"),
                );
            }
        }
        if self.redis.requests_timeout_ms == 0 || self.redis.reconnect_max_ms == 0 {
            invalid(
                "redis.requests_timeout_ms",
                "redis.requests_timeout_ms and reconnect_max_ms must be at least 1".into(),
            );
        }
    }
}

/// `scheme://host[:port]`, as browsers send in `Origin`.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '@']);
    scheme_ok && host_ok
}

/// The `--config` file as a configuration source: TOML, whether its name
/// ends in `.toml` or has no extension at all (`/etc/roomcast/config`);
/// anything else is refused naming the file and the format.
fn profile_source(path: &Path) -> Result<config::File<config::FileSourceFile, config::FileFormat>, ConfigError> {
    let refuse = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    if !path.is_file() {
        let why = if path.exists() {
            "is not a file"
        } else {
            "does not exist"
        };
        return Err(refuse(format!("{why} (--config or ROOMCAST_CONFIG)")));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if !ext.eq_ignore_ascii_case("toml") => Err(refuse(format!(
            "unsupported format \".{ext}\": roomcast reads TOML (a file ending in .toml, or without extension)"
        ))),
        _ => Ok(config::File::from(path).format(config::FileFormat::Toml).required(true)),
    }
}

impl EngineSettings {
    /// The session limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            upgrade_timeout: Duration::from_millis(self.upgrade_timeout_ms),
            max_buffered: self.max_buffered_packets,
            max_per_poll: self.max_packets_per_poll,
        }
    }

    /// Whether a transport is offered.
    pub fn allows(&self, transport: TransportKind) -> bool {
        self.transports.iter().any(|t| t == transport.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_address_names_this_host_and_its_bound_port() {
        let mut c = Settings::defaults().cluster;
        c.advertise_address = " {host}:9090 ".into();
        assert_eq!(c.advertised(4000), format!("{}:9090", host_name()));
        c.advertise_address = "10.0.0.5:0".into();
        assert_eq!(c.advertised(4000), "10.0.0.5:4000");
    }

    #[test]
    fn sticky_false_needs_redis_and_an_address() {
        let mut s = Settings::defaults();
        s.cluster.sticky = false;
        let keys: Vec<_> = s.problems().iter().map(ToString::to_string).collect();
        let named = |key: &str| keys.iter().any(|k| k.contains(&format!("`{key}`")));
        assert!(
            named("cluster.sticky") && named("cluster.advertise_address"),
            "{keys:?}"
        );
        s.redis.url = "redis://127.0.0.1:6379/".into();
        s.cluster.advertise_address = "{host}:9090".into();
        assert!(s.problems().is_empty());
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::defaults();
        assert_eq!(s.server.port, 3000);
        assert_eq!(s.server.path, "/socket.io/");
        assert_eq!(s.engine.ping_interval_ms, 25000);
        assert_eq!(s.engine.max_payload, 1_000_000);
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.server.ws_echo_path, "");
    }

    #[test]
    fn conformance_profile_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/conformance.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.engine.ping_interval_ms, 300);
        assert_eq!(s.engine.ping_timeout_ms, 200);
        assert_eq!(s.server.echo_path, "/engine.io/");
        assert_eq!(s.server.ws_echo_path, "/autobahn/");
    }

    #[test]
    fn databases_are_named_by_where_they_are() {
        assert_eq!(
            postgres_endpoint("postgres://u:pw@db.example:6543/x?sslmode=require"),
            Some(("db.example".into(), 6543))
        );
        assert_eq!(postgres_endpoint("postgresql://db/x"), Some(("db".into(), 5432)));
        assert_eq!(
            postgres_endpoint("postgres://u@[::1]:5433/x"),
            Some(("::1".into(), 5433))
        );
        assert_eq!(postgres_endpoint("postgres://[::1]/x"), Some(("::1".into(), 5432)));
        assert_eq!(postgres_endpoint("sqlite://data/audit.db"), None);
        assert_eq!(location("postgres://u:secret@h:1/d"), "h:1");
        assert_eq!(location("sqlite://data/audit.db?mode=rw"), "data/audit.db");
        assert_eq!(location("redis://:secret@cache:6380/0"), "cache:6380");
        assert_eq!(location("redis://127.0.0.1/"), "127.0.0.1");
    }

    #[test]
    fn log_levels_are_levels() {
        for good in ["info", "WARN", "off", "info,roomcast=debug", "roomcast::conn=trace"] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "", "info,loud", "=debug", "roomcast=chatty"] {
            let message = check_log_level(bad).unwrap_err();
            assert!(message.contains("trace, debug, info, warn, error, off"), "{message}");
        }
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let mut s = Settings::defaults();
        s.log.level = "verbose".into();
        s.engine.ping_interval_ms = 0;
        s.server.node_name = "no spaces".into();
        s.server.allowed_origins = vec!["app.example.com".into()];
        s.rooms.notify_namespaces = vec!["/chat".into()];
        let errors = s.problems();
        let keys: Vec<String> = errors
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => (*key).to_owned(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "engine.ping_interval_ms",
                "server.node_name",
                "log.level",
                "server.allowed_origins",
                "rooms.notify_namespaces"
            ],
            "{errors:?}"
        );
        let all = s.validate().unwrap_err();
        assert_eq!(all.each().len(), 5);
        assert!(all.to_string().starts_with("5 configuration errors"), "{all}");
    }

    #[test]
    fn an_empty_node_name_is_the_host_name() {
        let s = Settings::defaults();
        assert_eq!(s.server.node_name, host_name());
        assert!(!s.server.node_name.is_empty());
    }

    #[test]
    fn type_errors_are_found_key_by_key_with_valid_values() {
        let env = std::collections::HashMap::from([
            ("ROOMCAST__SERVER__PORT".to_owned(), "abc".to_owned()),
            ("ROOMCAST__LOG__FORMAT".to_owned(), "xml".to_owned()),
            ("ROOMCAST__LOG__LEVEL".to_owned(), "verbose".to_owned()),
        ]);
        let errors = Settings::check(None, Some(env)).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].contains("log.format") && text[0].contains("\"text\", \"json\""),
            "{text:#?}"
        );
        assert!(text[1].contains("server.port"), "{text:#?}");
        assert!(text[2].contains("log.level"), "{text:#?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::defaults();
        s.engine.transports = vec!["carrier-pigeon".into()];
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("engine.transports"), "{msg}");

        let mut s = Settings::defaults();
        s.redis.cluster = true;
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("redis.cluster") && msg.contains("sharded"), "{msg}");
        s.redis.mode = RedisMode::Sharded;
        assert!(s.validate().is_ok());

        for path in ["autobahn", "/socket.io/"] {
            let mut s = Settings::defaults();
            s.server.ws_echo_path = path.into();
            let msg = s.validate().unwrap_err().to_string();
            assert!(msg.contains("server.ws_echo_path"), "{msg}");
        }

        let cfg = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .set_override("engine.ping_interval_ms", "soon")
            .unwrap()
            .build()
            .unwrap();
        let err = Settings::from_config(cfg).unwrap_err().to_string();
        assert!(err.contains("engine.ping_interval_ms"), "{err}");
    }
}
