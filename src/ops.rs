//! Operations endpoints: `/metrics` (Prometheus), `/healthz` (the process
//! answers) and `/readyz` (it accepts sessions: not draining, and Redis
//! subscribed when a cluster is configured).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
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
}

impl OpsState {
    /// Not draining.
    pub fn new(metrics: Arc<Metrics>, cluster: Option<Arc<AdapterStatus>>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            metrics,
            cluster,
        }
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
        let ready = !draining && redis != Some(false);
        let redis = match redis {
            None => "not configured",
            Some(true) => "connected",
            Some(false) => "unreachable",
        };
        (ready, json!({"ready": ready, "draining": draining, "redis": redis}))
    }
}

/// The routes, for the application factory.
pub fn configure(state: web::Data<OpsState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
    }
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
