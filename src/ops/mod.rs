//! Operations endpoints: `/metrics` (Prometheus), `/healthz` (the process
//! answers), `/readyz` (it accepts sessions: not draining, and Redis
//! subscribed when a cluster is configured), the live dashboard at
//! `/dashboard`, and the socket.io-client browser bundle at
//! `{server.path}socket.io.js` (embedded at build time from npm, see
//! `build.rs`), as Node's socket.io serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::adapter::AdapterStatus;
use crate::metrics::Metrics;

/// What the operations endpoints report on.
#[derive(Debug)]
pub struct OpsState {
    draining: AtomicBool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The Redis adapter, when there is one.
    pub cluster: Option<Arc<AdapterStatus>>,
    /// The audit log's counters (its database's state among them).
    pub audit: Option<Arc<crate::audit::AuditStats>>,
}

impl OpsState {
    /// Not draining.
    pub fn new(metrics: Arc<Metrics>, cluster: Option<Arc<AdapterStatus>>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            metrics,
            cluster,
            audit: None,
        }
    }

    /// Reports the audit database too.
    pub fn with_audit(mut self, stats: Arc<crate::audit::AuditStats>) -> Self {
        self.audit = Some(stats);
        self
    }

    /// Whether new sessions are refused.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// From now on new sessions are refused and `/readyz` says so.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `(ready, details)`.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let draining = self.draining();
        let redis = self.cluster.as_ref().map(|s| !s.degraded());
        // The audit writer's last write: a database found down is retried
        // (rows spill meanwhile), so this clears when it is back.
        let database = self.audit.as_ref().map(|s| !s.database_down.load(Ordering::Relaxed));
        let ready = !draining && redis != Some(false) && database != Some(false);
        let state = |up: Option<bool>, ok: &'static str| match up {
            None => "not configured",
            Some(true) => ok,
            Some(false) => "unreachable",
        };
        let body = json!({
            "ready": ready,
            "draining": draining,
            "redis": state(redis, "connected"),
            "database": state(database, "ok"),
        });
        (ready, body)
    }
}

/// The socket.io-client browser bundle (empty when the build had none).
const CLIENT_BUNDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/socket.io.min.js"));
/// Its npm version, for the ETag.
const CLIENT_VERSION: &str = include_str!(concat!(env!("OUT_DIR"), "/socket.io-client.version"));

const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
/// Only this server's own scripts, and connections back to it; no page may
/// frame the dashboard (`frame-ancestors 'none'`), so another site cannot
/// overlay it to trick a click or read it through a frame.
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; \
     style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// The routes, for the application factory; `sio_path` is the Socket.IO
/// path (`/socket.io/`), under which the client bundle is served.
pub fn configure(state: web::Data<OpsState>, sio_path: &str) -> impl FnOnce(&mut web::ServiceConfig) {
    let bundle = format!("{}/socket.io.js", sio_path.trim_end_matches('/'));
    let bundle_min = format!("{}/socket.io.min.js", sio_path.trim_end_matches('/'));
    move |cfg| {
        cfg.app_data(state)
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/dashboard", web::get().to(dashboard))
            .route("/dashboard.js", web::get().to(dashboard_js))
            .route(&bundle, web::get().to(client_bundle))
            .route(&bundle_min, web::get().to(client_bundle));
    }
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP))
        // `frame-ancestors` for browsers that predate CSP level 2.
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(DASHBOARD_HTML)
}

async fn dashboard_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(DASHBOARD_JS)
}

async fn client_bundle(req: HttpRequest) -> HttpResponse {
    if CLIENT_BUNDLE.is_empty() {
        return HttpResponse::NotFound().json(json!({
            "error": "this build has no socket.io-client bundle: run `npm ci --prefix web`, then build again"
        }));
    }
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
        .body(CLIENT_BUNDLE)
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    let (ready, body) = state.readiness();
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
