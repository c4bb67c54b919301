//! Prometheus metrics, served at `/metrics` in the Prometheus text format.
//!
//! One [`Metrics`] per server (no global registry, so several servers in one
//! process, as in the tests, keep their own counts). Label sets stay small
//! and bounded: transports, configured namespaces, the eight disconnect
//! reasons; never a room name or an id. The hot paths (events, bytes,
//! deliveries) touch plain atomic counters without labels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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

/// `code="…"`: why a client's event was refused (a fixed set of error-ack codes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error ack's code.
    pub code: &'static str,
}

/// Every metric of a server.
pub struct Metrics {
    registry: Mutex<Registry>,
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
    audit: Mutex<Option<AuditHandle>>,
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
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("roomcast")),
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
            audit: Mutex::new(None),
        };
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
                "redis_connected",
                "1 while subscribed to Redis (0: degraded or single node)",
                m.redis_connected.clone(),
            );
            r.register(
                "redis_published",
                "Broadcasts published to Redis",
                m.redis_published.clone(),
            );
            r.register(
                "redis_received",
                "Broadcasts received from other nodes",
                m.redis_received.clone(),
            );
            r.register("redis_lost", "Cross-node broadcasts lost", m.redis_lost.clone());
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
        }
        m
    }

    /// Reports the Redis adapter's state too.
    pub fn watch_cluster(&self, status: Arc<AdapterStatus>) {
        // unwrap: the lock is only held to set or clone.
        *self.cluster.lock().unwrap() = Some(status);
    }

    /// Reports the bytes of incomplete client input `held` says are held.
    pub fn watch_input(&self, held: Box<dyn Fn() -> u64 + Send + Sync>) {
        // unwrap: the lock is only held to set or read.
        *self.input_held_source.lock().unwrap() = Some(held);
    }

    /// Reports the audit log's queue and spill file too.
    pub fn watch_audit(&self, audit: AuditHandle) {
        // unwrap: the lock is only held to set or read.
        *self.audit.lock().unwrap() = Some(audit);
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
            for (counter, value) in [
                (&self.audit_recorded, &stats.accepted),
                (&self.audit_dropped, &stats.dropped),
                (&self.audit_database_errors, &stats.db_errors),
            ] {
                let now = AuditStats::get(value);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let registry = self.registry.lock().unwrap();
        let mut out = String::new();
        // A String never fails to take text.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
