//! HTTP entry: parse the request into a [`RequestInfo`], then one exhaustive
//! `match` dispatches to a transport. Errors become Engine.IO JSON bodies.

pub mod cap;
pub mod error;
pub mod forward;
pub mod peer;
pub mod request;

use std::sync::Arc;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::{excerpt, AuditEvent, AuditKind, AuditReason};
use crate::conn::messages::AttachProbe;
use crate::conn::{Connection, EngineShared, PeerInfo};
use crate::engineio::{ErrorCode, TransportKind};
use crate::limits::{Guards, Limit};
use crate::net::IpRanges;
use crate::transport::{polling, websocket};
pub use error::HttpError;
pub use request::RequestInfo;

/// One Engine.IO endpoint (the Socket.IO path, or the raw echo path).
pub struct Endpoint {
    /// What its sessions share.
    pub shared: Arc<EngineShared>,
    /// The engine settings, for request checks.
    pub engine: crate::config::EngineSettings,
    /// `[websocket]`: subprotocols, fragment limit.
    pub websocket: crate::config::WebSocketSettings,
    /// Origins that may open sessions (`server.allowed_origins`); empty = any.
    pub allowed_origins: Vec<String>,
    /// `server.max_connections`, shared by every endpoint.
    pub cap: Arc<cap::SessionCap>,
    /// Set while the node drains: new sessions are refused.
    pub draining: Arc<cap::Draining>,
    /// With `cluster.sticky = false`: serves requests for other nodes'
    /// sessions through them.
    pub forward: Option<Arc<forward::Forwarder>>,
}

/// Who sent `req`.
fn peer_info(req: &HttpRequest, trusted: &IpRanges) -> PeerInfo {
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    let client = peer::client_addr(trusted, req.peer_addr(), forwarded);
    PeerInfo {
        client: client.map(|c| c.to_string()),
        ip: client.map(peer::ClientAddr::ip),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        slot: None,
    }
}

/// The limits a new session passes before anything is allocated for it:
/// its `Origin` (`server.allowed_origins`), then its client address's
/// handshake rate and open sessions (`[limits]`). A session admitted is
/// counted against its address by the slot put in `peer`. `Some`: the
/// refusal to answer with.
fn refusal(
    endpoint: &Endpoint,
    req: &HttpRequest,
    peer: &mut PeerInfo,
    transport: TransportKind,
) -> Option<HttpResponse> {
    let guards = &endpoint.shared.guards;
    let breach = |limit: Limit, detail: String, excerpt_of: &[u8]| {
        guards.breach(limit, || {
            let mut event = Guards::event(limit, detail);
            event.transport = Some(transport.as_str());
            peer.tag(&mut event);
            event.excerpt = Some(excerpt(excerpt_of));
            event
        });
    };
    if !endpoint.allowed_origins.is_empty() {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|o| endpoint.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !allowed {
                breach(Limit::Origin, "origin not allowed".into(), origin.as_bytes());
                return Some(HttpError::of(ErrorCode::Forbidden).response());
            }
        }
    }
    let ip = peer.ip?;
    match guards.admit_session(ip, std::time::Instant::now()) {
        Ok(slot) => {
            peer.slot = slot.map(Arc::new);
            None
        }
        Err(refusal) => {
            let (message, detail) = match refusal.limit {
                Limit::ConnectionsPerIp => (
                    "Too many sessions from this address",
                    format!(
                        "{} sessions open from this address",
                        guards.settings().connections_per_ip
                    ),
                ),
                _ => (
                    "Too many handshakes from this address",
                    format!(
                        "more than {} handshakes per second from this address",
                        guards.settings().handshakes_per_second
                    ),
                ),
            };
            breach(refusal.limit, detail, req.query_string().as_bytes());
            let mut response = HttpError::too_many(message).response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(refusal.retry_after_s));
            Some(response)
        }
    }
}

/// The refusal of a handshake beyond `server.max_connections`: 503 with
/// `Retry-After`, counted and (sampled) audited as the other limits are.
fn at_capacity(endpoint: &Endpoint, req: &HttpRequest, peer: &PeerInfo, transport: TransportKind) -> HttpResponse {
    let limit = Limit::MaxConnections;
    endpoint.shared.guards.breach(limit, || {
        let detail = format!("{} sessions open on this node", endpoint.cap.max());
        let mut event = Guards::event(limit, detail);
        event.transport = Some(transport.as_str());
        peer.tag(&mut event);
        event.excerpt = Some(excerpt(req.query_string().as_bytes()));
        event
    });
    let mut response = HttpError::at_capacity().response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(cap::RETRY_AFTER_S));
    response
}

