//! The Socket.IO Admin UI (`@socket.io/admin-ui`) against roomcast: the
//! admin namespace its UI logs in to, as Node.js's `instrument()` serves
//! it, and (in [`assets`]) the UI's built files, embedded at build time.
//!
//! # The protocol, as the UI and `instrument()` speak it
//!
//! - Login: a CONNECT to the admin namespace (`/admin`) with `{username,
//!   password}`, checked against a bcrypt hash, or `{sessionId}` from an
//!   earlier login. Admitted, the socket gets `session` (a new session id,
//!   after a password login), `config` (`{supportedFeatures}`) and
//!   `all_sockets`; refused, CONNECT_ERROR `{message: "invalid
//!   credentials"}`.
//! - Every node emits `server_stats` to the admin namespace every
//!   `stats_interval_ms`: `{serverId, hostname, pid, uptime, clientsCount,
//!   pollingClientsCount, aggregatedEvents, namespaces}`.
//! - Socket and room updates: `socket_connected`, `socket_updated`,
//!   `socket_disconnected`, `room_joined`, `room_left`, `event_received`.
//!   (`event_sent` is never sent: it would be one update per delivery, and
//!   a broadcast to a thousand sockets is a thousand deliveries.)
//! - Commands: `join(nsp, room, filter?)`, `leave(nsp, room, filter?)`,
//!   `_disconnect(nsp, close, filter?)`, the filter a room or a socket id
//!   (none: the whole namespace). Read-only mode advertises no command and
//!   refuses them.
//!
//! # How roomcast serves it
//!
//! The connection knows none of this: the admin namespace is a
//! [`crate::conn::service::ServerNamespace`] (login, what a socket is told
//! first, its events), and the updates come from a
//! [`crate::conn::service::SocketObserver`] and a
//! [`crate::broker::MembershipWatch`], both implemented here.
//!
//! - Cluster: everything for the UI is a publish to the admin namespace
//!   through [`Cluster::backend_publish`], as `instrument()` does with
//!   `adminNamespace.emit()`: the adapter carries it to every node's admin
//!   sockets, Node.js nodes running `instrument()` with the Redis adapter
//!   included, and their updates reach roomcast's admin sockets the same
//!   way. So a UI logged in to any node sees every node. Commands act on
//!   sockets wherever they are through [`Cluster::operate`] (the adapter's
//!   REMOTE_JOIN, REMOTE_LEAVE and REMOTE_DISCONNECT requests).
//! - Bounded: updates cost the connection or the broker an atomic
//!   decrement, and nothing more when this node's budget for the current
//!   tenth of a second (`max_events_per_second / 10`) is spent: they are
//!   then dropped and counted (`roomcast_admin_ui_updates_dropped_total`).
//!   Within budget, an update is made (one JSON value) and queued (a queue
//!   of `max_events_per_second` entries, dropped when full) for one task
//!   that publishes them. Stats come from counters the node keeps anyway
//!   (the metrics), never from walking the sockets. `all_sockets` lists
//!   at most `max_listed_sockets`, over the cluster. So an open UI costs a
//!   busy node at most that many small publishes per second.
//! - Sessions: kept by the node that made them (as `instrument()`'s
//!   default in-memory store), at most [`MAX_SESSIONS`], for
//!   `session_ttl_s`; a UI reloaded against another node logs in again.
//! - Logins: bcrypt is slow on purpose (tens of milliseconds at cost 10):
//!   checks run on the blocking pool, at most [`MAX_LOGIN_CHECKS`] at once
//!   per node; a login beyond is refused, which also bounds guessing.
//! - Where: with `admin.address` set, the admin namespace exists only on
//!   the admin listener (a CONNECT through the public one gets "Invalid
//!   namespace", as when the UI is off): who can log in to the UI can
//!   disconnect every socket, so it is an operator's tool, as /dashboard.
//!
//! What roomcast does not know about a listed socket (`all_sockets`): the
//! request it was opened with. Its handshake then has no headers and its
//! creation date is the listing's time; a socket that connects while the
//! UI is open is shown with its address, user agent and transport.

pub mod assets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Value};

use crate::adapter::{RemoteOp, SocketInfo};
use crate::broker::{MembershipWatch, Publish};
use crate::cluster::Cluster;
use crate::config::AdminUiSettings;
use crate::conn::service::{Admitted, ServerNamespace, SocketDetails, SocketObserver};
use crate::metrics::{CodeLabel, Metrics, NamespaceLabel, TransportLabel};
use crate::reason::DisconnectReason;

