//! Prometheus metrics, served at `/metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per server (no global registry, so several servers in one
//! process, as in the tests, keep their own counts). Label sets stay small
//! and bounded: transports, configured namespaces, the eight disconnect
//! reasons; never a room name or an id. The hot paths (events, bytes,
//! deliveries) touch plain atomic counters without labels.
//!
//! Every family is in the exposition from the start, each label value it
//! can take at 0 (transports, reasons, limits, error-ack codes, configured
//! namespaces): a query or an alert on a series that does not exist yet
//! sees nothing rather than 0, and `rate()` misses the first event.
//! Exceptions, by design: the `roomcast_redis_*` families exist only on a
//! node with Redis configured (a single node is not "disconnected from
//! Redis": `roomcast_redis_connected 0` there would page someone for
//! nothing), and `roomcast_audit_database_up` only with an audit log.
//!
//! Beside them, unprefixed: `roomcast_build_info{version,node}` (the
//! node's name, `server.node_name`) and the usual `process_*` families
//! (resident and virtual memory, CPU seconds, open and maximum file
//! descriptors, start time), read from `/proc/self` at each scrape, as
//! prometheus-client has no process collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::adapter::AdapterStatus;
use crate::audit::{AuditHandle, AuditStats};

/// `transport="polling"|"websocket"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// The transport.
    pub transport: &'static str,
}

/// `namespace="/…"`: only configured namespaces exist, so the set is bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    /// The namespace.
    pub namespace: String,
}

/// `reason="…"`: one of Socket.IO's eight server-side reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason string.
    pub reason: &'static str,
}

/// `limit="…"`: one of the limits of `[limits]` (a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The limit's name.
    pub limit: &'static str,
}

/// `kind="…",outcome="…"`: a request forwarded to the node that holds its
/// session ([`FORWARD_KINDS`] × [`FORWARD_OUTCOMES`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabel {
    /// `poll_get`, `poll_post` or `upgrade`.
    pub kind: &'static str,
    /// What became of it.
    pub outcome: &'static str,
}

/// `kind="…"`: a forwarded request's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `poll_get`, `poll_post` or `upgrade`.
    pub kind: &'static str,
}

/// What a node forwards: a polling GET, a polling POST, a WebSocket upgrade.
pub const FORWARD_KINDS: [&str; 3] = ["poll_get", "poll_post", "upgrade"];

/// What becomes of a forwarded request: `ok` (the owner answered, with
/// whatever status), `gone` (its node is not alive, or could not be
/// reached: 400 "Session ID unknown"), `failed` (the owner was reached but
/// the exchange broke), `busy` (over `cluster.max_forwarded`: 503).
pub const FORWARD_OUTCOMES: [&str; 4] = ["ok", "gone", "failed", "busy"];

/// `code="…"`: why a client's event was refused (a fixed set of error-ack codes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error ack's code.
    pub code: &'static str,
}

/// `version="…",node="…"` of `roomcast_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate's version.
    pub version: &'static str,
    /// `server.node_name`.
    pub node: String,
}

/// The codes of the error acks counted in `roomcast_invalid_events_total`
/// (`conn::socketio`), declared at 0 from the start.
pub const INVALID_EVENT_CODES: [&str; 4] = ["bad_request", "invalid_event", "invalid_room", "unknown_event"];

/// Why recoveries are refused (`broker::recovery::Refused::code`), declared
/// at 0 from the start.
pub const RECOVERY_REFUSALS: [&str; 6] = ["unknown", "expired", "token", "incomplete", "too_many", "unavailable"];

