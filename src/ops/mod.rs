//! Operations endpoints: `/metrics` (Prometheus), `/healthz` (the process
//! answers), `/readyz` (this node takes new sessions), the live dashboard
//! at `/dashboard`, and the socket.io-client browser bundle at
//! `{server.path}socket.io.js` (embedded at build time from npm, see
//! `build.rs`), as Node's socket.io serves it.
//!
//! # Readiness is about this node only
//!
//! `/readyz` answers 503 only while this node drains (SIGTERM) or holds
//! `server.max_connections` sessions, the two states in which a balancer
//! should send new clients elsewhere and *another node can do better*.
//! Redis and the audit database are shared by every node: when one of them
//! is unreachable, it is unreachable for all of them at once, so a 503 for
//! it would take the whole cluster out of the balancer together, turning a
//! degraded service (local delivery keeps working; audit rows go to the
//! spill file) into no service. Their state is reported instead, never in
//! the status code: in the JSON bodies of `/readyz` and `/healthz`
//! (`"redis"`, `"database"`: `state` and `since`), in `/metrics`
//! (`roomcast_redis_connected`, only where Redis is configured, and
//! `roomcast_audit_database_up`), and as a log line when each goes down
//! and when it comes back ([`watch`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::adapter::AdapterStatus;
use crate::http::cap::Draining;
use crate::metrics::Metrics;

/// Sessions open on this node and its cap (`server.max_connections`), read
/// when `/readyz` is asked.
pub type SessionCount = Box<dyn Fn() -> (usize, usize) + Send + Sync>;

/// What the operations endpoints report on.
pub struct OpsState {
    draining: Arc<Draining>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The Redis adapter, when there is one.
    pub cluster: Option<Arc<AdapterStatus>>,
    /// The audit log's counters (its database's state among them).
    pub audit: Option<Arc<crate::audit::AuditStats>>,
    sessions: OnceLock<SessionCount>,
    /// The dependencies' states as last seen, with the time each changed:
    /// what `since` reports and what a transition is logged against.
    seen: Mutex<Seen>,
    /// Where Redis and the database are (`host:port`, a file), for the
    /// log lines only: `/readyz` may be public.
    locations: [String; 2],
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState")
            .field("draining", &self.draining())
            .finish_non_exhaustive()
    }
}

/// A shared dependency's state. `None` in an `Option<State>`: not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Redis: subscribed. The database: its last write (or the migrations
    /// at start) succeeded.
    Up,
    /// Redis: not subscribed (reconnecting). The database: its last write
    /// failed (retried every `audit.retry_interval_ms`; rows spill).
    Down,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// One dependency as last observed.
#[derive(Debug, Clone, Copy)]
struct Observed {
    state: Option<State>,
    since: SystemTime,
    /// Whether `state` was logged. Redis starts down (not subscribed yet):
    /// that is logged only if it is still so at [`watch`]'s first tick, so
    /// a normal start logs no outage.
    logged: bool,
}

#[derive(Debug)]
struct Seen {
    redis: Observed,
    database: Observed,
}

impl OpsState {
    /// Not draining.
    pub fn new(metrics: Arc<Metrics>, cluster: Option<Arc<AdapterStatus>>) -> Self {
        let now = SystemTime::now();
        let at_start = |state: Option<State>| Observed {
            state,
            since: now,
            logged: state != Some(State::Down),
        };
        let redis = cluster
            .as_ref()
            .map(|s| if s.degraded() { State::Down } else { State::Up });
        Self {
            draining: Arc::default(),
            metrics,
            cluster,
            audit: None,
            sessions: OnceLock::new(),
            seen: Mutex::new(Seen {
                redis: at_start(redis),
                database: at_start(None),
            }),
            locations: Default::default(),
        }
    }

    /// Names where Redis and the database are in the log lines (see
    /// [`crate::config::location`]).
    pub fn with_locations(mut self, redis: String, database: String) -> Self {
        self.locations = [redis, database];
        self
    }