/// Session ids kept per node at most: past it, the oldest goes.
pub const MAX_SESSIONS: usize = 1024;
/// Password checks (bcrypt) running at once per node at most.
pub const MAX_LOGIN_CHECKS: usize = 2;
/// The message of a refused login, exactly as `instrument()` words it (the
/// UI shows its login form again on it).
pub const INVALID_CREDENTIALS: &str = "invalid credentials";
/// Longest event shown in an `event_received` update, in bytes of JSON;
/// a longer one is shown by its name and size.
const MAX_EVENT_SHOWN: usize = 4096;
/// How often the update budget is refilled: a tenth of the per-second
/// figure each time.
const REFILL: Duration = Duration::from_millis(100);

/// Why the admin UI could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

impl SetupError {
    /// The setting at fault.
    pub fn key(&self) -> &'static str {
        "admin_ui.password_hash"
    }
}

/// Checks what only this module can: that the password hash is a bcrypt
/// hash.
pub fn check_settings(settings: &AdminUiSettings) -> Result<(), SetupError> {
    if !settings.enabled || !settings.auth {
        return Ok(());
    }
    settings
        .password_hash
        .trim()
        .parse::<bcrypt::HashParts>()
        .map(drop)
        .map_err(|e| SetupError(format!("is not a bcrypt hash ($2b$10$…): {e}")))
}

/// The admin UI's counters.
#[derive(Clone, Default)]
struct UiMetrics {
    sent: Counter,
    dropped: Counter,
    logins: Family<CodeLabel, Counter>,
    commands: Family<CodeLabel, Counter>,
}

/// What the admin namespace is told about the node, by whom, when.
struct Inner {
    settings: AdminUiSettings,
    nsp: Arc<str>,
    /// The namespaces shown: `socketio.namespaces` and the admin one.
    namespaces: Vec<Arc<str>>,
    max_room_len: usize,
    cluster: Cluster,
    metrics: Arc<Metrics>,
    ui: UiMetrics,
    /// Session id → when it expires.
    sessions: Mutex<HashMap<String, Instant>>,
    checks: Arc<tokio::sync::Semaphore>,
    /// Updates this node may still send in the current tick (below zero:
    /// spent).
    budget: AtomicI64,
    updates: tokio::sync::mpsc::Sender<(&'static str, Vec<Value>)>,
    server_id: String,
    /// This machine's name, read once.
    hostname: String,
    started: Instant,
}

/// The admin namespace and its feed (cheap to clone).
#[derive(Clone)]
pub struct AdminUi {
    inner: Arc<Inner>,
}

/// The features advertised in `config`: the commands (none in read-only
/// mode) and both kinds of events.
fn features(read_only: bool) -> Vec<&'static str> {
    let mut f = if read_only {
        vec![]
    } else {
        vec!["JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"]
    };
    f.extend(["AGGREGATED_EVENTS", "ALL_EVENTS"]);
    f
}

/// Milliseconds since the epoch.
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time as JavaScript's `Date` serialises to JSON.
fn iso(at: SystemTime) -> Value {
    json!(humantime::format_rfc3339_millis(at).to_string())
}

