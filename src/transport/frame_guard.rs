//! Reads WebSocket frame headers as the bytes of a connection go by, to
//! refuse a frame that declares more than `max_payload` before any of it is
//! held. actix-http's frame parser only compares a frame's length with its
//! limit once the whole frame is buffered, so a client announcing a 2^40-byte
//! frame and feeding it slowly would make the server hold everything it sent
//! (hundreds of MiB were seen on one connection).
//!
//! The guard does not copy or change the bytes: it follows the frame
//! boundaries (header, then a payload it skips) and ends the stream with
//! [`PayloadError::Overflow`] at the first header over the limit.
//!
//! It also times messages: from the first byte of a message (its first
//! frame header) to its last, at most `message_timeout`. A frame whose
//! payload trickles in, or fragments that never end, would otherwise keep
//! their buffer forever; the stream then ends with an I/O error of kind
//! `TimedOut` (see [`is_message_timeout`]).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

use crate::limits::{Held, OverBudget};

/// A frame header is at most 2 + 8 (length) + 4 (mask) bytes.
const MAX_HEADER: usize = 14;

/// The size of the frame header `bytes` starts with (RFC 6455 §5.2: two
/// bytes, the extended length, the mask key) and the payload length it
/// declares; `None` while the header is not all there.
pub fn frame_header(bytes: &[u8]) -> Option<(usize, u64)> {
    let [_, second, ..] = bytes else { return None };
    let short = second & 0x7f;
    let extended = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header = 2 + extended + if second & 0x80 != 0 { 4 } else { 0 };
    if bytes.len() < header {
        return None;
    }
    let len = match short {
        126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        // unwrap: the header holds these 8 bytes.
        127 => u64::from_be_bytes(bytes[2..10].try_into().unwrap()),
        n => u64::from(n),
    };
    Some((header, len))
}

/// Follows frame boundaries through a byte stream.
#[derive(Debug)]
pub struct FrameScanner {
    max: u64,
    header: [u8; MAX_HEADER],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// Most frames one message may arrive in (0 = no limit).
    max_fragments: u32,
    /// Frames of the fragmented message under way (0 = none).
    fragments: u32,
    /// The current frame is a data frame (text, binary, continuation).
    data_frame: bool,
    /// Payload bytes of data frames seen so far (control frames are small
    /// and answered at once): what the socket's reader and the
    /// connection's mailbox hold until the connection takes the message.
    data_bytes: u64,
}

/// Why the scanner refused the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A frame header declared more bytes than the limit.
    TooLarge(u64),
    /// A message came in more fragments than the limit.
    TooManyFragments,
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2:
    /// it must be 0): a protocol error, not a size.
    InvalidLength,
}

impl FrameScanner {
    /// Refuses frames whose payload is above `max` bytes, and messages in
    /// more than `max_fragments` frames (0 = any number).
    pub fn new(max: usize, max_fragments: u32) -> Self {
        Self {
            max: max as u64,
            header: [0; MAX_HEADER],
            have: 0,
            skip: 0,
            max_fragments,
            fragments: 0,
            data_frame: false,
            data_bytes: 0,
        }
    }

    /// Payload bytes of data frames seen so far, in all.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Follows `data`, the next bytes of the connection.
    pub fn scan(&mut self, mut data: &[u8]) -> Result<(), Refused> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
                if self.data_frame {
                    self.data_bytes += n;
                }
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            let Some((_, len)) = frame_header(&self.header[..self.have]) else {
                continue;
            };
            if len >> 63 == 1 {
                return Err(Refused::InvalidLength);
            }
            if len > self.max {
                return Err(Refused::TooLarge(len));
            }
            self.count_fragment()?;
            self.skip = len;
            self.have = 0;
            self.data_frame = self.header[0] & 0x0f < 8;
        }
        Ok(())
    }
}