    /// Reports the audit database too.
    pub fn with_audit(mut self, stats: Arc<crate::audit::AuditStats>) -> Self {
        self.audit = Some(stats);
        // unwrap: the lock is only held to read or update the states.
        let database = &mut self.seen.get_mut().unwrap().database;
        database.state = Some(State::Up);
        database.logged = true;
        self
    }

    /// Makes `/readyz` answer 503 while `count` says the node is at its cap.
    /// Set once, by the composition root, when the cap exists.
    pub fn watch_sessions(&self, count: SessionCount) {
        let _ = self.sessions.set(count);
    }

    /// Whether new sessions are refused.
    pub fn draining(&self) -> bool {
        self.draining.is_on()
    }

    /// From now on new sessions are refused and `/readyz` says so.
    pub fn start_draining(&self) {
        self.draining.start();
    }

    /// The flag [`OpsState::start_draining`] sets, for the endpoints that
    /// refuse new sessions while it is on.
    pub fn draining_flag(&self) -> Arc<Draining> {
        self.draining.clone()
    }

    /// Redis's state now; `None` on a single node.
    pub fn redis(&self) -> Option<State> {
        self.cluster
            .as_ref()
            .map(|s| if s.degraded() { State::Down } else { State::Up })
    }

    /// The audit database's state now, as its writer last found it: a
    /// database found down is retried (rows spill meanwhile), so this clears
    /// when it is back. `None` when no audit log is attached (unit tests).
    pub fn database(&self) -> Option<State> {
        self.audit.as_ref().map(|s| {
            if s.database_down.load(Ordering::Relaxed) {
                State::Down
            } else {
                State::Up
            }
        })
    }

    /// Compares the dependencies' states with the last ones seen, logs each
    /// change (one line when one goes down, one when it comes back) and
    /// remembers when it happened. Called by [`watch`] every second
    /// (`tick`) and by the endpoints, so what they report and what was
    /// logged agree.
    pub fn observe(&self, tick: bool) {
        let (redis, database) = (self.redis(), self.database());
        // unwrap: the lock is only held to read or update the states.
        let mut guard = self.seen.lock().unwrap();
        let seen = &mut *guard;
        let now = SystemTime::now();
        let [redis_at, database_at] = &self.locations;
        for (name, at, what, current, last) in [
            (
                "redis",
                redis_at,
                "cross-node broadcasts are lost, cluster queries fail",
                redis,
                &mut seen.redis,
            ),
            (
                "database",
                database_at,
                "audit rows go to the spill file (audit.spill_file)",
                database,
                &mut seen.database,
            ),
        ] {
            if current == last.state {
                if last.logged || !tick {
                    continue;
                }
            } else if !last.logged && current == Some(State::Up) {
                // Down since start, never reported: a normal start.
                *last = Observed {
                    state: current,
                    since: now,
                    logged: true,
                };
                continue;
            } else {
                *last = Observed {
                    state: current,
                    since: now,
                    logged: false,
                };
            }
            last.logged = true;
            match current {
                Some(State::Down) => tracing::warn!(
                    dependency = name,
                    at = %at,
                    state = "down",
                    "{name} unreachable ({what}); this node stays ready: readiness is about this node only"
                ),
                Some(State::Up) => tracing::info!(dependency = name, at = %at, state = "up", "{name} reachable again"),
                None => {}
            }
        }
    }

    fn dependency(&self, observed: Observed) -> Value {
        match observed.state {
            None => json!({"state": "not configured"}),
            Some(state) => json!({
                "state": state.as_str(),
                "since": humantime::format_rfc3339_seconds(observed.since).to_string(),
            }),
        }
    }

    /// The dependencies as reported by both endpoints.
    fn dependencies(&self) -> (Value, Value) {
        self.observe(false);
        // unwrap: the lock is only held to read or update the states.
        let seen = self.seen.lock().unwrap();
        (self.dependency(seen.redis), self.dependency(seen.database))
    }