impl AdminUi {
    /// The admin namespace of `settings` (enabled), for `namespaces`
    /// (`socketio.namespaces`), reaching the cluster through `cluster`
    /// and counting in `metrics`. Starts, on the current actix system, the
    /// task that publishes the updates, the budget's refill and the stats
    /// of this node (`node_name` unless `server_id` is set).
    pub fn start(
        settings: &AdminUiSettings,
        namespaces: &[String],
        max_room_len: usize,
        node_name: &str,
        cluster: Cluster,
        metrics: Arc<Metrics>,
    ) -> AdminUi {
        let per_second = settings.max_events_per_second.max(1) as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(per_second);
        let ui = UiMetrics::default();
        metrics.register_extra(
            "admin_ui_updates_sent",
            "Socket, room and event updates this node sent to the Admin UI",
            ui.sent.clone(),
        );
        metrics.register_extra(
            "admin_ui_updates_dropped",
            "Updates for the Admin UI dropped: over admin_ui.max_events_per_second",
            ui.dropped.clone(),
        );
        metrics.register_extra(
            "admin_ui_logins",
            "Logins to the Admin UI's namespace by result (ok, session, refused, busy)",
            ui.logins.clone(),
        );
        metrics.register_extra(
            "admin_ui_commands",
            "Commands of the Admin UI by result (done, refused: read-only, invalid)",
            ui.commands.clone(),
        );
        // Its sockets' gauge exists, at 0, from the start, as the others'.
        metrics.declare_namespaces(std::slice::from_ref(&settings.namespace));
        let nsp: Arc<str> = settings.namespace.as_str().into();
        let mut all: Vec<Arc<str>> = namespaces.iter().map(|n| n.as_str().into()).collect();
        all.push(nsp.clone());
        // Two processes on one host may share a node name: the pid tells
        // them apart, as instrument() does for cluster workers.
        let server_id = match settings.server_id.trim() {
            "" => format!("{node_name}#{}", std::process::id()),
            id => id.to_owned(),
        };
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            nsp,
            namespaces: all,
            max_room_len,
            cluster,
            metrics,
            ui,
            sessions: Mutex::new(HashMap::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_LOGIN_CHECKS)),
            budget: AtomicI64::new(budget_per_tick(per_second)),
            updates: tx,
            server_id,
            hostname: crate::config::host_name(),
            started: Instant::now(),
        });
        actix_web::rt::spawn(publish_updates(Arc::downgrade(&inner), rx));
        actix_web::rt::spawn(refill(Arc::downgrade(&inner), per_second));
        actix_web::rt::spawn(report_stats(Arc::downgrade(&inner)));
        AdminUi { inner }
    }

    /// The namespace as the connection serves it.
    pub fn namespace(&self) -> Arc<dyn ServerNamespace> {
        Arc::new(self.clone())
    }

    /// The feed of socket updates, for the connections.
    pub fn observer(&self) -> Arc<dyn SocketObserver> {
        Arc::new(self.clone())
    }

    /// The feed of room updates, for the broker.
    pub fn watch(&self) -> Arc<dyn MembershipWatch> {
        Arc::new(self.clone())
    }
}

/// The most updates one tick of [`REFILL`] may send for `per_second`.
fn budget_per_tick(per_second: usize) -> i64 {
    i64::try_from(per_second.div_ceil(10)).unwrap_or(i64::MAX)
}

impl Inner {
    /// Sends the update `make` makes, if this tick's budget allows: else
    /// it is not made, only counted.
    fn offer(&self, make: impl FnOnce() -> (&'static str, Vec<Value>)) {
        if self.budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
            self.ui.dropped.inc();
            return;
        }
        if self.updates.try_send(make()).is_err() {
            self.ui.dropped.inc();
        }
    }

    /// Publishes `event` to every admin socket of the cluster.
    async fn emit(&self, event: &str, args: &[Value]) {
        match Publish::values(self.nsp.clone(), event, args) {
            Ok(publish) => {
                let _ = self.cluster.backend_publish(publish).await;
            }
            Err(e) => tracing::warn!(event, "admin ui: {e}"),
        }
    }