/// Middleware: refuses a request whose target or head is above
/// `limits.max_url_len` / `limits.max_header_bytes` (414 / 431, with an
/// Engine.IO error body), before any handler sees it.
pub async fn head_limits(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    use actix_web::http::StatusCode;
    let Some(guards) = req.app_data::<web::Data<Guards>>().cloned() else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    let settings = guards.settings();
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    // Each header line: name, ": ", value, CRLF.
    let head: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let refused = if target > settings.max_url_len {
        Some((
            Limit::UrlLength,
            HttpError::head_too_large(StatusCode::URI_TOO_LONG, "URI too long"),
            format!("request target of {target} bytes (limit {})", settings.max_url_len),
        ))
    } else if head > settings.max_header_bytes {
        Some((
            Limit::HeaderSize,
            HttpError::head_too_large(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request header fields too large",
            ),
            format!("request headers of {head} bytes (limit {})", settings.max_header_bytes),
        ))
    } else {
        None
    };
    let Some((limit, error, detail)) = refused else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    let peer = peer_info(req.request(), &guards.trusted);
    guards.breach(limit, || {
        let mut event = Guards::event(limit, detail);
        peer.tag(&mut event);
        event.excerpt = Some(excerpt(req.path().as_bytes()));
        event
    });
    let mut response = error.response();
    // The rest of the request is not read: the connection cannot be reused.
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(response).map_into_boxed_body())
}

/// Records a refused Engine.IO handshake (`audit.record_handshake_refusals`).
fn refused(
    shared: &EngineShared,
    req: &HttpRequest,
    peer: &PeerInfo,
    transport: Option<TransportKind>,
    code: ErrorCode,
) {
    if !shared.audit.records(AuditKind::HandshakeRefused) {
        return;
    }
    let mut event = AuditEvent::new(
        AuditKind::HandshakeRefused,
        AuditReason::engineio(code),
        format!("{} {} refused: {}", req.method(), req.path(), code.message()),
    );
    event.transport = transport.map(TransportKind::as_str);
    peer.tag(&mut event);
    event.excerpt = Some(excerpt(req.query_string().as_bytes()));
    shared.audit.record(event);
}

/// A polling POST to the session `entry` (`sid`): its body's packets
/// reach the connection, or the refusal says why not.
async fn polling_post(
    endpoint: &Endpoint,
    req: &HttpRequest,
    body: web::Payload,
    entry: crate::conn::Entry,
    sid: &str,
    peer: &PeerInfo,
) -> HttpResponse {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let content_length = header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let binary = header(header::CONTENT_TYPE).is_some_and(|v| v.starts_with("application/octet-stream"));
    let shared = &endpoint.shared;
    let max = endpoint.engine.max_payload;
    let guards = &shared.guards;
    let timeout = std::time::Duration::from_millis(guards.settings().body_timeout_ms);
    let budget = guards.input.clone();
    let refused = match polling::post(entry, body, content_length, binary, max, timeout, budget).await {
        Ok(()) => return polling::ok_text("ok".into()),
        Err(polling::PostRefused::OverBudget) => {
            shared.metrics.limit_breach(Limit::InputBudget.as_str());
            HttpError::over_budget()
        }
        Err(polling::PostRefused::TooLarge) => {
            shared.metrics.limit_breach(Limit::MaxPayload.as_str());
            HttpError::payload_too_large()
        }
        Err(polling::PostRefused::Code(code)) => code.into(),
        Err(polling::PostRefused::Timeout) => {
            guards.breach(Limit::BodyTimeout, || {
                let detail = format!("polling POST body not complete within {} ms", timeout.as_millis());
                let mut event = Guards::event(Limit::BodyTimeout, detail);
                event.sid = Some(sid.to_owned());
                event.transport = Some(TransportKind::Polling.as_str());
                peer.tag(&mut event);
                event
            });
            let mut response = HttpError::body_timeout().response();
            // The rest of the body is not read: no reuse.
            response
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            return response;
        }
    };
    refused.response()
}