    /// `(ready, details)`: ready unless draining or at the session cap.
    /// Redis and the database are in the details, never in `ready` (see
    /// the module's documentation).
    pub fn readiness(&self) -> (bool, Value) {
        let draining = self.draining();
        let (open, max) = self.sessions.get().map_or((0, usize::MAX), |count| count());
        let at_capacity = open >= max;
        let ready = !draining && !at_capacity;
        let (redis, database) = self.dependencies();
        let mut body = json!({
            "ready": ready,
            "draining": draining,
            "at_capacity": at_capacity,
            "redis": redis,
            "database": database,
        });
        if max != usize::MAX {
            body["sessions"] = json!({"open": open, "max": max});
        }
        (ready, body)
    }

    /// `/healthz`'s body: the process answers; the dependencies as in
    /// `/readyz`, for information.
    pub fn health(&self) -> Value {
        let (redis, database) = self.dependencies();
        json!({"status": "ok", "redis": redis, "database": database})
    }
}

/// Observes the dependencies every `every` (see [`OpsState::observe`]), so
/// a change is logged when it happens even if no one asks `/readyz`. Ends
/// when the server's state is gone.
pub async fn watch(state: Weak<OpsState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: let the adapter subscribe first.
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.upgrade() {
            Some(state) => state.observe(true),
            None => return,
        }
    }
}

/// The socket.io-client browser bundle (empty when the build had none).
const CLIENT_BUNDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/socket.io.min.js"));
/// Its npm version, for the ETag.
const CLIENT_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/socket.io-client.version"));
/// The bundle served with `server.serve_client` on, or why there is none
/// (the 404's hint, also shown by the dashboard). Off, the server serves
/// what a build without the bundle serves.
fn served_bundle(serve_client: bool) -> Result<&'static [u8], &'static str> {
    if !serve_client {
        Err("this server serves no socket.io-client bundle: server.serve_client is off")
    } else if CLIENT_BUNDLE.is_empty() {
        Err(
            "this build has no socket.io-client bundle: build roomcast where npm is installed and can \
                 reach its registry (build.rs installs web/package.json), or run `npm ci --prefix web`, then \
                 build again",
        )
    } else {
        Ok(CLIENT_BUNDLE)
    }
}

const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
/// Only this server's own scripts, and connections back to it; no page may
/// frame the dashboard (`frame-ancestors 'none'`), so another site cannot
/// overlay it to trick a click or read it through a frame.
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; \
     style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// The routes of this module: health and the client bundle (under
/// `sio_path`, the Socket.IO path, as `/socket.io/socket.io.js`) always, and
/// with `private` (no separate admin listener, or on it) the operators'
/// `/metrics` and `/dashboard`. `serve_client`: `server.serve_client`.
pub fn configure(
    state: web::Data<OpsState>,
    sio_path: &str,
    serve_client: bool,
    private: bool,
) -> impl FnOnce(&mut web::ServiceConfig) {
    let bundle = format!("{}/socket.io.js", sio_path.trim_end_matches('/'));
    let bundle_min = format!("{}/socket.io.min.js", sio_path.trim_end_matches('/'));
    let served = served_bundle(serve_client);
    let page = web::Bytes::from(dashboard_page(sio_path, &bundle, served.err()));
    move |cfg| {
        cfg.app_data(state)
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route(&bundle, web::get().to(move |req| client_bundle(req, served)))
            .route(&bundle_min, web::get().to(move |req| client_bundle(req, served)));
        if private {
            cfg.route("/metrics", web::get().to(metrics))
                .route("/dashboard", web::get().to(move || dashboard(page.clone())))
                .route("/dashboard.js", web::get().to(dashboard_js));
        }
    }
}

/// The dashboard's HTML for this server: its Socket.IO path, where the
/// client bundle is and, when there is none, why (dashboard.js reads them
/// from `<body>`'s data attributes).
fn dashboard_page(sio_path: &str, bundle: &str, missing: Option<&str>) -> String {
    let script = match missing {
        None => format!("<script src=\"{}\"></script>", escape_html(bundle)),
        Some(_) => String::new(),
    };
    DASHBOARD_HTML
        .replace("{{sio_path}}", &escape_html(sio_path))
        .replace("{{client_bundle}}", &escape_html(bundle))
        .replace("{{client_missing}}", &escape_html(missing.unwrap_or_default()))
        .replace("{{client_script}}", &script)
}