    /// A new session id, kept for `session_ttl_s`.
    fn new_session(&self) -> String {
        let id = crate::engineio::generate_sid();
        let now = Instant::now();
        let ttl = Duration::from_secs(self.settings.session_ttl_s);
        // unwrap: the lock is only held for map operations, which do not panic.
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + ttl);
        id
    }

    /// Whether `id` is a live session id.
    fn has_session(&self, id: &str) -> bool {
        // unwrap: see `new_session`.
        let sessions = self.sessions.lock().unwrap();
        sessions.get(id).is_some_and(|expires| *expires > Instant::now())
    }

    /// `config`: what the UI may offer.
    fn config(&self) -> (String, String) {
        let config = json!({"supportedFeatures": features(self.settings.read_only), "serverId": self.server_id});
        ("config".into(), config.to_string())
    }

    /// One socket as the UI shows it.
    fn serialize(&self, nsp: &str, socket: &SocketInfo, issued: SystemTime) -> Value {
        let mut rooms = vec![socket.id.clone()];
        rooms.extend(socket.rooms.iter().cloned());
        let mut data = json!({});
        if let Some(user) = &socket.user {
            data["user"] = json!(user);
        }
        json!({
            "id": socket.id,
            "clientId": socket.id,
            "transport": "unknown",
            "nsp": nsp,
            "data": data,
            "handshake": handshake(None, None, issued),
            "rooms": rooms,
        })
    }

    /// `all_sockets`: every namespace's sockets over the cluster, at most
    /// `max_listed_sockets`.
    async fn all_sockets(&self) -> Value {
        let now = SystemTime::now();
        let max = self.settings.max_listed_sockets;
        let mut listed = Vec::new();
        for nsp in &self.namespaces {
            if listed.len() >= max {
                break;
            }
            let Ok(sockets) = self.cluster.sockets(nsp.clone()).await else {
                break;
            };
            for socket in sockets.local.iter().chain(&sockets.remote).take(max - listed.len()) {
                listed.push(self.serialize(nsp, socket, now));
            }
        }
        Value::Array(listed)
    }

    /// A command of the UI: `name` with `args` (the packet's JSON array).
    fn command(&self, name: &str, args: &str) {
        if !matches!(name, "join" | "leave" | "_disconnect") {
            return self.counted("unknown");
        }
        if self.settings.read_only {
            tracing::info!(command = name, "admin ui: command refused (admin_ui.read_only)");
            return self.counted("refused");
        }
        let Some((nsp, selection, op)) = self.parse_command(name, args) else {
            return self.counted("invalid");
        };
        tracing::info!(command = name, nsp = &*nsp, selection = ?selection, "admin ui command");
        self.counted("done");
        let cluster = self.cluster.clone();
        actix_web::rt::spawn(async move {
            let _ = cluster.operate(nsp, selection, op).await;
        });
    }

    fn counted(&self, code: &'static str) {
        self.ui.commands.get_or_create(&CodeLabel { code }).inc();
    }

    /// `[name, nsp, room | close, filter?]`: the namespace, the selection
    /// (the filter, or the whole namespace) and the operation; `None` for
    /// arguments that are not those, a namespace not shown, a room that
    /// could not be one.
    fn parse_command(&self, name: &str, args: &str) -> Option<(Arc<str>, Vec<Arc<str>>, RemoteOp)> {
        let args: Vec<Value> = serde_json::from_str(args).ok()?;
        let nsp = args.get(1)?.as_str()?;
        let nsp = self.namespaces.iter().find(|n| &***n == nsp)?.clone();
        let selection = match args.get(3) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(filter)) if !filter.is_empty() => vec![Arc::from(filter.as_str())],
            Some(_) => return None,
        };
        let op = match name {
            "_disconnect" => RemoteOp::Disconnect {
                close: args.get(2)?.as_bool()?,
            },
            _ => {
                let room = args.get(2)?.as_str()?;
                crate::broker::check_room(room, self.max_room_len).ok()?;
                let rooms = vec![Arc::from(room)];
                if name == "join" {
                    RemoteOp::Join(rooms)
                } else {
                    RemoteOp::Leave(rooms)
                }
            }
        };
        Some((nsp, selection, op))
    }

    /// `server_stats`: this node's figures, from its metrics, and the
    /// counters' growth since `last` (then updated).
    fn stats(&self, last: &mut Totals) -> Value {
        let m = &self.metrics;
        let sessions = |transport| m.sessions.get_or_create(&TransportLabel { transport }).get();
        let polling = sessions("polling").max(0);
        let clients = polling + sessions("websocket").max(0);
        let now = Totals::of(m);
        let second = epoch_ms(SystemTime::now()) / 1000 * 1000;
        let mut events = Vec::new();
        let mut add = |kind: &str, sub: Option<&str>, count: u64| {
            if count > 0 {
                let mut e = json!({"timestamp": second, "type": kind, "count": count});
                if let Some(sub) = sub {
                    e["subType"] = json!(sub);
                }
                events.push(e);
            }
        };
        add("rawConnection", None, now.connections.saturating_sub(last.connections));
        for (i, reason) in DisconnectReason::ALL.iter().enumerate() {
            let count = now.disconnections[i].saturating_sub(last.disconnections[i]);
            add("rawDisconnection", Some(reason.as_str()), count);
        }
        add("packetsIn", None, now.packets_in.saturating_sub(last.packets_in));
        add("packetsOut", None, now.packets_out.saturating_sub(last.packets_out));
        add("bytesIn", None, now.bytes_in.saturating_sub(last.bytes_in));
        add("bytesOut", None, now.bytes_out.saturating_sub(last.bytes_out));
        *last = now;
        let namespaces: Vec<Value> = self
            .namespaces
            .iter()
            .map(|nsp| {
                let label = NamespaceLabel {
                    namespace: nsp.to_string(),
                };
                json!({"name": &**nsp, "socketsCount": m.sockets.get_or_create(&label).get().max(0)})
            })
            .collect();
        json!({
            "serverId": self.server_id,
            "hostname": self.hostname,
            "pid": std::process::id(),
            "uptime": self.started.elapsed().as_secs_f64(),
            "clientsCount": clients,
            "pollingClientsCount": polling,
            "aggregatedEvents": events,
            "namespaces": namespaces,
        })
    }
}