impl FrameScanner {
    /// Whether a message is under way: a frame header or payload partly
    /// read, or a fragmented message not finished.
    pub fn mid_message(&self) -> bool {
        self.have > 0 || self.skip > 0 || self.fragments > 0
    }

    /// Counts the frame whose header was just read against the fragments
    /// of its message (control frames may come between them and do not
    /// count).
    fn count_fragment(&mut self) -> Result<(), Refused> {
        let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
        if opcode >= 8 {
            return Ok(());
        }
        self.fragments = match (opcode, fin) {
            (0, _) => self.fragments.saturating_add(1),
            (_, true) => 0,
            (_, false) => 1,
        };
        if self.max_fragments > 0 && self.fragments > self.max_fragments {
            return Err(Refused::TooManyFragments);
        }
        if fin {
            self.fragments = 0;
        }
        Ok(())
    }
}

/// A request body stream with a [`FrameScanner`] on it.
pub struct FrameGuard<S> {
    inner: S,
    scanner: FrameScanner,
    failed: bool,
    /// Longest a message may take (`None` = no limit).
    message_timeout: Option<Duration>,
    /// When the message under way must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The socket's share of the node's input budget: grown here by the
    /// data bytes that pass, shrunk by the connection as it takes each
    /// message.
    held: Option<Arc<Held>>,
    /// Data bytes already added to `held`.
    counted: u64,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` against frames above `max` bytes, messages in more
    /// than `max_fragments` frames and messages taking longer than
    /// `message_timeout` to arrive; with `held`, the data bytes that pass
    /// count against the node's input budget until the connection takes
    /// them, and bytes that would go past it end the stream (see
    /// [`is_over_budget`]).
    pub fn new(
        inner: S,
        max: usize,
        max_fragments: u32,
        message_timeout: Option<Duration>,
        held: Option<Arc<Held>>,
    ) -> Self {
        Self {
            inner,
            scanner: FrameScanner::new(max, max_fragments),
            failed: false,
            message_timeout,
            deadline: None,
            held,
            counted: 0,
        }
    }
}

/// The error a [`FrameGuard`] ends its stream with when the node's input
/// budget cannot hold the message under way.
fn over_budget_error(over: OverBudget) -> PayloadError {
    PayloadError::Io(std::io::Error::new(std::io::ErrorKind::OutOfMemory, over))
}

/// Whether `e` is the error of [`over_budget_error`].
pub fn is_over_budget(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::OutOfMemory)
}

/// The error a [`FrameGuard`] ends its stream with when a message took
/// longer than its timeout.
fn message_timeout_error() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "websocket message not complete within websocket.message_timeout_ms",
    ))
}

/// Whether `e` is the guard's refusal of a frame that breaks RFC 6455
/// (a length with its most significant bit set).
pub fn is_protocol_violation(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput)
}

/// Whether `e` is the error of [`message_timeout_error`].
pub fn is_message_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Err(refused) = this.scanner.scan(&chunk) {
                    this.failed = true;
                    let error = match refused {
                        Refused::InvalidLength => PayloadError::Io(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "frame length with its most significant bit set",
                        )),
                        Refused::TooLarge(_) | Refused::TooManyFragments => PayloadError::Overflow,
                    };
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some(held) = &this.held {
                    let seen = this.scanner.data_bytes();
                    let more = usize::try_from(seen - this.counted).unwrap_or(usize::MAX);
                    if let Err(over) = held.grow(more) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(over_budget_error(over))));
                    }
                    this.counted = seen;
                }
                match (this.scanner.mid_message(), this.message_timeout) {
                    (true, Some(timeout)) if this.deadline.is_none() => {
                        this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                    }
                    (false, _) => this.deadline = None,
                    _ => {}
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(message_timeout_error())))
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u64, masked: bool) -> Vec<u8> {
        let m = if masked { 0x80 } else { 0 };
        let mut h = vec![0x82];
        match len {
            n if n < 126 => h.push(m | n as u8),
            n if n <= 0xffff => {
                h.push(m | 126);
                h.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                h.push(m | 127);
                h.extend_from_slice(&n.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    #[test]
    fn follows_frames_of_every_length_form_split_anywhere() {
        let mut bytes = Vec::new();
        for len in [0u64, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            bytes.extend(header(len, true));
            bytes.extend(std::iter::repeat_n(0xaa, len as usize));
        }
        // A frame just above the limit comes last.
        bytes.extend(header(100_001, true));
        for chunk in [1, 2, 3, 7, 13, 4096, bytes.len()] {
            let mut s = FrameScanner::new(100_000, 0);
            let mut result = Ok(());
            for piece in bytes.chunks(chunk) {
                result = s.scan(piece);
                if result.is_err() {
                    break;
                }
            }
            assert_eq!(result, Err(Refused::TooLarge(100_001)), "chunks of {chunk}");
        }
    }

    #[test]
    fn refuses_a_huge_declared_length_before_its_payload() {
        let mut s = FrameScanner::new(1_000_000, 0);
        assert_eq!(s.scan(&header(1 << 40, true)), Err(Refused::TooLarge(1 << 40)));
        let mut s = FrameScanner::new(1_000_000, 0);
        assert_eq!(s.scan(&header(u64::MAX, false)), Err(Refused::InvalidLength));
    }

    #[test]
    fn counts_the_fragments_of_a_message_not_its_control_frames() {
        let frame = |first: u8, payload: &[u8]| {
            let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
            f.extend_from_slice(payload);
            f
        };
        let mut s = FrameScanner::new(1000, 3);
        // Three fragments with a ping between them, then a whole message.
        for f in [
            frame(0x01, b"a"),
            frame(0x89, b""),
            frame(0x00, b"b"),
            frame(0x80, b"c"),
            frame(0x81, b"d"),
        ] {
            assert_eq!(s.scan(&f), Ok(()));
        }
        // A fourth fragment is one too many.
        for f in [frame(0x02, b"a"), frame(0x00, b"b"), frame(0x00, b"c")] {
            assert_eq!(s.scan(&f), Ok(()));
        }
        assert_eq!(s.scan(&frame(0x80, b"d")), Err(Refused::TooManyFragments));
        // 0 = no limit.
        let mut s = FrameScanner::new(1000, 0);
        assert_eq!(s.scan(&frame(0x01, b"a")), Ok(()));
        for _ in 0..10_000 {
            assert_eq!(s.scan(&frame(0x00, b"")), Ok(()));
        }
    }

    #[test]
    fn counts_the_payload_bytes_of_data_frames_only() {
        let frame_head = |first: u8, len: u8| vec![first, 0x80 | len, 0, 0, 0, 0];
        let mut s = FrameScanner::new(1000, 0);
        // A first fragment of 100 bytes, 40 of them in.
        s.scan(&frame_head(0x02, 100)).unwrap();
        assert_eq!(s.data_bytes(), 0);
        s.scan(&[0u8; 40]).unwrap();
        assert_eq!(s.data_bytes(), 40);
        s.scan(&[0u8; 60]).unwrap();
        assert_eq!(s.data_bytes(), 100);
        // A ping between fragments is not counted.
        s.scan(&frame_head(0x89, 4)).unwrap();
        s.scan(&[0u8; 4]).unwrap();
        assert_eq!(s.data_bytes(), 100);
        // The last fragment, and a whole message.
        let mut rest = frame_head(0x80, 50);
        rest.extend([0u8; 50]);
        rest.extend(frame_head(0x81, 10));
        rest.extend([0u8; 10]);
        s.scan(&rest).unwrap();
        assert_eq!(s.data_bytes(), 160);
    }

    #[test]
    fn frames_within_the_limit_pass() {
        let mut s = FrameScanner::new(10, 0);
        for _ in 0..3 {
            let mut f = header(10, true);
            f.extend([0u8; 10]);
            assert_eq!(s.scan(&f), Ok(()));
        }
    }
}
