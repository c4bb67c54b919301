//! HTTP entry: parse the request into a [`RequestInfo`], then one exhaustive
//! `match` dispatches to a transport. Errors become Engine.IO JSON bodies.

pub mod error;
pub mod peer;
pub mod request;

use std::sync::Arc;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::audit::{excerpt, AuditEvent, AuditKind, AuditReason};
use crate::conn::messages::AttachProbe;
use crate::conn::{Connection, EngineShared, PeerInfo};
use crate::engineio::{ErrorCode, TransportKind};
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
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted: peer::TrustedProxies,
}

/// Who sent `req`.
fn peer_info(req: &HttpRequest, trusted: &peer::TrustedProxies) -> PeerInfo {
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    PeerInfo {
        addr: req.peer_addr(),
        client: trusted.client(req.peer_addr(), forwarded),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
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
    event.peer = peer.client.clone();
    event.user_agent = peer.user_agent.clone();
    event.excerpt = Some(excerpt(req.query_string().as_bytes()));
    shared.audit.record(event);
}

/// Handles any request on an Engine.IO path.
pub async fn handle(endpoint: web::Data<Endpoint>, req: HttpRequest, body: web::Payload) -> HttpResponse {
    let peer = peer_info(&req, &endpoint.trusted);
    let info = match RequestInfo::parse(&req, &endpoint.engine) {
        Ok(info) => info,
        Err(err) => {
            refused(&endpoint.shared, &req, &peer, None, err.code);
            return err.response();
        }
    };
    let shared = &endpoint.shared;
    if info.sid.is_none() && shared.ops.draining() {
        return HttpError::shutting_down().response();
    }
    let result = match (info.transport, info.sid.as_deref(), &info.method) {
        (TransportKind::Polling, None, &Method::GET) => Ok(polling::handshake(shared, peer)),
        (TransportKind::Polling, Some(sid), &Method::GET) => match shared.registry.get(sid) {
            None => Err(ErrorCode::UnknownSid.into()),
            Some(entry) => polling::get(entry).await.map(polling::ok_text).map_err(HttpError::of),
        },
        (TransportKind::Polling, Some(sid), &Method::POST) => match shared.registry.get(sid) {
            None => Err(ErrorCode::UnknownSid.into()),
            Some(entry) => {
                let content_length = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let binary = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/octet-stream"));
                let max = endpoint.engine.max_payload;
                match polling::post(entry, body, content_length, binary, max).await {
                    Ok(()) => Ok(polling::ok_text("ok".into())),
                    Err(polling::PostRefused::TooLarge) => Err(HttpError::payload_too_large()),
                    Err(polling::PostRefused::Code(code)) => Err(code.into()),
                }
            }
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
    let mut accepted = websocket::accept(req, body, &endpoint.websocket, endpoint.engine.max_payload, backlog)
        .ok_or(ErrorCode::BadRequest)?;
    // unwrap: the writer is taken once, here.
    let writer = accepted.writer().unwrap();
    match entry {
        None => {
            let (_, addr) = Connection::start(shared.clone(), TransportKind::WebSocket, Some(writer), peer);
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