/// The counters `aggregatedEvents` are the growth of.
#[derive(Default)]
struct Totals {
    connections: u64,
    disconnections: [u64; 8],
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Totals {
    fn of(m: &Metrics) -> Totals {
        let handshakes = |transport| m.handshakes.get_or_create(&TransportLabel { transport }).get();
        let mut disconnections = [0; 8];
        for (i, reason) in DisconnectReason::ALL.iter().enumerate() {
            let label = crate::metrics::ReasonLabel {
                reason: reason.as_str(),
            };
            disconnections[i] = m.disconnects.get_or_create(&label).get();
        }
        Totals {
            connections: handshakes("polling") + handshakes("websocket"),
            disconnections,
            packets_in: m.events_in.get(),
            packets_out: m.events_out.get(),
            bytes_in: m.bytes_in.get(),
            bytes_out: m.bytes_out.get(),
        }
    }
}

/// A socket's `handshake` as the UI reads it (it needs `issued`).
fn handshake(address: Option<&str>, user_agent: Option<&str>, issued: SystemTime) -> Value {
    let mut headers = serde_json::Map::new();
    if let Some(ua) = user_agent {
        headers.insert("user-agent".into(), json!(ua));
    }
    json!({
        "address": address.unwrap_or_default(),
        "headers": headers,
        "query": {},
        "issued": epoch_ms(issued),
        "secure": false,
        "time": humantime::format_rfc3339_seconds(issued).to_string(),
        "url": "",
        "xdomain": false,
    })
}

/// Publishes the queued updates, one after the other, until the admin UI
/// is gone.
async fn publish_updates(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::mpsc::Receiver<(&'static str, Vec<Value>)>,
) {
    while let Some((event, args)) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.emit(event, &args).await;
        inner.ui.sent.inc();
    }
}

/// Gives the budget back every [`REFILL`]: a tenth of `per_second` each
/// time (the remainder carried to the next), never more than a tick's
/// worth waiting, so that a quiet spell does not save up a burst.
async fn refill(inner: std::sync::Weak<Inner>, per_second: usize) {
    let mut tick = tokio::time::interval(REFILL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let most = budget_per_tick(per_second);
    let mut carried = 0usize;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        carried += per_second;
        let whole = i64::try_from(carried / 10).unwrap_or(i64::MAX);
        carried %= 10;
        let left = inner.budget.load(Ordering::Relaxed).max(0);
        inner
            .budget
            .store(left.saturating_add(whole).min(most), Ordering::Relaxed);
    }
}

/// Emits this node's `server_stats` every `stats_interval_ms`, the first
/// at once.
async fn report_stats(inner: std::sync::Weak<Inner>) {
    let Some(every) = inner
        .upgrade()
        .map(|i| Duration::from_millis(i.settings.stats_interval_ms))
    else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = inner.upgrade().map(|i| Totals::of(&i.metrics)).unwrap_or_default();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let stats = inner.stats(&mut last);
        inner.emit("server_stats", &[stats]).await;
    }
}

impl ServerNamespace for AdminUi {
    fn name(&self) -> &str {
        &self.inner.nsp
    }