/// Handles any request on an Engine.IO path.
pub async fn handle(endpoint: web::Data<Endpoint>, req: HttpRequest, body: web::Payload) -> HttpResponse {
    let mut peer = peer_info(&req, &endpoint.shared.guards.trusted);
    let info = match RequestInfo::parse(&req, &endpoint.engine) {
        Ok(info) => info,
        Err(err) => {
            refused(&endpoint.shared, &req, &peer, None, err.code);
            return err.response();
        }
    };
    let shared = &endpoint.shared;
    if info.sid.is_none() && endpoint.draining.is_on() {
        return HttpError::shutting_down().response();
    }
    // A new session's place under `server.max_connections`, held until
    // this handler has registered it (or failed to).
    let _admission = if info.sid.is_none() {
        let Some(admission) = endpoint.cap.admit() else {
            return at_capacity(&endpoint, &req, &peer, info.transport);
        };
        if let Some(response) = refusal(&endpoint, &req, &mut peer, info.transport) {
            return response;
        }
        Some(admission)
    } else {
        None
    };
    if let (Some(sid), Some(forward)) = (info.sid.as_deref(), &endpoint.forward) {
        if shared.registry.get(sid).is_none() && !forward::Forwarder::forwarded(&req) {
            let budget = shared.guards.input.clone();
            return forward.serve(&req, body, sid, info.transport, budget).await;
        }
    }
    let result = match (info.transport, info.sid.as_deref(), &info.method) {
        (TransportKind::Polling, None, &Method::GET) => Ok(polling::handshake(shared, peer)),
        (TransportKind::Polling, Some(sid), &Method::GET) => match shared.registry.get(sid) {
            None => Err(ErrorCode::UnknownSid.into()),
            Some(entry) => polling::get(entry).await.map(polling::ok_text).map_err(HttpError::of),
        },
        (TransportKind::Polling, Some(sid), &Method::POST) => match shared.registry.get(sid) {
            None => Err(ErrorCode::UnknownSid.into()),
            Some(entry) => return polling_post(&endpoint, &req, body, entry, sid, &peer).await,
        },
        (TransportKind::Polling, Some(_), _) => Err(ErrorCode::BadRequest.into()),
        (TransportKind::WebSocket, sid, _) => {
            let result = websocket_request(&endpoint, &req, body, sid, peer.clone()).await;
            if let (Err(err), None) = (&result, sid) {
                refused(shared, &req, &peer, Some(TransportKind::WebSocket), err.code);
            }
            result
        }
        // A handshake that is not a GET was refused by `RequestInfo::parse`.
        (TransportKind::Polling, None, _) => Err(ErrorCode::BadHandshakeMethod.into()),
    };
    result.unwrap_or_else(|err| err.response())
}

async fn websocket_request(
    endpoint: &Endpoint,
    req: &HttpRequest,
    body: web::Payload,
    sid: Option<&str>,
    peer: PeerInfo,
) -> Result<HttpResponse, HttpError> {
    let shared = &endpoint.shared;
    // Look the session up before accepting, so that an unknown sid is a
    // plain 400 and no socket is opened for it.
    let entry = match sid {
        Some(sid) => Some(shared.registry.get(sid).ok_or(ErrorCode::UnknownSid)?),
        None => None,
    };
    let backlog = shared.limits.max_buffered;
    let mut accepted = websocket::accept(
        req,
        body,
        &endpoint.websocket,
        endpoint.engine.max_payload,
        backlog,
        shared.metrics.clone(),
        shared.guards.input.clone(),
    )
    .ok_or(ErrorCode::BadRequest)?;
    // unwrap: the writer is taken once, here.
    let writer = accepted.writer().unwrap();
    match entry {
        None => {
            let reader = accepted.reader();
            let (_, addr) = Connection::start(shared.clone(), TransportKind::WebSocket, Some(writer), reader, peer);
            Ok(accepted.run(addr))
        }
        // Spec: a second WebSocket for a session (already upgraded or
        // upgrading) is accepted, then closed at once: the actor closes the
        // writer it refuses, and the 101 response carries the close frame.
        Some(entry) => match entry.addr.send(AttachProbe { writer }).await {
            Ok(Ok(())) => Ok(accepted.run(entry.addr)),
            Ok(Err(_)) => Ok(accepted.response()),
            Err(_) => Err(ErrorCode::UnknownSid.into()),
        },
    }
}
