//! What one client may cost (`[limits]`): new sessions per second and open
//! sessions per client address, messages and bytes per second per
//! connection, and the record every breach leaves.
//!
//! Every refusal is counted in `roomcast_limit_breaches_total{limit}`; an
//! audit row of kind `limit_exceeded` is written for it too, at most
//! `limits.audit_rows_per_second` of them per node, so that a flood of
//! refusals cannot turn into a flood of rows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::{AuditEvent, AuditHandle, AuditKind, AuditReason};
use crate::config::LimitSettings;
use crate::metrics::Metrics;
use crate::net::IpRanges;

pub use crate::reason::Limit;

impl Limit {
    /// The audit reason: the label, and 301 + its place in [`Limit::ALL`].
    pub fn reason(self) -> AuditReason {
        let n = Self::ALL.iter().position(|l| *l == self).unwrap_or_default();
        AuditReason {
            name: self.as_str(),
            code: 301 + n as u16,
        }
    }
}

/// The node's budget for client input held before it is complete
/// (`limits.input_budget_bytes`): attachments waiting for their binary
/// frames, WebSocket messages partly received, polling bodies being read.
///
/// Every such buffer is bounded on its own (`max_payload`,
/// `max_attachment_bytes`), but a client may open many connections and park
/// an incomplete message on each: 100 sockets holding 3 MB of attachments
/// each were 333 MiB of RSS. The budget bounds the sum; whoever would take
/// it past its limit is refused (and closes its connection), while what is
/// already held stays accepted.
#[derive(Debug)]
pub struct InputBudget {
    max: usize,
    held: std::sync::atomic::AtomicUsize,
}

/// Taking more would go past `limits.input_budget_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node holds too much incomplete input (limits.input_budget_bytes = {0})")]
pub struct OverBudget(pub usize);

impl InputBudget {
    /// A budget of `max` bytes; 0 = no limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: if max == 0 { usize::MAX } else { max },
            held: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Bytes held now, node-wide.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One client's share of the [`InputBudget`] (a packet's attachments, a
/// socket's messages between the wire and the connection), given back on
/// drop. Shared by reference: a WebSocket's reader grows it as bytes come
/// in, its connection shrinks it as it takes them.
#[derive(Debug)]
pub struct Held {
    budget: Arc<InputBudget>,
    bytes: std::sync::atomic::AtomicUsize,
}

impl Held {
    /// Nothing held yet.
    pub fn new(budget: Arc<InputBudget>) -> Self {
        Self {
            budget,
            bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Holds `more` bytes more, unless the node would then hold more than
    /// its budget (then nothing changes).
    pub fn grow(&self, more: usize) -> Result<(), OverBudget> {
        use std::sync::atomic::Ordering::Relaxed;
        if more == 0 {
            return Ok(());
        }
        let max = self.budget.max;
        self.budget
            .held
            .fetch_update(Relaxed, Relaxed, |held| held.checked_add(more).filter(|n| *n <= max))
            .map_err(|_| OverBudget(max))?;
        self.bytes.fetch_add(more, Relaxed);
        Ok(())
    }

    /// Lets go of `less` bytes (at most what is held).
    pub fn shrink(&self, less: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(before) = self
            .bytes
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(less)))
        else {
            return;
        };
        self.budget.held.fetch_sub(before.min(less), Relaxed);
    }

