//! The HTTP long-polling transport: the handshake GET, data GETs held until
//! the actor answers, and POSTs whose bodies are bounded before they are read.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use futures_util::StreamExt as _;
use tokio::sync::oneshot;

use crate::conn::messages::{CloseSession, PollGet, PollPost};
use crate::conn::{Connection, EngineShared, Entry, PeerInfo};
use crate::engineio::payload::encode_payload;
use crate::engineio::{CloseCause, ErrorCode, TransportKind};
use crate::reason::DisconnectReason;

/// A successful polling response: the payload as `text/plain`.
pub fn ok_text(body: String) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=UTF-8").body(body)
}

/// Opens a polling session and answers with its open packet.
pub fn handshake(shared: &Arc<EngineShared>, peer: PeerInfo) -> HttpResponse {
    let no_reader = None::<futures_util::stream::Empty<crate::conn::messages::WsRead>>;
    let (sid, _) = Connection::start(shared.clone(), TransportKind::Polling, None, no_reader, peer);
    let open = Connection::open_packet(shared, &sid, TransportKind::Polling);
    ok_text(encode_payload(&[open]))
}

/// A data GET: waits for the actor's answer.
pub async fn get(entry: Entry) -> Result<String, ErrorCode> {
    let (tx, rx) = oneshot::channel();
    entry
        .addr
        .send(PollGet { reply: tx })
        .await
        .map_err(|_| ErrorCode::UnknownSid)?;
    rx.await.map_err(|_| ErrorCode::UnknownSid)?
}

/// Why a POST was refused before the actor saw it.
pub enum PostRefused {
    /// An Engine.IO error (400).
    Code(ErrorCode),
    /// The body exceeds `maxPayload` (413).
    TooLarge,
    /// The body did not arrive within `limits.body_timeout_ms` (408).
    Timeout,
    /// The node's input budget could not hold the body (503; the session
    /// is closed).
    OverBudget,
}

/// A POST: one at a time per session, body bounded by `max_payload`,
/// `application/octet-stream` refused (v4 polling bodies are text).
pub async fn post(
    entry: Entry,
    body: web::Payload,
    content_length: Option<usize>,
    binary: bool,
    max_payload: usize,
    body_timeout: std::time::Duration,
    budget: std::sync::Arc<crate::limits::InputBudget>,
) -> Result<(), PostRefused> {
    if entry
        .post_busy
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Spec: a second active POST is an error that closes the session.
        let cause = CloseCause::new(DisconnectReason::TransportError, "overlapping polling POST");
        entry.addr.do_send(CloseSession(cause));
        return Err(PostRefused::Code(ErrorCode::BadRequest));
    }
    struct Release<'a>(&'a Entry);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.post_busy.store(false, Ordering::Release);
        }
    }
    let _release = Release(&entry);

    // The client gets the error in the response: the session ends at once.
    let close = |reason, detail: String| {
        entry
            .addr
            .do_send(CloseSession(CloseCause::new(reason, detail).at_once()))
    };
    if binary {
        close(
            DisconnectReason::ParseError,
            "polling POST with Content-Type application/octet-stream (v4 payloads are text)".into(),
        );
        return Err(PostRefused::Code(ErrorCode::BadRequest));
    }
    let too_large = || {
        close(
            DisconnectReason::ForcedClose,
            format!("polling POST above maxPayload ({max_payload} bytes)"),
        );
        PostRefused::TooLarge
    };
    if content_length.is_some_and(|n| n > max_payload) {
        return Err(too_large());
    }
    // The body counts against the node's input budget while it is read
    // (and until the session has taken it).
    let held = crate::limits::Held::new(budget);
    let buf = match read_body(body, max_payload, body_timeout, &held).await {
        Ok(buf) => buf,
        Err(BodyRefused::Broken) => return Err(PostRefused::Code(ErrorCode::BadRequest)),
        // A body that stalls is given up on; the session is not affected.
        Err(BodyRefused::Timeout) => return Err(PostRefused::Timeout),
        Err(BodyRefused::TooLarge) => return Err(too_large()),
        Err(BodyRefused::OverBudget(over)) => {
            close(DisconnectReason::ForcedClose, format!("polling POST refused: {over}"));
            return Err(PostRefused::OverBudget);
        }
    };
    entry
        .addr
        .send(PollPost { body: buf })
        .await
        .map_err(|_| PostRefused::Code(ErrorCode::UnknownSid))?
        .map_err(PostRefused::Code)
}

/// Why a request body was not read whole.
#[derive(Debug)]
pub enum BodyRefused {
    /// The client's side broke.
    Broken,
    /// Longer than the most allowed.
    TooLarge,
    /// Not complete in time.
    Timeout,
    /// The node's input budget could not hold it.
    OverBudget(crate::limits::OverBudget),
}

/// Reads a request body of at most `max` bytes within `within`, holding it
/// in `held` (the node's input budget) as it grows.
pub async fn read_body(
    mut body: web::Payload,
    max: usize,
    within: std::time::Duration,
    held: &crate::limits::Held,
) -> Result<bytes::Bytes, BodyRefused> {
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| BodyRefused::Broken)?;
            if buf.len() + chunk.len() > max {
                return Err(BodyRefused::TooLarge);
            }
            held.set(buf.len() + chunk.len()).map_err(BodyRefused::OverBudget)?;
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| BodyRefused::Timeout)??;
    Ok(buf.freeze())
}