/// `text` as HTML text or a quoted attribute value.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn dashboard(page: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP))
        // `frame-ancestors` for browsers that predate CSP level 2.
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(page)
}

async fn dashboard_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(DASHBOARD_JS)
}

async fn client_bundle(req: HttpRequest, served: Result<&'static [u8], &'static str>) -> HttpResponse {
    let bundle = match served {
        Ok(bundle) => bundle,
        Err(why) => return HttpResponse::NotFound().json(json!({ "error": why })),
    };
    let etag = format!("\"socket.io-client-{CLIENT_VERSION}\"");
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if fresh {
        return HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish();
    }
    HttpResponse::Ok()
        .content_type("application/javascript; charset=utf-8")
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(bundle)
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

async fn healthz(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok().json(state.health())
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    let (ready, body) = state.readiness();
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditStats;

    fn state(redis_up: bool, database_up: bool) -> OpsState {
        let cluster = Arc::new(AdapterStatus::default());
        cluster.connected.store(redis_up, Ordering::Relaxed);
        let audit = Arc::new(AuditStats::default());
        audit.database_down.store(!database_up, Ordering::Relaxed);
        OpsState::new(Arc::new(Metrics::new()), Some(cluster)).with_audit(audit)
    }

    #[test]
    fn shared_dependencies_never_make_the_node_unready() {
        for (redis, database) in [(true, true), (false, true), (true, false), (false, false)] {
            let (ready, body) = state(redis, database).readiness();
            assert!(ready, "{body}");
            let word = |up: bool| if up { "up" } else { "down" };
            assert_eq!(body["redis"]["state"], word(redis), "{body}");
            assert_eq!(body["database"]["state"], word(database), "{body}");
        }
    }

    #[test]
    fn draining_or_the_cap_makes_it_unready() {
        let ops = state(true, true);
        ops.watch_sessions(Box::new(|| (9, 10)));
        assert!(ops.readiness().0);
        let full = state(true, true);
        full.watch_sessions(Box::new(|| (10, 10)));
        let (ready, body) = full.readiness();
        assert!(!ready);
        assert_eq!(body["at_capacity"], true);
        assert_eq!(body["sessions"], json!({"open": 10, "max": 10}));
        ops.start_draining();
        let (ready, body) = ops.readiness();
        assert!(!ready);
        assert_eq!(
            (body["draining"].clone(), body["at_capacity"].clone()),
            (json!(true), json!(false))
        );
    }

    #[test]
    fn the_dashboard_page_names_the_servers_path_and_bundle() {
        let page = dashboard_page("/rt/", "/rt/socket.io.js", None);
        assert!(page.contains(r#"data-sio-path="/rt/""#), "{page}");
        assert!(page.contains(r#"data-client-missing="""#), "{page}");
        assert!(page.contains(r#"<script src="/rt/socket.io.js"></script>"#), "{page}");
        assert!(!page.contains("{{") && !page.contains("/socket.io/"), "{page}");

        let page = dashboard_page("/a\"<b/", "/a\"<b/socket.io.js", Some("no <bundle> & no \"live\" view"));
        assert!(page.contains(r#"data-sio-path="/a&quot;&lt;b/""#), "{page}");
        assert!(
            page.contains("no &lt;bundle&gt; &amp; no &quot;live&quot; view"),
            "{page}"
        );
        assert!(
            !page.contains("socket.io.js\"></script>"),
            "no bundle, no script: {page}"
        );
    }

    #[test]
    fn a_change_moves_since() {
        let cluster = Arc::new(AdapterStatus::default());
        cluster.connected.store(true, Ordering::Relaxed);
        let ops = OpsState::new(Arc::new(Metrics::new()), Some(cluster.clone()));
        ops.observe(true);
        let before = ops.seen.lock().unwrap().redis.since;
        std::thread::sleep(Duration::from_millis(5));
        cluster.connected.store(false, Ordering::Relaxed);
        ops.observe(false);
        let seen = ops.seen.lock().unwrap().redis;
        assert_eq!((seen.state, seen.logged), (Some(State::Down), true));
        assert!(seen.since > before);
    }
}
