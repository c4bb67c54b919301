//! Typed configuration, read once at start and handed down as sections.
//!
//! Layers, later ones win: `config/default.toml` (compiled in, so the binary
//! runs from any directory), an optional profile file, then environment
//! variables `ROOMCAST__<SECTION>__<KEY>`. Every key has its default and a
//! comment in `config/default.toml`; unknown keys are rejected so a typo does
//! not silently fall back to a default.

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
    /// A file, a variable or a value did not parse.
    #[error("configuration could not be loaded")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `engine.ping_interval_ms`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

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
    /// The spill file (JSON lines).
    pub spill_file: String,
    /// Largest spill file; beyond it rows are dropped (counted).
    pub spill_max_bytes: u64,
    /// Days rows are kept; 0 = forever.
    pub retention_days: u64,
    /// Seconds between retention runs.
    pub prune_interval_s: u64,
    /// Record every disconnect (kind `disconnect`).
    pub record_disconnects: bool,
    /// Record every refused handshake (kind `handshake_refused`).
    pub record_handshake_refusals: bool,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL, empty = single node.
    pub url: String,
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
    /// `classic` (PUBLISH/PSUBSCRIBE) or `sharded` (Redis 7 SPUBLISH/SSUBSCRIBE).
    pub mode: RedisMode,
    /// Sharded mode: `dynamic` (a channel per public room) or `static`.
    pub subscription_mode: SubscriptionMode,
    /// Sharded mode: `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
}

