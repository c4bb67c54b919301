//! A raw WebSocket echo endpoint (`server.ws_echo_path`, off by default) for
//! the Autobahn|Testsuite fuzzingclient (`scripts/autobahn`): it tests the
//! WebSocket layer the Engine.IO transport stands on, with no Engine.IO
//! framing on top.
//!
//! The socket is read exactly as [`super::websocket::accept`] reads it: the
//! same handshake checks, the same frame guard and the same reader
//! ([`WsReader`]), frames and messages capped at `engine.max_payload`; the
//! replies are written through actix-ws. Then:
//! - a text or binary message is sent back as received (the whole message,
//!   continuations joined), in order;
//! - a ping is answered with a pong carrying its payload; pongs are ignored;
//! - a close frame is answered with a close frame with the same code (none
//!   when it had none), then the connection ends;
//! - a text message that is not UTF-8 closes with 1007, a frame or message
//!   above `max_payload` with 1009, any other protocol error (reserved bits,
//!   unknown opcodes, a fragmented or too long control frame, a bad close
//!   code or reason, continuation out of place, an unmasked frame) with 1002
//!   (RFC 6455 §7.4.1); a peer that vanished gets nothing.
//!
//! Messages are echoed one at a time: the next is read once the previous one
//! is queued for writing, so a client that does not read is not read either.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Session};
use futures_util::StreamExt as _;

use crate::conn::messages::{WsEnd, WsMessage, WsRead};
use crate::transport::websocket::WsReader;

/// What the echo endpoint needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WsEcho {
    /// What the read side refuses (a frame or message above
    /// `engine.max_payload` closes with 1009).
    pub limits: crate::transport::websocket::ReadLimits,
}

/// Accepts a WebSocket on the echo path and starts echoing. A request that
/// is not a valid WebSocket handshake gets 400.
pub async fn handle(req: HttpRequest, body: web::Payload, echo: web::Data<WsEcho>) -> HttpResponse {
    // The handshake of `websocket::accept`, without the Engine.IO session
    // around it.
    let Some((response, session, reader)) = crate::transport::websocket::handshake(&req, body, echo.limits) else {
        return HttpResponse::BadRequest().finish();
    };
    actix_web::rt::spawn(echo_loop(session, reader));
    response
}

async fn echo_loop(mut session: Session, mut reader: WsReader) {
    let close = loop {
        let sent = match reader.next().await {
            None => break None,
            Some(WsRead::Message(read)) => match read.message {
                WsMessage::Text(text) => session.text(text).await,
                WsMessage::Binary(bytes) => session.binary(bytes).await,
                WsMessage::Ping(bytes) => session.pong(&bytes).await,
            },
            Some(WsRead::End(ended)) => {
                break match reader.close_frame() {
                    // RFC 6455 §5.5.1: answer a close frame with one, echoing the code.
                    Some(code) => Some(code.map(reply)),
                    None => code_for(&ended.end).map(|code| Some(reply(code))),
                };
            }
        };
        if sent.is_err() {
            return; // the connection is gone
        }
    };
    if let Some(reason) = close {
        // Ends the response body once the close frame is written, and with
        // it the connection.
        let _ = session.close(reason).await;
    }
}

fn reply(code: CloseCode) -> CloseReason {
    CloseReason {
        code,
        description: None,
    }
}

/// The close code for a read error (RFC 6455 §7.4.1), as the Engine.IO
/// transport classifies it; `None` when the peer is gone and nothing can
/// be sent.
#[cfg(test)]
fn close_code(err: &actix_ws::ProtocolError) -> Option<CloseCode> {
    code_for(&crate::transport::websocket::classify(err))
}

/// The close code for how the reading ended; `None` when the peer is gone.
fn code_for(end: &WsEnd) -> Option<CloseCode> {
    match end {
        WsEnd::TooLarge => Some(CloseCode::Size),
        WsEnd::InvalidUtf8 => Some(CloseCode::Invalid),
        WsEnd::MessageTimeout => Some(CloseCode::Policy),
        WsEnd::OverBudget => Some(CloseCode::Again),
        WsEnd::Closed | WsEnd::WriteTimeout | WsEnd::QueueFull => None,
        WsEnd::Error(_) => Some(CloseCode::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_ws::ProtocolError;
    use std::io;

    #[test]
    fn read_errors_map_to_rfc_6455_close_codes() {
        let io_err = |kind, msg: &str| ProtocolError::Io(io::Error::new(kind, msg.to_string()));
        assert_eq!(close_code(&ProtocolError::Overflow), Some(CloseCode::Size));
        assert_eq!(
            close_code(&io_err(io::ErrorKind::Other, "Exceeded maximum continuation size")),
            Some(CloseCode::Size)
        );
        assert_eq!(
            close_code(&io_err(
                io::ErrorKind::InvalidData,
                "Received a frame with non-zero reserved bits"
            )),
            Some(CloseCode::Protocol)
        );
        assert_eq!(
            close_code(&io_err(io::ErrorKind::InvalidData, "invalid utf-8 sequence")),
            Some(CloseCode::Invalid)
        );
        assert_eq!(close_code(&io_err(io::ErrorKind::UnexpectedEof, "eof")), None);
        assert_eq!(close_code(&ProtocolError::BadOpCode), Some(CloseCode::Protocol));
        assert_eq!(close_code(&ProtocolError::UnmaskedFrame), Some(CloseCode::Protocol));
        assert_eq!(
            close_code(&ProtocolError::InvalidLength(126)),
            Some(CloseCode::Protocol)
        );
        assert_eq!(
            close_code(&ProtocolError::ContinuationNotStarted),
            Some(CloseCode::Protocol)
        );
    }
}