    fn admit(&self, auth: Value) -> BoxFuture<'static, Result<Admitted, String>> {
        let inner = self.inner.clone();
        let refused = || Err(INVALID_CREDENTIALS.to_owned());
        let login = |code: &'static str| inner.ui.logins.get_or_create(&CodeLabel { code }).inc();
        if !inner.settings.auth {
            login("ok");
            return async move {
                Ok(Admitted {
                    first: vec![inner.config()],
                })
            }
            .boxed();
        }
        if let Some(id) = auth.get("sessionId").and_then(Value::as_str) {
            if inner.has_session(id) {
                login("session");
                return async move {
                    Ok(Admitted {
                        first: vec![inner.config()],
                    })
                }
                .boxed();
            }
        }
        let (Some(username), Some(password)) = (
            auth.get("username").and_then(Value::as_str),
            auth.get("password").and_then(Value::as_str),
        ) else {
            login("refused");
            return async move { refused() }.boxed();
        };
        if username != inner.settings.username {
            login("refused");
            return async move { refused() }.boxed();
        }
        let Ok(permit) = inner.checks.clone().try_acquire_owned() else {
            login("busy");
            return async move { refused() }.boxed();
        };
        let (password, hash) = (password.to_owned(), inner.settings.password_hash.trim().to_owned());
        async move {
            let matches = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if !matches {
                inner.ui.logins.get_or_create(&CodeLabel { code: "refused" }).inc();
                return refused();
            }
            inner.ui.logins.get_or_create(&CodeLabel { code: "ok" }).inc();
            let session = ("session".to_owned(), json!(inner.new_session()).to_string());
            Ok(Admitted {
                first: vec![session, inner.config()],
            })
        }
        .boxed()
    }

    fn welcome(&self) -> BoxFuture<'static, Vec<(String, String)>> {
        let inner = self.inner.clone();
        async move { vec![("all_sockets".to_owned(), inner.all_sockets().await.to_string())] }.boxed()
    }

    fn event(&self, name: &str, args: &str) {
        self.inner.command(name, args);
    }
}

impl SocketObserver for AdminUi {
    fn socket_connected(&self, s: &SocketDetails<'_>) {
        self.inner.offer(|| {
            let now = SystemTime::now();
            let socket = json!({
                "id": s.id,
                "clientId": s.id,
                "transport": s.transport,
                "nsp": s.nsp,
                "data": {},
                "handshake": handshake(s.address, s.user_agent, now),
                "rooms": [s.id],
            });
            ("socket_connected", vec![socket, iso(now)])
        });
    }

    fn socket_disconnected(&self, nsp: &str, id: &str, reason: DisconnectReason) {
        self.inner.offer(|| {
            let args = vec![json!(nsp), json!(id), json!(reason.as_str()), iso(SystemTime::now())];
            ("socket_disconnected", args)
        });
    }

    fn transport_changed(&self, nsp: &str, id: &str, transport: &'static str) {
        self.inner.offer(|| {
            (
                "socket_updated",
                vec![json!({"id": id, "nsp": nsp, "transport": transport})],
            )
        });
    }

    fn event_received(&self, nsp: &str, id: &str, args: &str) {
        self.inner.offer(|| {
            let shown = match serde_json::from_str::<Value>(args) {
                Ok(Value::Array(a)) if args.len() <= MAX_EVENT_SHOWN => Value::Array(a),
                Ok(Value::Array(a)) => {
                    let name = a.into_iter().next().unwrap_or(Value::Null);
                    json!([name, format!("({} bytes, not shown)", args.len())])
                }
                _ => json!(["?"]),
            };
            (
                "event_received",
                vec![json!(nsp), json!(id), shown, iso(SystemTime::now())],
            )
        });
    }
}

impl MembershipWatch for AdminUi {
    fn room_changed(&self, nsp: &str, room: &str, socket_id: &str, joined: bool) {
        let event = if joined { "room_joined" } else { "room_left" };
        self.inner.offer(|| {
            let args = vec![json!(nsp), json!(room), json!(socket_id), iso(SystemTime::now())];
            (event, args)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_advertises_no_command() {
        assert_eq!(features(true), ["AGGREGATED_EVENTS", "ALL_EVENTS"]);
        assert!(features(false).contains(&"DISCONNECT"));
    }

    #[test]
    fn the_budget_is_a_tenth_of_the_rate_at_least_one() {
        assert_eq!(budget_per_tick(100), 10);
        assert_eq!(budget_per_tick(1), 1);
        assert_eq!(budget_per_tick(15), 2);
    }

    #[test]
    fn a_hash_that_is_not_bcrypt_is_refused() {
        let mut s = crate::config::Settings::defaults().admin_ui;
        s.enabled = true;
        s.password_hash = "secret".into();
        assert!(check_settings(&s).is_err());
        s.password_hash = bcrypt::hash("secret", 4).unwrap();
        assert!(check_settings(&s).is_ok());
    }
}