/// `redis.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// The official adapter's `createAdapter` (and the emitter).
    Classic,
    /// The official adapter's `createShardedAdapter`.
    Sharded,
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
    /// Sessions held at once; 0 = from the open-file limit.
    pub max_connections: usize,
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
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = profile {
            builder = builder.add_source(config::File::from(path).required(true));
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
                .try_parsing(true)
                .source(env),
        );
        Self::from_config(builder.build()?)
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
        let settings: Settings = cfg.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        let e = &self.engine;
        if e.ping_interval_ms == 0 {
            return Err(invalid("engine.ping_interval_ms", "must be at least 1"));
        }
        if e.ping_timeout_ms == 0 {
            return Err(invalid("engine.ping_timeout_ms", "must be at least 1"));
        }
        if e.upgrade_timeout_ms == 0 {
            return Err(invalid("engine.upgrade_timeout_ms", "must be at least 1"));
        }
        if e.max_payload < 16 {
            return Err(invalid("engine.max_payload", "must be at least 16 bytes"));
        }
        if e.max_buffered_packets == 0 {
            return Err(invalid("engine.max_buffered_packets", "must be at least 1"));
        }
        if e.max_packets_per_payload == 0 {
            return Err(invalid("engine.max_packets_per_payload", "must be at least 1"));
        }
        if e.transports.is_empty() {
            return Err(invalid("engine.transports", "lists no transport"));
        }
        for t in &e.transports {
            if t != "polling" && t != "websocket" {
                return Err(invalid(
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
                return Err(invalid(key, format!("{path:?} must start and end with '/'")));
            }
        }
        let sio = &self.socketio;
        if sio.namespaces.is_empty() {
            return Err(invalid("socketio.namespaces", "lists no namespace"));
        }
        for name in &sio.namespaces {
            if !crate::socketio::is_valid_namespace(name) || name.len() > sio.max_namespace_len {
                return Err(invalid(
                    "socketio.namespaces",
                    format!("{name:?}: a namespace starts with '/', has no comma and at most socketio.max_namespace_len bytes"),
                ));
            }
        }
        if sio.connect_timeout_ms == 0 {
            return Err(invalid("socketio.connect_timeout_ms", "must be at least 1"));
        }
        if sio.ack_timeout_ms == 0 {
            return Err(invalid("socketio.ack_timeout_ms", "must be at least 1"));
        }
        if self.rooms.max_name_len == 0 {
            return Err(invalid("rooms.max_name_len", "must be at least 1"));
        }
        if self.rooms.max_per_socket == 0 {
            return Err(invalid("rooms.max_per_socket", "must be at least 1"));
        }
        if let Err(message) = crate::auth::Verifier::from_settings(&self.auth) {
            let key = if message.contains("public key") {
                "auth.jwt_public_key_file"
            } else if message.contains("secret") {
                "auth.jwt_secret"
            } else {
                "auth.jwt_algorithm"
            };
            return Err(invalid(key, message));
        }
        if !self.redis.url.is_empty() && redis::Client::open(self.redis.url.as_str()).is_err() {
            return Err(invalid("redis.url", "not a Redis URL (redis://host:port/db)"));
        }
        if self.redis.key.is_empty() || self.redis.key.contains('#') {
            return Err(invalid("redis.key", "must be non-empty and without '#'"));
        }
        if self.redis.command_timeout_ms == 0 || self.redis.queue == 0 {
            return Err(invalid(
                "redis.command_timeout_ms",
                "timeouts and queue must be at least 1",
            ));
        }
        if self.redis.cluster && self.redis.mode != RedisMode::Sharded {
            return Err(invalid(
                "redis.cluster",
                "a Redis Cluster needs redis.mode = \"sharded\" (classic pub/sub does not shard)",
            ));
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            return Err(invalid("api.keys", "every key must be at least 16 characters"));
        }
        if let Err(message) = crate::http::peer::TrustedProxies::parse(&self.server.trusted_proxies) {
            return Err(invalid("server.trusted_proxies", message));
        }
        if let Err(message) = crate::http::peer::TrustedProxies::parse(&self.limits.exempt) {
            return Err(invalid("limits.exempt", message));
        }
        let l = &self.limits;
        if l.handshakes_per_second > 0 && l.handshake_burst == 0 {
            return Err(invalid("limits.handshake_burst", "must be at least 1"));
        }
        if l.packets_per_second > 0 && l.packets_burst == 0 {
            return Err(invalid("limits.packets_burst", "must be at least 1"));
        }
        if l.bytes_per_second > 0 && l.bytes_burst < e.max_payload as u64 {
            return Err(invalid(
                "limits.bytes_burst",
                "must be at least engine.max_payload (one largest message must be able to pass)",
            ));
        }
        if l.max_url_len == 0 || l.max_header_bytes == 0 {
            return Err(invalid(
                "limits.max_url_len",
                "limits.max_url_len and max_header_bytes must be at least 1",
            ));
        }
        if l.request_head_timeout_ms == 0 || l.keep_alive_ms == 0 || l.body_timeout_ms == 0 {
            return Err(invalid(
                "limits.request_head_timeout_ms",
                "limits.request_head_timeout_ms, keep_alive_ms and body_timeout_ms must be at least 1",
            ));
        }
        if sio.max_namespaces == 0 {
            return Err(invalid("socketio.max_namespaces", "must be at least 1"));
        }
        if let Err(e) = crate::audit::store::Backend::of(&self.database.url) {
            return Err(invalid("database.url", e.to_string()));
        }
        if self.database.max_connections == 0 || self.database.timeout_ms == 0 {
            return Err(invalid(
                "database.max_connections",
                "database.max_connections and database.timeout_ms must be at least 1",
            ));
        }
        let a = &self.audit;
        if a.queue == 0 || a.batch_size == 0 || a.flush_interval_ms == 0 || a.retry_interval_ms == 0 {
            return Err(invalid(
                "audit.queue",
                "audit.queue, batch_size, flush_interval_ms and retry_interval_ms must be at least 1",
            ));
        }
        if a.batch_size > 10_000 {
            return Err(invalid("audit.batch_size", "at most 10000"));
        }
        if a.spill_file.is_empty() {
            return Err(invalid("audit.spill_file", "must name a file"));
        }
        if a.prune_interval_s == 0 {
            return Err(invalid("audit.prune_interval_s", "must be at least 1"));
        }
        if self.server.path == self.server.echo_path {
            return Err(invalid("server.echo_path", "must differ from server.path"));
        }
        let ws_echo = &self.server.ws_echo_path;
        if !ws_echo.is_empty() && (*ws_echo == self.server.path || *ws_echo == self.server.echo_path) {
            return Err(invalid(
                "server.ws_echo_path",
                "must differ from server.path and server.echo_path",
            ));
        }
        Ok(())
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
        let err = Settings::from_config(cfg).unwrap_err();
        let cause = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(cause.contains("engine.ping_interval_ms"), "{cause}");
    }
}
