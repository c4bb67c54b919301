//! Parsing an Engine.IO request into a small struct before dispatch.

use actix_web::http::Method;
use actix_web::HttpRequest;
use serde::Deserialize;

use super::error::{ErrorCode, HttpError};
use crate::config::EngineSettings;
use crate::engineio::TransportKind;

/// The protocol version this server speaks (spec: `EIO=4`).
pub const PROTOCOL_VERSION: &str = "4";

/// What an Engine.IO request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The transport named by `transport`.
    pub transport: TransportKind,
    /// The session, absent on a handshake.
    pub sid: Option<String>,
    /// GET, POST, …
    pub method: Method,
    /// The request asks for a WebSocket upgrade (`Upgrade: websocket`).
    pub upgrade: bool,
}

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl RequestInfo {
    /// Checks the query (`EIO`, `transport`, `sid`) in the reference server's
    /// order: protocol version, transport, then method for a handshake.
    pub fn parse(req: &HttpRequest, engine: &EngineSettings) -> Result<RequestInfo, HttpError> {
        let query = serde_urlencoded::from_str::<Query>(req.query_string())
            .map_err(|_| HttpError::of(ErrorCode::BadRequest))?;
        if query.eio.as_deref() != Some(PROTOCOL_VERSION) {
            return Err(ErrorCode::UnsupportedProtocolVersion.into());
        }
        // Matching on the exact names only: `constructor`, `__proto__` and the
        // like are unknown transports like any other.
        let transport = match query.transport.as_deref() {
            Some("polling") => TransportKind::Polling,
            Some("websocket") => TransportKind::WebSocket,
            _ => return Err(ErrorCode::UnknownTransport.into()),
        };
        if !engine.allows(transport) {
            return Err(ErrorCode::UnknownTransport.into());
        }
        let upgrade = req
            .headers()
            .get(actix_web::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let info = RequestInfo {
            transport,
            sid: query.sid.filter(|s| !s.is_empty()),
            method: req.method().clone(),
            upgrade,
        };
        if info.sid.is_none() && info.method != Method::GET {
            return Err(ErrorCode::BadHandshakeMethod.into());
        }
        Ok(info)
    }
}
