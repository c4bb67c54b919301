//! Long-polling without sticky sessions (`[cluster] sticky = false`): a
//! request for a session this node does not hold is served by the node
//! that does.
//!
//! # How
//! A sid starts with its node's tag ([`crate::engineio::NodeTag`]), so the
//! owner is known from the request alone; the [`Directory`] says where it
//! listens and whether it is alive. The request is then sent on to it
//! whole, and its answer comes back as it was:
//! - a polling GET or POST over HTTP (a pool of keep-alive connections
//!   per worker), the POST's body read here first (bounded by `maxPayload`,
//!   `limits.body_timeout_ms` and the node's input budget, as for a
//!   session of this node);
//! - a WebSocket upgrade over a TCP connection of its own, spliced to the
//!   client's after the owner's 101 ([`crate::transport::relay`]).
//!
//! The owner serves a forwarded request as one of its own clients': its
//! Connection actor stays the one judge of Engine.IO's rules (one GET
//! pending, POSTs one at a time and in order, the long-poll's hold, the
//! close, the probe and the upgrade), so nothing of them is repeated
//! here. A forwarded request is marked ([`FORWARDED`]); a node never
//! forwards one again, so a stale directory cannot make a loop.
//!
//! # Why direct HTTP and not Redis
//! Measured on this machine (docs/clustering.md): a request relayed over
//! Redis pub/sub took as long end to end as one sent directly, but cost
//! Redis 27–44 µs of CPU per request and two round trips through it, and
//! Redis would carry every poll of every session, growing with the
//! clients rather than the broadcasts. Direct HTTP costs Redis one small
//! write and read per node per heartbeat. The owner's address is looked up
//! in memory; Redis is never on a request's path (a miss waits for one
//! shared read).
//!
//! # Failures
//! - The owner is not in the directory, or the connection to it fails or
//!   takes over `cluster.forward_connect_ms`: 400 "Session ID unknown" at
//!   once, what the client would get from the owner if it had died; it
//!   reconnects.
//! - More than `cluster.max_forwarded` requests in flight: 503 with
//!   `Retry-After: 1` (a balancer with `retry-on 503` retries elsewhere).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::HttpError;
use crate::adapter::directory::{Directory, Owner};
use crate::engineio::{ErrorCode, TransportKind};
use crate::metrics::{ForwardLabel, KindLabel, Metrics};
use crate::transport::handover::Handover;
use crate::transport::polling::{self, BodyRefused};
use crate::transport::relay::{self, Opened};

/// The header that marks a forwarded request (its value: the forwarding
/// node's tag).
pub const FORWARDED: &str = "roomcast-forwarded";

/// Headers not passed on in either direction: they describe one hop, or
/// are set by each node for itself (CORS by its own middleware).
fn not_passed(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.len() > 12 && name[..12].eq_ignore_ascii_case("access-contr")
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || name.eq_ignore_ascii_case(FORWARDED)
        || name.eq_ignore_ascii_case("vary")
}

/// Forwards requests for other nodes' sessions.
pub struct Forwarder {
    directory: Arc<Directory>,
    in_flight: AtomicUsize,
    settings: ForwardSettings,
    metrics: Arc<Metrics>,
}

/// What bounds forwarding.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// `cluster.max_forwarded`.
    pub max_in_flight: usize,
    /// `cluster.forward_connect_ms`.
    pub connect: Duration,
    /// Longest a forwarded long-poll is waited for (a long-poll is held
    /// up to `pingInterval`; beyond `pingInterval + pingTimeout` the
    /// session is gone anyway).
    pub hold: Duration,
    /// `limits.body_timeout_ms`: a POST's body, and any other answer.
    pub body_timeout: Duration,
    /// `maxPayload`.
    pub max_payload: usize,
    /// How long an idle connection to another node is kept for reuse
    /// (under the owners' `limits.keep_alive_ms`, so that a node never
    /// sends on one the owner is closing).
    pub idle: Duration,
}

thread_local! {
    /// One client per worker, so that a forwarded request's connection is
    /// driven by the worker serving it.
    static CLIENT: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

/// Counts a request in flight while it lives.
struct Slot<'a>(&'a Forwarder);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.forwarded_in_flight.dec();
    }
}

/// What became of a forwarded request (a [`crate::metrics::FORWARD_OUTCOMES`] value).
enum Outcome {
    Ok,
    Gone,
    Failed,
}