/// Every metric of a server.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Unprefixed: the `process_*` families.
    process: Registry,
    /// Open Engine.IO sessions by transport.
    pub sessions: Family<TransportLabel, Gauge>,
    /// Connected namespace sockets by namespace.
    pub sockets: Family<NamespaceLabel, Gauge>,
    /// Sessions opened, by the transport they opened on.
    pub handshakes: Family<TransportLabel, Counter>,
    /// Polling sessions upgraded to WebSocket.
    pub upgrades: Counter,
    /// Sessions ended, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Socket.IO packets received.
    pub events_in: Counter,
    /// Socket.IO packets sent (deliveries included).
    pub events_out: Counter,
    /// Bytes received (frames and polling bodies).
    pub bytes_in: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Broadcast deliveries to local sockets.
    pub deliveries: Counter,
    /// From a publish entering the broker to its frame being handed to the
    /// socket, seconds.
    pub publish_to_write: Histogram,
    /// Connections closed because they did not keep up.
    pub slow_consumers: Counter,
    /// Broadcast deliveries dropped because the recipient's queue was full.
    pub deliveries_dropped: Counter,
    /// Times a publisher's connection stopped reading until the broker
    /// caught up (backpressure).
    pub publish_backpressure: Counter,
    /// Requests, messages and sessions refused by a limit.
    pub limit_breaches: Family<LimitLabel, Counter>,
    /// Client events refused with an error ack, by its code.
    pub invalid_events: Family<CodeLabel, Counter>,
    /// Audit rows a client caused that were held back (counted in a summary row instead).
    pub audit_suppressed: Counter,
    /// Requests from other nodes dropped because too many were being served.
    pub cluster_requests_dropped: Counter,
    /// Namespace sockets recovered (connection state recovery).
    pub recoveries: Counter,
    /// Recoveries refused, by reason (`broker::recovery::Refused::code`).
    pub recoveries_refused: Family<CodeLabel, Counter>,
    /// Missed broadcasts replayed to recovered sockets.
    pub recovery_replayed: Counter,
    /// Bytes of broadcasts kept for recovery.
    pub recovery_log_bytes: Gauge,
    /// Disconnected sessions kept on this node.
    pub recovery_sessions: Gauge,
    /// `streams` mode: recovery session writes dropped (registered with
    /// the Redis families, [`Metrics::watch_cluster`]).
    pub cluster_sessions_dropped: Counter,
    input_held: Gauge,
    input_held_source: Mutex<Option<Box<dyn Fn() -> u64 + Send + Sync>>>,
    redis_connected: Gauge,
    redis_published: Counter,
    redis_received: Counter,
    redis_lost: Counter,
    cluster: Mutex<Option<Arc<AdapterStatus>>>,
    audit_queue: Gauge,
    audit_spill: Gauge,
    audit_recorded: Counter,
    audit_dropped: Counter,
    audit_database_errors: Counter,
    audit_spill_torn_lines: Counter,
    audit_spill_unparsable_lines: Counter,
    audit_spill_read_errors: Counter,
    audit_database_up: Gauge,
    audit: Mutex<Option<AuditHandle>>,
    /// Requests forwarded to the node of their session, by kind and outcome.
    pub forwarded: Family<ForwardLabel, Counter>,
    /// Time from forwarding a request to its owner's answer, seconds (a
    /// long-poll's includes its hold).
    pub forward_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// Requests being forwarded now.
    pub forwarded_in_flight: Gauge,
    /// WebSockets relayed to the node of their session now.
    pub relayed_websockets: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("roomcast")),
            process,
            sessions: Family::default(),
            sockets: Family::default(),
            handshakes: Family::default(),
            upgrades: Counter::default(),
            disconnects: Family::default(),
            events_in: Counter::default(),
            events_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            deliveries: Counter::default(),
            // 50 µs … ~1.6 s.
            publish_to_write: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            slow_consumers: Counter::default(),
            deliveries_dropped: Counter::default(),
            publish_backpressure: Counter::default(),
            limit_breaches: Family::default(),
            invalid_events: Family::default(),
            audit_suppressed: Counter::default(),
            cluster_requests_dropped: Counter::default(),
            recoveries: Counter::default(),
            recoveries_refused: Family::default(),
            recovery_replayed: Counter::default(),
            recovery_log_bytes: Gauge::default(),
            recovery_sessions: Gauge::default(),
            cluster_sessions_dropped: Counter::default(),
            input_held: Gauge::default(),
            input_held_source: Mutex::new(None),
            redis_connected: Gauge::default(),
            redis_published: Counter::default(),
            redis_received: Counter::default(),
            redis_lost: Counter::default(),
            cluster: Mutex::new(None),
            audit_queue: Gauge::default(),
            audit_spill: Gauge::default(),
            audit_recorded: Counter::default(),
            audit_dropped: Counter::default(),
            audit_database_errors: Counter::default(),
            audit_spill_torn_lines: Counter::default(),
            audit_spill_unparsable_lines: Counter::default(),
            audit_spill_read_errors: Counter::default(),
            audit_database_up: Gauge::default(),
            audit: Mutex::new(None),
            forwarded: Family::default(),
            // 100 µs … ~105 s (a long-poll is held up to pingInterval).
            forward_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 21))),
            forwarded_in_flight: Gauge::default(),
            relayed_websockets: Gauge::default(),
        };
        for kind in FORWARD_KINDS {
            for outcome in FORWARD_OUTCOMES {
                drop(m.forwarded.get_or_create(&ForwardLabel { kind, outcome }));
            }
            drop(m.forward_seconds.get_or_create(&KindLabel { kind }));
        }
        // Every label value that can occur, at 0 from the start.
        for transport in ["polling", "websocket"] {
            drop(m.sessions.get_or_create(&TransportLabel { transport }));
            drop(m.handshakes.get_or_create(&TransportLabel { transport }));
        }
        for reason in crate::reason::DisconnectReason::ALL {
            drop(m.disconnects.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        for limit in crate::reason::Limit::ALL {
            drop(m.limit_breaches.get_or_create(&LimitLabel { limit: limit.as_str() }));
        }
        for code in INVALID_EVENT_CODES {
            drop(m.invalid_events.get_or_create(&CodeLabel { code }));
        }
        for code in RECOVERY_REFUSALS {
            drop(m.recoveries_refused.get_or_create(&CodeLabel { code }));
        }
        {
            // unwrap: the lock is new.
            let mut r = m.registry.lock().unwrap();
            r.register("sessions", "Open Engine.IO sessions by transport", m.sessions.clone());
            r.register("sockets", "Connected namespace sockets by namespace", m.sockets.clone());
            r.register("handshakes", "Engine.IO sessions opened", m.handshakes.clone());
            r.register(
                "upgrades",
                "Sessions upgraded from polling to WebSocket",
                m.upgrades.clone(),
            );
            r.register("disconnects", "Sessions ended, by reason", m.disconnects.clone());
            r.register("events_in", "Socket.IO packets received", m.events_in.clone());
            r.register("events_out", "Socket.IO packets sent", m.events_out.clone());
            r.register_with_unit("received", "Bytes received", Unit::Bytes, m.bytes_in.clone());
            r.register_with_unit("sent", "Bytes sent", Unit::Bytes, m.bytes_out.clone());
            r.register(
                "deliveries",
                "Broadcast deliveries to local sockets",
                m.deliveries.clone(),
            );
            r.register_with_unit(
                "publish_to_write",
                "From a publish to its frame handed to the socket",
                Unit::Seconds,
                m.publish_to_write.clone(),
            );
            r.register(
                "slow_consumer_closes",
                "Connections closed for not keeping up",
                m.slow_consumers.clone(),
            );
            r.register(
                "deliveries_dropped",
                "Broadcast deliveries dropped because the recipient's queue was full (the server was behind)",
                m.deliveries_dropped.clone(),
            );
            r.register(
                "publish_backpressure",
                "Times a connection stopped reading because its publishes were waiting on the broker (TCP pushes back on the publisher)",
                m.publish_backpressure.clone(),
            );
            r.register(
                "limit_breaches",
                "Requests, messages and sessions refused by a limit of [limits] (and the WebSocket message and write timeouts)",
                m.limit_breaches.clone(),
            );
            r.register(
                "invalid_events",
                "Client events refused with an error ack (unknown event, bad request, invalid room or event name), by code",
                m.invalid_events.clone(),
            );
            r.register(
                "audit_suppressed",
                "Audit rows a client caused that were held back by audit_rows_per_connection or audit_rows_per_second (summarised in one row with the count)",
                m.audit_suppressed.clone(),
            );
            r.register_with_unit(
                "input_held",
                "Client input held before it is complete (attachments, WebSocket messages not yet taken, polling bodies being read), node-wide; bounded by limits.input_budget_bytes",
                Unit::Bytes,
                m.input_held.clone(),
            );
            r.register(
                "cluster_requests_dropped",
                "Requests from other nodes (fetch, join, leave, disconnect) dropped because too many were being served",
                m.cluster_requests_dropped.clone(),
            );
            r.register(
                "recoveries",
                "Namespace sockets recovered after a disconnection (connection state recovery)",
                m.recoveries.clone(),
            );
            r.register(
                "recoveries_refused",
                "Recoveries refused (a fresh session given instead), by reason: unknown session, expired, token, incomplete log, too many missed, store unavailable",
                m.recoveries_refused.clone(),
            );
            r.register(
                "forwarded_requests",
                "Requests for another node's session forwarded to it (cluster.sticky = false), by kind and outcome",
                m.forwarded.clone(),
            );
            r.register_with_unit(
                "forward",
                "Time from forwarding a request to the session's node to its answer (a long-poll's includes its hold)",
                Unit::Seconds,
                m.forward_seconds.clone(),
            );
            r.register(
                "forwarded_in_flight",
                "Requests being forwarded to other nodes now (bounded by cluster.max_forwarded)",
                m.forwarded_in_flight.clone(),
            );
            r.register(
                "relayed_websockets",
                "WebSockets relayed to the node of their session now",
                m.relayed_websockets.clone(),
            );
            r.register(
                "recovery_replayed",
                "Missed broadcasts replayed to recovered sockets",
                m.recovery_replayed.clone(),
            );
            r.register_with_unit(
                "recovery_log",
                "Broadcasts kept for recovery on this node (recovery.max_log_bytes bounds it)",
                Unit::Bytes,
                m.recovery_log_bytes.clone(),
            );
            r.register(
                "recovery_sessions",
                "Disconnected sessions kept on this node for recovery (recovery.max_sessions bounds it)",
                m.recovery_sessions.clone(),
            );
            r.register(
                "audit_queue",
                "Audit rows in memory, waiting for the database",
                m.audit_queue.clone(),
            );
            r.register_with_unit(
                "audit_spill",
                "Audit rows waiting in the spill file",
                Unit::Bytes,
                m.audit_spill.clone(),
            );
            r.register("audit_recorded", "Audit events accepted", m.audit_recorded.clone());
            r.register(
                "audit_dropped",
                "Audit events lost (spill file full)",
                m.audit_dropped.clone(),
            );
            r.register(
                "audit_database_errors",
                "Failed writes to the audit database",
                m.audit_database_errors.clone(),
            );
            r.register(
                "audit_spill_torn_lines",
                "Torn last lines of a spill file (a crash or a full disk mid-write) set aside at start",
                m.audit_spill_torn_lines.clone(),
            );
            r.register(
                "audit_spill_unparsable_lines",
                "Spill file lines that do not parse, set aside during replay",
                m.audit_spill_unparsable_lines.clone(),
            );
            r.register(
                "audit_spill_read_errors",
                "Errors reading the spill file during replay (retried)",
                m.audit_spill_read_errors.clone(),
            );
        }
        m
    }

    /// The metrics of a node named `node` (`server.node_name`), with
    /// `roomcast_build_info`.
    pub fn for_node(node: &str) -> Self {
        let m = Self::new();
        let info = Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            node: node.to_owned(),
        });
        // unwrap: the lock is only held to register or encode.
        m.registry.lock().unwrap().register(
            "build",
            "The running build and the node's name (server.node_name)",
            info,
        );
        m
    }

    /// Registers a metric of a module above this one (the Admin UI's),
    /// named `roomcast_<name>`.
    pub fn register_extra(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        // unwrap: the lock is only held to register or encode.
        self.registry.lock().unwrap().register(name, help, metric);
    }

    /// The namespaces clients may join (`socketio.namespaces`): their
    /// `roomcast_sockets` series exist, at 0, from the start.
    pub fn declare_namespaces(&self, namespaces: &[String]) {
        for namespace in namespaces {
            drop(self.sockets.get_or_create(&NamespaceLabel {
                namespace: namespace.clone(),
            }));
        }
    }

    /// Reports the Redis adapter's state too: the `roomcast_redis_*`
    /// families exist from here on, only on a node with Redis configured.
    pub fn watch_cluster(&self, status: Arc<AdapterStatus>) {
        // unwrap: the locks are only held to set, clone, register or encode.
        *self.cluster.lock().unwrap() = Some(status);
        let mut r = self.registry.lock().unwrap();
        r.register(
            "redis_connected",
            "1 while subscribed to Redis, 0 while reconnecting (only where redis.url is set)",
            self.redis_connected.clone(),
        );
        r.register(
            "redis_published",
            "Broadcasts published to Redis",
            self.redis_published.clone(),
        );
        r.register(
            "redis_received",
            "Broadcasts received from other nodes",
            self.redis_received.clone(),
        );
        r.register("redis_lost", "Cross-node broadcasts lost", self.redis_lost.clone());
        r.register(
            "cluster_sessions_dropped",
            "Connection state recovery sessions (redis.mode = \"streams\") not written to or deleted from Redis: queue full, or Redis failed",
            self.cluster_sessions_dropped.clone(),
        );
    }

    /// Reports the bytes of incomplete client input `held` says are held.
    pub fn watch_input(&self, held: Box<dyn Fn() -> u64 + Send + Sync>) {
        // unwrap: the lock is only held to set or read.
        *self.input_held_source.lock().unwrap() = Some(held);
    }

    /// Reports the audit log's queue, spill file and database too.
    pub fn watch_audit(&self, audit: AuditHandle) {
        // unwrap: the locks are only held to set, read, register or encode.
        *self.audit.lock().unwrap() = Some(audit);
        self.registry.lock().unwrap().register(
            "audit_database_up",
            "1 while the audit database took the writer's last write (or the migrations at start), 0 while it is retried and rows spill",
            self.audit_database_up.clone(),
        );
    }

    /// A session opened on `transport`.
    pub fn session_opened(&self, transport: &'static str) {
        self.handshakes.get_or_create(&TransportLabel { transport }).inc();
        self.sessions.get_or_create(&TransportLabel { transport }).inc();
    }

    /// A session moved from polling to WebSocket.
    pub fn session_upgraded(&self) {
        self.upgrades.inc();
        self.sessions
            .get_or_create(&TransportLabel { transport: "polling" })
            .dec();
        self.sessions
            .get_or_create(&TransportLabel { transport: "websocket" })
            .inc();
    }

    /// A session on `transport` ended with `reason`.
    pub fn session_closed(&self, transport: &'static str, reason: &'static str) {
        self.sessions.get_or_create(&TransportLabel { transport }).dec();
        self.disconnects.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A limit refused something.
    pub fn limit_breach(&self, limit: &'static str) {
        self.limit_breaches.get_or_create(&LimitLabel { limit }).inc();
    }

    /// A client event refused with the error ack `code`.
    pub fn invalid_event(&self, code: &'static str) {
        self.invalid_events.get_or_create(&CodeLabel { code }).inc();
    }

    /// A namespace socket joined (`+1`) or left (`-1`).
    pub fn socket(&self, namespace: &str, delta: i64) {
        self.sockets
            .get_or_create(&NamespaceLabel {
                namespace: namespace.to_owned(),
            })
            .inc_by(delta);
    }

    /// Records a publish-to-write delay.
    pub fn observe_delivery(&self, delay: Duration) {
        self.publish_to_write.observe(delay.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        // unwrap: the locks are only held to read or encode.
        if let Some(status) = self.cluster.lock().unwrap().as_ref() {
            use std::sync::atomic::Ordering::Relaxed;
            self.redis_connected.set(i64::from(status.connected.load(Relaxed)));
            for (counter, value) in [
                (&self.redis_published, &status.published),
                (&self.redis_received, &status.received),
                (&self.redis_lost, &status.lost),
                (&self.cluster_requests_dropped, &status.requests_dropped),
                (&self.cluster_sessions_dropped, &status.sessions_dropped),
            ] {
                let now = value.load(Relaxed);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        if let Some(held) = self.input_held_source.lock().unwrap().as_ref() {
            self.input_held.set(i64::try_from(held()).unwrap_or(i64::MAX));
        }
        if let Some(audit) = self.audit.lock().unwrap().as_ref() {
            let stats = audit.stats();
            self.audit_queue.set(AuditStats::get(&stats.in_memory) as i64);
            self.audit_spill.set(audit.spill_bytes() as i64);
            let down = stats.database_down.load(std::sync::atomic::Ordering::Relaxed);
            self.audit_database_up.set(i64::from(!down));
            for (counter, value) in [
                (&self.audit_recorded, &stats.accepted),
                (&self.audit_dropped, &stats.dropped),
                (&self.audit_database_errors, &stats.db_errors),
                (&self.audit_spill_torn_lines, &stats.spill_torn_lines),
                (&self.audit_spill_unparsable_lines, &stats.spill_unparsable_lines),
                (&self.audit_spill_read_errors, &stats.spill_read_errors),
            ] {
                let now = AuditStats::get(value);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let registry = self.registry.lock().unwrap();
        let mut out = String::new();
        // A String never fails to take text.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.process);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// The `process_*` families, read from `/proc/self` at each scrape (the
/// names and meanings of the Prometheus client libraries' process
/// collectors). A value that cannot be read is left out.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, 100 on
/// every Linux architecture's user-space ABI.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessReading {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessReading {
    fn read() -> ProcessReading {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let mut reading = Self::parse(&status, &stat, &boot, &limits);
        reading.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        reading
    }

    /// From the texts of `/proc/self/status`, `/proc/self/stat`,
    /// `/proc/stat` and `/proc/self/limits`.
    fn parse(status: &str, stat: &str, boot: &str, limits: &str) -> ProcessReading {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        // The fields after the command name, which may hold spaces and
        // parentheses: utime is the 14th field of the line, stime the 15th,
        // starttime (ticks after boot) the 22nd.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = ticks(11).zip(ticks(12)).map(|(u, s)| (u + s) as f64 / USER_HZ);
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let start_time_seconds = boot_time.zip(ticks(19)).map(|(b, t)| b as f64 + t as f64 / USER_HZ);
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        ProcessReading {
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            cpu_seconds,
            start_time_seconds,
            open_fds: None,
            max_fds,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = ProcessReading::read();
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 5] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                r.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                r.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                r.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                r.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "The open-file limit (soft)",
                None,
                r.max_fds.map(|v| v as f64),
            ),
        ];
        if let Some(cpu) = r.cpu_seconds {
            let unit = Unit::Seconds;
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&unit),
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(metric)?;
        }
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_come_from_proc() {
        let status = "Name:\troomcast\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        // A command name with spaces and a parenthesis.
        let stat = "42 (room cast) x) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 500 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n";
        let r = ProcessReading::parse(status, stat, boot, limits);
        assert_eq!(
            r,
            ProcessReading {
                resident_bytes: Some(1024 * 1024),
                virtual_bytes: Some(2048 * 1024),
                cpu_seconds: Some(2.0),
                start_time_seconds: Some(1_700_000_005.0),
                open_fds: None,
                max_fds: Some(1024),
            }
        );
        assert_eq!(ProcessReading::parse("", "", "", ""), ProcessReading::default());
        let live = ProcessReading::read();
        assert!(
            live.resident_bytes.unwrap() > 0 && live.open_fds.unwrap() > 0,
            "{live:?}"
        );
    }

    #[test]
    fn redis_families_only_with_redis() {
        let m = Metrics::for_node("n1");
        let text = m.render();
        assert!(!text.contains("redis"), "{text}");
        assert!(
            text.contains("roomcast_build_info{version=\"0.1.0\",node=\"n1\"} 1"),
            "{text}"
        );
        m.watch_cluster(Arc::new(AdapterStatus::default()));
        assert!(m.render().contains("\nroomcast_redis_connected 0\n"));
    }

    #[test]
    fn renders_counters_with_small_label_sets() {
        let m = Metrics::new();
        m.session_opened("polling");
        m.session_upgraded();
        m.session_closed("websocket", "transport close");
        m.socket("/", 1);
        m.events_in.inc();
        m.observe_delivery(Duration::from_micros(300));
        let text = m.render();
        for line in [
            "roomcast_handshakes_total{transport=\"polling\"} 1",
            "roomcast_upgrades_total 1",
            "roomcast_sessions{transport=\"websocket\"} 0",
            "roomcast_sessions{transport=\"polling\"} 0",
            "roomcast_disconnects_total{reason=\"transport close\"} 1",
            "roomcast_sockets{namespace=\"/\"} 1",
            "roomcast_events_in_total 1",
            "roomcast_publish_to_write_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
