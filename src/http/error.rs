//! HTTP errors with the Engine.IO JSON error body `{"code":N,"message":"…"}`.
//!
//! The codes and messages are defined with the protocol, in
//! [`crate::engineio::ErrorCode`].

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

pub use crate::engineio::ErrorCode;

/// An HTTP error response for an Engine.IO request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Status (400, 403, 413, 503).
    pub status: StatusCode,
    /// Engine.IO error code.
    pub code: ErrorCode,
    /// Message in the body.
    pub message: &'static str,
}

impl HttpError {
    /// The standard response for a code: 403 for Forbidden, 400 otherwise.
    pub const fn of(code: ErrorCode) -> Self {
        let status = match code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code,
            message: code.message(),
        }
    }

    /// 413 for a body above `maxPayload`.
    pub const fn payload_too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::BadRequest,
            message: "Payload too large",
        }
    }

    /// 503 for a handshake while the server drains: the client retries,
    /// behind a balancer on another node.
    pub const fn shutting_down() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Forbidden,
            message: "Server shutting down",
        }
    }

    /// 503 for a handshake beyond `server.max_connections` (send
    /// `Retry-After`): the status of the drain's refusal, as both send the
    /// client elsewhere for now, with code 3 as the other limits have.
    pub const fn at_capacity() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::BadRequest,
            message: "Server at capacity",
        }
    }

    /// 429 for a handshake over a per-address limit (send `Retry-After`).
    pub const fn too_many(message: &'static str) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::BadRequest,
            message,
        }
    }

    /// A request head over a limit: 414 for the target, 431 for the headers.
    pub const fn head_too_large(status: StatusCode, message: &'static str) -> Self {
        Self {
            status,
            code: ErrorCode::BadRequest,
            message,
        }
    }

    /// 408 for a polling POST body that did not arrive in time.
    pub const fn body_timeout() -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            code: ErrorCode::BadRequest,
            message: "Request body timeout",
        }
    }

    /// 503 for a polling POST body the node's input budget could not hold
    /// (`limits.input_budget_bytes`); the session was closed.
    pub const fn over_budget() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::BadRequest,
            message: "Server busy",
        }
    }

    /// 503 for a request for another node's session beyond
    /// `cluster.max_forwarded` (send `Retry-After`).
    pub const fn forwarding_full() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::BadRequest,
            message: "Server busy forwarding",
        }
    }

    /// The response.
    pub fn response(&self) -> HttpResponse {
        HttpResponse::build(self.status)
            .content_type("application/json")
            .body(format!(
                r#"{{"code":{},"message":"{}"}}"#,
                self.code as u8, self.message
            ))
    }
}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        HttpError::of(code)
    }
}