impl Forwarder {
    /// A forwarder finding owners in `directory`.
    pub fn new(directory: Arc<Directory>, settings: ForwardSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            directory,
            in_flight: AtomicUsize::new(0),
            settings,
            metrics,
        }
    }

    /// Whether `req` came from another node (then it is served here or
    /// refused, never forwarded again).
    pub fn forwarded(req: &HttpRequest) -> bool {
        req.headers().contains_key(FORWARDED)
    }

    fn client(&self) -> reqwest::Client {
        CLIENT.with(|cell| {
            cell.get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(self.settings.connect)
                    .pool_idle_timeout(self.settings.idle)
                    .tcp_nodelay(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    // A client without TLS or a resolver of its own cannot
                    // fail to build; if it did, forwarding would fail (gone).
                    .unwrap_or_default()
            })
            .clone()
        })
    }

    fn slot(&self) -> Option<Slot<'_>> {
        let max = self.settings.max_in_flight;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        self.metrics.forwarded_in_flight.inc();
        Some(Slot(self))
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.metrics
            .forwarded
            .get_or_create(&ForwardLabel { kind, outcome })
            .inc();
    }

    /// Serves `req` (for the session `sid`, which this node does not hold)
    /// through its owner; `budget` holds a POST's body while it travels.
    pub async fn serve(
        &self,
        req: &HttpRequest,
        body: web::Payload,
        sid: &str,
        transport: TransportKind,
        budget: Arc<crate::limits::InputBudget>,
    ) -> HttpResponse {
        let kind = match (transport, req.method()) {
            (TransportKind::WebSocket, _) => "upgrade",
            (_, &Method::POST) => "poll_post",
            _ => "poll_get",
        };
        let unknown = || HttpError::of(ErrorCode::UnknownSid).response();
        let address = match self.directory.find(sid, self.settings.connect).await {
            Owner::At(address) => address,
            Owner::Here | Owner::Gone => {
                self.count(kind, "gone");
                return unknown();
            }
        };
        let Some(_slot) = self.slot() else {
            self.count(kind, "busy");
            let mut response = HttpError::forwarding_full().response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(1u32));
            return response;
        };
        let started = Instant::now();
        let (outcome, response) = match kind {
            "upgrade" => self.upgrade(req, &address).await,
            _ => self.poll(req, body, &address, budget).await,
        };
        let outcome = match outcome {
            Outcome::Ok => {
                self.metrics
                    .forward_seconds
                    .get_or_create(&KindLabel { kind })
                    .observe(started.elapsed().as_secs_f64());
                "ok"
            }
            Outcome::Gone => "gone",
            Outcome::Failed => "failed",
        };
        self.count(kind, outcome);
        match response {
            Some(response) => response,
            None => unknown(),
        }
    }

    /// The value of `X-Forwarded-For` for the owner: what came in, and the
    /// peer of this hop.
    fn forwarded_for(req: &HttpRequest) -> Option<String> {
        let earlier: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect();
        let peer = req.peer_addr().map(|a| a.ip().to_string());
        let all: Vec<&str> = earlier.into_iter().chain(peer.as_deref()).collect();
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// A polling GET or POST, over HTTP.
    async fn poll(
        &self,
        req: &HttpRequest,
        body: web::Payload,
        address: &str,
        budget: Arc<crate::limits::InputBudget>,
    ) -> (Outcome, Option<HttpResponse>) {
        let s = &self.settings;
        // The body is held against the node's budget until the owner has
        // answered.
        let held = crate::limits::Held::new(budget);
        let (method, within, payload) = if req.method() == Method::POST {
            match polling::read_body(body, s.max_payload, s.body_timeout, &held).await {
                Ok(bytes) => (reqwest::Method::POST, s.body_timeout, bytes),
                Err(refused) => {
                    let error = match refused {
                        BodyRefused::TooLarge => {
                            self.metrics.limit_breach(crate::limits::Limit::MaxPayload.as_str());
                            HttpError::payload_too_large()
                        }
                        BodyRefused::OverBudget(_) => {
                            self.metrics.limit_breach(crate::limits::Limit::InputBudget.as_str());
                            HttpError::over_budget()
                        }
                        BodyRefused::Timeout => HttpError::body_timeout(),
                        BodyRefused::Broken => HttpError::of(ErrorCode::BadRequest),
                    };
                    let mut response = error.response();
                    // The rest of the body is not read: no reuse.
                    response
                        .head_mut()
                        .set_connection_type(actix_web::http::ConnectionType::Close);
                    return (Outcome::Failed, Some(response));
                }
            }
        } else {
            (reqwest::Method::GET, s.hold, bytes::Bytes::new())
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut request = self
            .client()
            .request(method, format!("http://{address}{target}"))
            .timeout(within)
            .header(FORWARDED, self.directory.tag().to_string());
        for (name, value) in req.headers() {
            if !not_passed(name.as_str()) {
                request = request.header(name.as_str(), value.as_bytes());
            }
        }
        if let Some(chain) = Self::forwarded_for(req) {
            request = request.header("x-forwarded-for", chain);
        }
        if !payload.is_empty() {
            request = request.body(payload);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) if e.is_connect() => return (Outcome::Gone, None),
            Err(e) => {
                tracing::debug!(owner = address, "forwarded request failed: {e}");
                return (Outcome::Failed, None);
            }
        };
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = HttpResponse::build(status);
        for (name, value) in answer.headers() {
            if !not_passed(name.as_str()) {
                response.append_header((name.as_str(), value.as_bytes()));
            }
        }
        match answer.bytes().await {
            Ok(bytes) => (Outcome::Ok, Some(response.body(bytes))),
            Err(e) => {
                tracing::debug!(owner = address, "forwarded answer broke: {e}");
                (Outcome::Failed, None)
            }
        }
    }

    /// The request head of `req`, for the owner at `address`.
    fn upgrade_head(&self, req: &HttpRequest, address: &str) -> Vec<u8> {
        use std::io::Write as _;
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = Vec::with_capacity(1024);
        let _ = write!(head, "GET {target} HTTP/1.1\r\nhost: {address}\r\n");
        for (name, value) in req.headers() {
            let name = name.as_str();
            if name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case(FORWARDED)
            {
                continue;
            }
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some(chain) = Self::forwarded_for(req) {
            let _ = write!(head, "x-forwarded-for: {chain}\r\n");
        }
        let _ = write!(head, "{FORWARDED}: {}\r\n\r\n", self.directory.tag());
        head
    }

    /// A WebSocket upgrade, relayed.
    async fn upgrade(&self, req: &HttpRequest, address: &str) -> (Outcome, Option<HttpResponse>) {
        let Some(handover) = Handover::of(req) else {
            // Not through the upgrade hook: not an upgrade at all.
            return (Outcome::Failed, Some(HttpError::of(ErrorCode::BadRequest).response()));
        };
        let head = self.upgrade_head(req, address);
        let gauge = self.metrics.relayed_websockets.clone();
        let s = &self.settings;
        match relay::open(address, &head, s.connect, s.body_timeout, Box::new(Relayed::new(gauge))).await {
            Ok(Opened::Upgraded { headers, relay }) => {
                let mut response = HttpResponse::SwitchingProtocols();
                response.upgrade("websocket");
                for (name, value) in headers {
                    if !not_passed(&name) {
                        response.insert_header((name.as_str(), value));
                    }
                }
                handover.relay_to(relay);
                (Outcome::Ok, Some(response.finish()))
            }
            Ok(Opened::Refused {
                status,
                content_type,
                body,
            }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut response = HttpResponse::build(status);
                if let Some(content_type) = content_type {
                    response.insert_header((header::CONTENT_TYPE, content_type));
                }
                (Outcome::Ok, Some(response.body(body)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                ) =>
            {
                (Outcome::Gone, None)
            }
            Err(e) => {
                tracing::debug!(owner = address, "relayed upgrade failed: {e}");
                (Outcome::Failed, None)
            }
        }
    }
}

/// Counts a relayed WebSocket while it lives.
struct Relayed(prometheus_client::metrics::gauge::Gauge);

impl Relayed {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_and_per_node_headers_are_not_passed() {
        for name in [
            "Connection",
            "host",
            "Access-Control-Allow-Origin",
            "vary",
            FORWARDED,
            "X-Forwarded-For",
        ] {
            assert!(not_passed(name), "{name}");
        }
        for name in [
            "content-type",
            "cookie",
            "user-agent",
            "origin",
            "set-cookie",
            "cache-control",
        ] {
            assert!(!not_passed(name), "{name}");
        }
    }
}
