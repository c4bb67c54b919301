//! A WebSocket relayed to the node that holds its session
//! (`[cluster] sticky = false`).
//!
//! An upgrade request for another node's session is sent on to that node
//! as it came, over a TCP connection of its own; the owner answers it as
//! any upgrade (its Connection actor judges the probe and the upgrade, as
//! for a client of its own). When it switches protocols, its 101 goes back
//! to the client and from then on the two sockets are spliced: bytes are
//! copied both ways, unread, until either side ends. The WebSocket thus
//! stays on the owner for its whole life, one hop further than a direct
//! one (moving a live session between nodes would need its whole state,
//! Socket.IO's included, to travel; relaying needs none). A refusal is
//! passed back as the owner gave it.
//!
//! What a relay holds: two sockets and a 4 KiB buffer each way.

use std::any::Any;
use std::io;
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest response head accepted from the owner.
const MAX_HEAD: usize = 16 * 1024;
/// Largest refusal body passed back (an Engine.IO error is tens of bytes).
const MAX_BODY: usize = 64 * 1024;
/// Each direction's copy buffer while spliced.
const BUFFER: usize = 4 * 1024;

/// The owner's side of a switched connection, ready to splice.
pub struct Relay {
    owner: TcpStream,
    /// What the owner sent after its 101 (its first frames, if any).
    leftover: Bytes,
    /// Kept for the relay's life (a gauge's count, …).
    _guard: Box<dyn Any>,
}

/// The owner's answer to an upgrade request.
pub enum Opened {
    /// 101: answer the client with these headers, then splice.
    Upgraded {
        /// The owner's response headers (`Sec-WebSocket-Accept`, the
        /// subprotocol, …), hop-by-hop ones left out.
        headers: Vec<(String, Vec<u8>)>,
        /// The owner's side.
        relay: Relay,
    },
    /// Anything else, to pass back.
    Refused {
        /// Its status.
        status: u16,
        /// Its `Content-Type`.
        content_type: Option<Vec<u8>>,
        /// Its body (up to 64 KiB).
        body: Bytes,
    },
}

/// Headers that describe one hop, not the answer.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "date",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Sends the upgrade request `head` (a whole request head, CRLF CRLF
/// included) to `address` and reads the answer's head, each step within
/// `within` (connecting within `connect`). `guard` lives as long as the
/// relay does.
pub async fn open(
    address: &str,
    head: &[u8],
    connect: Duration,
    within: Duration,
    guard: Box<dyn Any>,
) -> io::Result<Opened> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "the session's node did not answer in time");
    let mut owner = tokio::time::timeout(connect, TcpStream::connect(address))
        .await
        .map_err(|_| timed_out())??;
    owner.set_nodelay(true)?;
    let answer = async {
        owner.write_all(head).await?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if owner.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the session's node closed",
                ));
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let httparse::Status::Complete(len) = parsed else {
                if buf.len() > MAX_HEAD {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large"));
                }
                continue;
            };
            let status = response.code.unwrap_or(502);
            let kept: Vec<(String, Vec<u8>)> = response
                .headers
                .iter()
                .filter(|h| !hop_by_hop(h.name))
                .map(|h| (h.name.to_owned(), h.value.to_owned()))
                .collect();
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
            let rest = buf.split_off(len).freeze();
            return Ok((status, kept, length, rest));
        }
    };
    let (status, headers, length, rest) = tokio::time::timeout(within, answer).await.map_err(|_| timed_out())??;
    if status == 101 {
        return Ok(Opened::Upgraded {
            headers,
            relay: Relay {
                owner,
                leftover: rest,
                _guard: guard,
            },
        });
    }
    let content_type = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.clone());
    let want = length.unwrap_or(MAX_BODY).min(MAX_BODY);
    let mut body = BytesMut::from(&rest[..rest.len().min(want)]);
    let read_body = async {
        while body.len() < want {
            if owner.read_buf(&mut body).await? == 0 {
                break;
            }
        }
        io::Result::Ok(())
    };
    // A refusal whose body does not come in time is passed back without it.
    let _ = tokio::time::timeout(within, read_body).await;
    body.truncate(want);
    Ok(Opened::Refused {
        status,
        content_type,
        body: body.freeze(),
    })
}

/// Copies bytes both ways between the client and the owner until either
/// ends; `from_client` is what the client sent after its request.
pub async fn splice(mut client: TcpStream, from_client: Bytes, relay: Relay) {
    let Relay {
        mut owner, leftover, ..
    } = relay;
    let _ = client.set_nodelay(true);
    let started = async {
        owner.write_all(&from_client).await?;
        client.write_all(&leftover).await
    };
    if started.await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner, BUFFER, BUFFER).await;
}