    /// This share now holds `bytes`: shrinking always succeeds, growing as
    /// [`Self::grow`] does.
    pub fn set(&self, bytes: usize) -> Result<(), OverBudget> {
        let now = self.bytes();
        if bytes >= now {
            self.grow(bytes - now)
        } else {
            self.shrink(now - bytes);
            Ok(())
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shrink(usize::MAX);
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many, after refilling.
    pub fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now`.
    pub fn is_full(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= burst
    }

    /// How long until `n` tokens are there.
    pub fn wait_for(&self, n: f64, rate: f64) -> Duration {
        if self.tokens >= n || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((n - self.tokens) / rate)
    }
}

/// A client address as the per-address limits count it: IPv4 as is, IPv6
/// by its /64 (one subscriber's network; a host picks from 2^64 addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 address (or an IPv4-mapped IPv6 one).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(prefix)
                }
            },
        }
    }
}

struct AddressEntry {
    bucket: TokenBucket,
    open: u32,
}

/// A session counted against its client address; dropping it (with the
/// session's connection) gives the place back.
pub struct AddressSlot {
    guards: Arc<Guards>,
    key: AddressKey,
}

impl std::fmt::Debug for AddressSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSlot").field("key", &self.key).finish()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        // unwrap: the lock is only held for map operations.
        let mut table = self.guards.addresses.lock().unwrap();
        if let Some(entry) = table.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// A refusal by a per-address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRefusal {
    /// Which limit.
    pub limit: Limit,
    /// When to try again (the `Retry-After` header), in whole seconds.
    pub retry_after_s: u64,
}

/// The per-connection rate limits, read by each connection.
#[derive(Debug, Clone, Copy)]
pub struct RateSettings {
    packets_per_second: f64,
    packets_burst: f64,
    bytes_per_second: f64,
    bytes_burst: f64,
    /// Refusals before the connection is closed.
    pub refused_before_close: u32,
}

/// One connection's rate limit state.
#[derive(Debug, Clone)]
pub struct ConnectionRate {
    packets: TokenBucket,
    bytes: TokenBucket,
    /// Refusals since the buckets were last full.
    pub refused: u32,
}

impl ConnectionRate {
    /// Full buckets.
    pub fn new(settings: &RateSettings, now: Instant) -> Self {
        Self {
            packets: TokenBucket::full(settings.packets_burst, now),
            bytes: TokenBucket::full(settings.bytes_burst, now),
            refused: 0,
        }
    }

    /// Counts one message of `len` bytes. `Err`: the limit it is over (the
    /// message is refused and counted in `refused`; tokens are taken only
    /// for accepted messages).
    pub fn admit(&mut self, settings: &RateSettings, len: usize, now: Instant) -> Result<(), Limit> {
        let packets = settings.packets_per_second > 0.0;
        let bytes = settings.bytes_per_second > 0.0;
        let (pr, pb, br, bb) = (
            settings.packets_per_second,
            settings.packets_burst,
            settings.bytes_per_second,
            settings.bytes_burst,
        );
        // Quiet long enough to fill up again: past refusals are forgiven.
        if self.refused > 0
            && (!packets || self.packets.is_full(pr, pb, now))
            && (!bytes || self.bytes.is_full(br, bb, now))
        {
            self.refused = 0;
        }
        let len = len as f64;
        let over = if packets && !self.packets.take(1.0, pr, pb, now) {
            Some(Limit::PacketRate)
        } else if bytes && !self.bytes.take(len, br, bb, now) {
            if packets {
                // Give back the packet token of a message refused for bytes.
                self.packets.tokens = (self.packets.tokens + 1.0).min(pb);
            }
            Some(Limit::ByteRate)
        } else {
            None
        };
        match over {
            None => Ok(()),
            Some(limit) => {
                self.refused = self.refused.saturating_add(1);
                Err(limit)
            }
        }
    }
}

/// The audit rows one connection has caused while open
/// (`limits.audit_rows_per_connection`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientRows {
    written: u32,
    /// Rows held back past the connection's allowance: the count its
    /// summary row carries when it ends.
    pub held_back: u32,
}

/// The limits of one server and the record of their breaches.
pub struct Guards {
    settings: LimitSettings,
    /// `limits.exempt`.
    exempt: IpRanges,
    /// Proxies whose `X-Forwarded-For` names the client
    /// (`server.trusted_proxies`).
    pub trusted: IpRanges,
    addresses: Mutex<HashMap<AddressKey, AddressEntry>>,
    /// The address table is swept of idle entries when it grows past this.
    sweep_at: Mutex<usize>,
    audit_rows: Mutex<TokenBucket>,
    /// Client rows held back by the node's allowance since the last summary.
    node_held_back: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    audit: Option<AuditHandle>,
    /// Per-connection rates.
    pub rate: RateSettings,
    /// Incomplete input held node-wide (`limits.input_budget_bytes`).
    pub input: Arc<InputBudget>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Entries the address table holds before its first sweep.
const SWEEP_FLOOR: usize = 4096;

impl Guards {
    /// The guards of `settings`, believing the `X-Forwarded-For` of
    /// `trusted` proxies and not counting `exempt` addresses. Inside a Tokio
    /// runtime a task summarises, once a second, the client rows the node's
    /// allowance held back (it ends with the guards).
    pub fn new(
        settings: &LimitSettings,
        trusted: IpRanges,
        exempt: IpRanges,
        metrics: Arc<Metrics>,
        audit: Option<AuditHandle>,
    ) -> Arc<Self> {
        let guards = Arc::new(Self {
            input: InputBudget::new(usize::try_from(settings.input_budget_bytes).unwrap_or(usize::MAX)),
            node_held_back: std::sync::atomic::AtomicU64::new(0),
            exempt,
            trusted,
            addresses: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(SWEEP_FLOOR),
            audit_rows: Mutex::new(TokenBucket::full(
                f64::from(settings.audit_rows_per_second),
                Instant::now(),
            )),
            metrics,
            audit,
            rate: RateSettings {
                packets_per_second: f64::from(settings.packets_per_second),
                packets_burst: f64::from(settings.packets_burst),
                bytes_per_second: settings.bytes_per_second as f64,
                bytes_burst: settings.bytes_burst as f64,
                refused_before_close: settings.refused_before_close,
            },
            settings: settings.clone(),
        });
        let input = guards.input.clone();
        guards.metrics.watch_input(Box::new(move || input.held() as u64));
        if let (Ok(runtime), Some(_)) = (tokio::runtime::Handle::try_current(), &guards.audit) {
            let weak = Arc::downgrade(&guards);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(guards) = weak.upgrade() else { return };
                    guards.summarise_held_back();
                }
            });
        }
        guards
    }

    /// Writes one row with the count of client rows the node's allowance
    /// held back since the last summary, if any were.
    pub fn summarise_held_back(&self) {
        let n = self.node_held_back.swap(0, std::sync::atomic::Ordering::Relaxed);
        if let (true, Some(audit)) = (n > 0, &self.audit) {
            let detail = format!(
                "{n} audit rows caused by clients were held back (limits.audit_rows_per_second = {}, or the spill file was half full)",
                self.settings.audit_rows_per_second
            );
            audit.record(AuditEvent::new(
                AuditKind::LimitExceeded,
                AuditReason::NODE_ROWS_HELD_BACK,
                detail,
            ));
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// A new session from `ip`: counted against its address, or refused
    /// by the handshake rate or the open-session limit. `None` when `ip` is
    /// exempt or both limits are off (nothing to count).
    pub fn admit_session(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Option<AddressSlot>, AddressRefusal> {
        let s = &self.settings;
        if (s.handshakes_per_second == 0 && s.connections_per_ip == 0) || self.exempt.contains(ip) {
            return Ok(None);
        }
        let (rate, burst) = (f64::from(s.handshakes_per_second), f64::from(s.handshake_burst));
        let key = AddressKey::of(ip);
        // unwrap: the lock is only held for map operations.
        let mut table = self.addresses.lock().unwrap();
        self.sweep(&mut table, now);
        let entry = table.entry(key).or_insert_with(|| AddressEntry {
            bucket: TokenBucket::full(burst, now),
            open: 0,
        });
        if s.connections_per_ip > 0 && entry.open >= s.connections_per_ip {
            return Err(AddressRefusal {
                limit: Limit::ConnectionsPerIp,
                retry_after_s: 1,
            });
        }
        if s.handshakes_per_second > 0 && !entry.bucket.take(1.0, rate, burst, now) {
            let wait = entry.bucket.wait_for(1.0, rate);
            return Err(AddressRefusal {
                limit: Limit::HandshakeRate,
                retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        entry.open += 1;
        Ok(Some(AddressSlot {
            guards: self.clone(),
            key,
        }))
    }

    /// Forgets addresses with no open session and a full bucket once the
    /// table has grown past its mark, so that it holds only addresses that
    /// are connected or were refused recently: bounded by the sessions
    /// plus what `handshake_burst / handshakes_per_second` seconds of new
    /// addresses add.
    fn sweep(&self, table: &mut HashMap<AddressKey, AddressEntry>, now: Instant) {
        // unwrap: the lock is only held to read and set the mark.
        let mut mark = self.sweep_at.lock().unwrap();
        if table.len() < *mark {
            return;
        }
        let s = &self.settings;
        let (rate, burst) = (f64::from(s.handshakes_per_second), f64::from(s.handshake_burst));
        table.retain(|_, e| e.open > 0 || (rate > 0.0 && !e.bucket.is_full(rate, burst, now)));
        *mark = (table.len() * 2).max(SWEEP_FLOOR);
    }

    /// Addresses tracked now (tests, metrics).
    pub fn tracked_addresses(&self) -> usize {
        // unwrap: the lock is only held for map operations.
        self.addresses.lock().unwrap().len()
    }

    /// Counts a breach of `limit` and records `event` (built only when a row
    /// will be written) in the audit log, within the node's allowance.
    pub fn breach(&self, limit: Limit, event: impl FnOnce() -> AuditEvent) {
        self.metrics.limit_breach(limit.as_str());
        self.node_row(event);
    }

    /// [`Self::breach`] by a connection that stays open: within its
    /// allowance (`rows`) too.
    pub fn connection_breach(&self, limit: Limit, rows: &mut ClientRows, event: impl FnOnce() -> AuditEvent) {
        self.metrics.limit_breach(limit.as_str());
        self.client_row(rows, event);
    }

    /// Records `event`, which a client caused while its connection stays
    /// open, within the connection's allowance and the node's: past either
    /// it is counted (`roomcast_audit_suppressed_total`) and summarised
    /// instead: in the connection's summary when it ends, or in the node's
    /// next one.
    pub fn client_row(&self, rows: &mut ClientRows, event: impl FnOnce() -> AuditEvent) {
        if self.audit.is_none() {
            return;
        }
        if rows.written >= self.settings.audit_rows_per_connection {
            rows.held_back = rows.held_back.saturating_add(1);
            self.metrics.audit_suppressed.inc();
            return;
        }
        if self.node_row(event) {
            rows.written += 1;
        }
    }

    /// Records `event` within the node's allowance of client rows; whether
    /// it was.
    fn node_row(&self, event: impl FnOnce() -> AuditEvent) -> bool {
        let Some(audit) = &self.audit else { return false };
        let per_second = f64::from(self.settings.audit_rows_per_second);
        // unwrap: the lock is only held to take a token.
        let allowed = per_second > 0.0
            && self
                .audit_rows
                .lock()
                .unwrap()
                .take(1.0, per_second, per_second, Instant::now());
        if allowed && audit.record_sampled(event()) {
            return true;
        }
        self.node_held_back.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.audit_suppressed.inc();
        false
    }

    /// The summary row of a connection that ends with rows held back.
    pub fn held_back_event(&self, rows: &ClientRows) -> Option<AuditEvent> {
        (rows.held_back > 0).then(|| {
            let detail = format!(
                "{} more audit rows caused by this connection were held back (limits.audit_rows_per_connection = {})",
                rows.held_back, self.settings.audit_rows_per_connection
            );
            AuditEvent::new(AuditKind::LimitExceeded, AuditReason::ROWS_HELD_BACK, detail)
        })
    }

    /// A fresh audit event for a breach of `limit`.
    pub fn event(limit: Limit, detail: impl Into<String>) -> AuditEvent {
        AuditEvent::new(AuditKind::LimitExceeded, limit.reason(), detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tweak: impl FnOnce(&mut LimitSettings)) -> LimitSettings {
        let mut s = crate::config::Settings::defaults().limits;
        s.exempt = vec![];
        tweak(&mut s);
        s
    }

    fn guards(tweak: impl FnOnce(&mut LimitSettings)) -> Arc<Guards> {
        let metrics = Arc::new(Metrics::new());
        let settings = settings(tweak);
        let exempt = IpRanges::parse(&settings.exempt).unwrap();
        Guards::new(&settings, IpRanges::default(), exempt, metrics, None)
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        assert!((0..3).all(|_| b.take(1.0, 10.0, 3.0, t0)));
        assert!(!b.take(1.0, 10.0, 3.0, t0));
        assert_eq!(b.wait_for(1.0, 10.0), Duration::from_millis(100));
        assert!(b.take(1.0, 10.0, 3.0, t0 + Duration::from_millis(100)));
        assert!(!b.take(1.0, 10.0, 3.0, t0 + Duration::from_millis(100)));
        assert!(b.is_full(10.0, 3.0, t0 + Duration::from_secs(60)));
        assert!((0..3).all(|_| b.take(1.0, 10.0, 3.0, t0 + Duration::from_secs(60))));
    }

    #[test]
    fn handshakes_per_address_are_limited_and_other_addresses_are_not() {
        let g = guards(|s| {
            s.handshakes_per_second = 1;
            s.handshake_burst = 2;
            s.connections_per_ip = 0;
        });
        let now = Instant::now();
        let slots: Vec<_> = (0..2).map(|_| g.admit_session(A, now).unwrap()).collect();
        let refusal = g.admit_session(A, now).unwrap_err();
        assert_eq!(refusal.limit, Limit::HandshakeRate);
        assert_eq!(refusal.retry_after_s, 1);
        assert!(g.admit_session(B, now).is_ok());
        assert!(g.admit_session(A, now + Duration::from_secs(1)).is_ok());
        drop(slots);
    }

    #[test]
    fn open_sessions_per_address_are_limited_until_one_closes() {
        let g = guards(|s| {
            s.handshakes_per_second = 0;
            s.connections_per_ip = 2;
        });
        let now = Instant::now();
        let first = g.admit_session(A, now).unwrap();
        let _second = g.admit_session(A, now).unwrap();
        assert_eq!(g.admit_session(A, now).unwrap_err().limit, Limit::ConnectionsPerIp);
        drop(first);
        assert!(g.admit_session(A, now).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressKey::of(a), AddressKey::of(b));
        assert_ne!(AddressKey::of(a), AddressKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(AddressKey::of(mapped), AddressKey::of(A));
    }

    #[test]
    fn exempt_addresses_are_not_counted() {
        let g = guards(|s| {
            s.exempt = vec!["192.0.2.0/24".into()];
            s.connections_per_ip = 1;
        });
        let now = Instant::now();
        let slots: Vec<_> = (0..10).map(|_| g.admit_session(A, now).unwrap()).collect();
        assert!(slots.iter().all(Option::is_none));
        assert_eq!(g.tracked_addresses(), 0);
    }

    #[test]
    fn address_table_forgets_idle_addresses() {
        let g = guards(|s| {
            s.handshakes_per_second = 1000;
            s.handshake_burst = 1;
        });
        let now = Instant::now();
        for i in 0..(3 * SWEEP_FLOOR as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(g.admit_session(ip, now).unwrap());
        }
        // Each address took its one token at `now`; a second later they
        // are all full and idle, and the next sweep drops them.
        let later = now + Duration::from_secs(1);
        for i in 0..(2 * SWEEP_FLOOR as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            drop(g.admit_session(ip, later).unwrap());
        }
        assert!(
            g.tracked_addresses() <= 2 * SWEEP_FLOOR + 1,
            "{}",
            g.tracked_addresses()
        );
    }

    #[test]
    fn connection_rate_refuses_over_either_bucket_and_forgives_when_quiet() {
        let g = guards(|s| {
            s.packets_per_second = 10;
            s.packets_burst = 5;
            s.bytes_per_second = 100;
            s.bytes_burst = 100;
        });
        let t0 = Instant::now();
        let mut rate = ConnectionRate::new(&g.rate, t0);
        assert!((0..5).all(|_| rate.admit(&g.rate, 1, t0).is_ok()));
        assert_eq!(rate.admit(&g.rate, 1, t0), Err(Limit::PacketRate));
        assert_eq!(rate.refused, 1);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(rate.admit(&g.rate, 101, t1), Err(Limit::ByteRate));
        assert!(rate.admit(&g.rate, 50, t1).is_ok());
        assert_eq!(rate.refused, 2);
        // Quiet until both buckets are full: refusals are forgiven.
        let t2 = t1 + Duration::from_secs(2);
        assert!(rate.admit(&g.rate, 1, t2).is_ok());
        assert_eq!(rate.refused, 0);
    }

    #[test]
    fn input_budget_refuses_growth_past_its_limit_and_takes_back_on_drop() {
        let budget = InputBudget::new(100);
        let a = Held::new(budget.clone());
        let b = Held::new(budget.clone());
        a.set(60).unwrap();
        assert_eq!(b.set(41), Err(OverBudget(100)));
        assert_eq!(b.bytes(), 0);
        b.set(40).unwrap();
        assert_eq!(budget.held(), 100);
        a.set(10).unwrap();
        assert_eq!(budget.held(), 50);
        b.shrink(1000);
        assert_eq!((b.bytes(), budget.held()), (0, 10));
        b.grow(5).unwrap();
        drop(a);
        assert_eq!(budget.held(), 5);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn reasons_are_stable() {
        let codes: Vec<u16> = Limit::ALL.iter().map(|l| l.reason().code).collect();
        assert_eq!(codes, (301..=321).collect::<Vec<_>>());
        assert_eq!(Limit::PacketRate.reason().name, "packets_per_second");
    }
}
