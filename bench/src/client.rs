//! A minimal Socket.IO v5 / Engine.IO v4 client over WebSocket: just what
//! the scenarios need (connect to "/", answer pings, acked events).
//!
//! It is written to cost the load generator as little as possible per
//! delivered frame, so that the server, not the generator, is what a run
//! measures: one `read` takes whatever the kernel holds for a socket into a
//! scratch buffer shared by every session of the thread, every complete
//! frame in it is handled in place (no allocation per frame), and only a
//! partial frame at the end is kept by the session. It runs on one thread
//! (`Rc`, not `Arc`): the generator is pinned to one core anyway.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::net::{TcpSocket, TcpStream};

/// Bytes one read may take at most (the scratch buffer's size).
pub const SCRATCH: usize = 256 * 1024;

/// The scratch buffer reads go through, shared by the sessions of a thread.
pub type Scratch = Rc<RefCell<Vec<u8>>>;

/// A fresh scratch buffer.
pub fn scratch() -> Scratch {
    Rc::new(RefCell::new(vec![0; SCRATCH]))
}

/// Where to connect, and from which loopback source addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Engine.IO path, e.g. `/socket.io/`.
    pub path: String,
    /// Source addresses to spread connections over (empty = the kernel's choice).
    pub sources: Vec<Ipv4Addr>,
}

impl Target {
    /// Parses `http://host:port[/path/]`.
    pub fn parse(url: &str, sources: usize) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| anyhow!("{url}: expected http://host:port"))?;
        let (host, path) = match rest.find('/') {
            Some(i) if rest.len() > i + 1 => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], "/socket.io/".to_owned()),
            None => (rest, "/socket.io/".to_owned()),
        };
        let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} has no address"))?;
        let loopback = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let sources = if loopback && sources > 1 {
            (1..=sources as u8).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
        } else {
            vec![]
        };
        Ok(Self {
            addr,
            host: host.to_owned(),
            path,
            sources,
        })
    }
}

/// The write side of a session, shared by the tasks that write to it (a
/// publisher's sender and its reader, which answers pings). A lock keeps
/// one writer's frames whole.
#[derive(Clone)]
pub struct Writer {
    stream: Rc<TcpStream>,
    lock: Rc<tokio::sync::Mutex<()>>,
}

impl Writer {
    /// Writes already encoded frames.
    pub async fn send_raw(&self, mut bytes: &[u8]) -> Result<()> {
        let _held = self.lock.lock().await;
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes one text frame.
    pub async fn send_text(&self, text: &str) -> Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_frame(OP_TEXT, text.as_bytes(), &mut out);
        self.send_raw(&out).await
    }
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Appends a client frame (FIN set, masked) to `out`. The mask key is zero,
/// which leaves the payload as it is: a valid key (servers must unmask
/// whatever the key) that spares the generator a pass over every byte.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// A complete frame at the start of a buffer: (fin, opcode, payload range,
/// length of the whole frame).
type FrameAt = (bool, u8, std::ops::Range<usize>, usize);

/// The frame at the start of `data`, or `None` if it is not all there yet.
fn frame_at(data: &[u8]) -> Result<Option<FrameAt>> {
    if data.len() < 2 {
        return Ok(None);
    }
    let (fin, opcode) = (data[0] & 0x80 != 0, data[0] & 0x0f);
    if data[1] & 0x80 != 0 {
        bail!("the server sent a masked frame");
    }
    let (len, header) = match data[1] & 0x7f {
        126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
        127 if data.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[2..10]);
            (usize::try_from(u64::from_be_bytes(b)).context("frame too large")?, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if data.len() - header < len {
        return Ok(None);
    }
    Ok(Some((fin, opcode, header..header + len, header + len)))
}

/// A connected Socket.IO session.
pub struct Session {
    stream: Rc<TcpStream>,
    writer: Writer,
    /// Bytes of an incomplete frame, waiting for the rest.
    pending: Vec<u8>,
    /// A fragmented message being put together.
    fragments: Option<Vec<u8>>,
    /// Text frames read while waiting for another one (setup only).
    inbox: VecDeque<String>,
    /// TCP connect to the Socket.IO CONNECT answer.
    pub handshake: Duration,
}

impl Session {
    /// The write side.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Waits for bytes, then hands every complete text frame in them to
    /// `on_text` with the time they were read (µs on [`crate::scenarios`]'
    /// clock, taken once per read), answering Engine.IO and WebSocket
    /// pings. `Ok(false)`: the server closed the connection.
    pub async fn read_some(
        &mut self,
        scratch: &Scratch,
        now: fn() -> u64,
        on_text: &mut impl FnMut(&[u8], u64),
    ) -> Result<bool> {
        for text in std::mem::take(&mut self.inbox) {
            on_text(text.as_bytes(), now());
        }
        let mut replies = Vec::new();
        let open = loop {
            self.stream.readable().await?;
            let mut buf = scratch.borrow_mut();
            let n = match self.stream.try_read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            let at = now();
            let open = if self.pending.is_empty() {
                let (used, open) = self.frames(&buf[..n], at, &mut replies, on_text)?;
                self.pending.extend_from_slice(&buf[used..n]);
                open
            } else {
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend_from_slice(&buf[..n]);
                let (used, open) = self.frames(&pending, at, &mut replies, on_text)?;
                pending.drain(..used);
                self.pending = pending;
                open
            };
            break open;
        };
        if !replies.is_empty() {
            self.writer.send_raw(&replies).await?;
        }
        Ok(open)
    }

    /// Handles the complete frames at the start of `data`; returns the bytes
    /// they took and whether the connection is still open.
    fn frames(
        &mut self,
        data: &[u8],
        at: u64,
        replies: &mut Vec<u8>,
        on_text: &mut impl FnMut(&[u8], u64),
    ) -> Result<(usize, bool)> {
        let mut used = 0;
        while let Some((fin, opcode, payload, len)) = frame_at(&data[used..])? {
            let payload = &data[used..][payload];
            used += len;
            match opcode {
                OP_TEXT | OP_BINARY if fin => self.message(opcode, payload, at, replies, on_text)?,
                OP_TEXT | OP_BINARY => self.fragments = Some(payload.to_vec()),
                OP_CONTINUATION => {
                    let mut whole = self.fragments.take().context("a continuation frame without a start")?;
                    whole.extend_from_slice(payload);
                    if fin {
                        self.message(OP_TEXT, &whole, at, replies, on_text)?;
                    } else {
                        self.fragments = Some(whole);
                    }
                }
                OP_PING => encode_frame(OP_PONG, payload, replies),
                OP_CLOSE => return Ok((used, false)),
                _ => {}
            }
        }
        Ok((used, true))
    }

    fn message(
        &mut self,
        opcode: u8,
        payload: &[u8],
        at: u64,
        replies: &mut Vec<u8>,
        on_text: &mut impl FnMut(&[u8], u64),
    ) -> Result<()> {
        if opcode != OP_TEXT {
            return Ok(());
        }
        // Not checked for UTF-8 here: a delivery is parsed as bytes (the
        // check cost the generator more than the parse), and frames read as
        // text are converted by whoever wants a string.
        if payload == b"2" {
            encode_frame(OP_TEXT, b"3", replies);
        } else {
            on_text(payload, at);
        }
        Ok(())
    }

    /// The next text frame that is not a ping (pings are answered).
    pub async fn next_text(&mut self, scratch: &Scratch) -> Result<String> {
        loop {
            if let Some(text) = self.inbox.pop_front() {
                return Ok(text);
            }
            let mut got = Vec::new();
            let open = self
                .read_some(scratch, || 0, &mut |t: &[u8], _| {
                    got.push(String::from_utf8_lossy(t).into_owned())
                })
                .await?;
            self.inbox.extend(got);
            if !open && self.inbox.is_empty() {
                bail!("the server closed the connection");
            }
        }
    }

    /// Emits `event` with `arg` and an ack id, and waits for the ack.
    pub async fn request(
        &mut self,
        scratch: &Scratch,
        id: u64,
        event: &str,
        arg: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let frame = format!("42{id}{}", serde_json::json!([event, arg]));
        self.writer.send_text(&frame).await?;
        let prefix = format!("43{id}");
        loop {
            let t = self.next_text(scratch).await?;
            if let Some(body) = t.strip_prefix(&prefix) {
                let v: serde_json::Value = serde_json::from_str(body)?;
                return Ok(v.get(0).cloned().unwrap_or_default());
            }
        }
    }

    /// Subscribes to `room`.
    pub async fn subscribe(&mut self, scratch: &Scratch, room: &str) -> Result<()> {
        let reply = self
            .request(scratch, 1, "subscribe", serde_json::json!({ "room": room }))
            .await?;
        if reply["ok"] != true {
            bail!("subscribe {room} refused: {reply}");
        }
        Ok(())
    }
}

/// The `n`th connection's TCP connection to `target` (from its share of
/// the source addresses), Nagle off.
pub async fn tcp_connect(target: &Target, n: usize) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if !target.sources.is_empty() {
        let ip = target.sources[n % target.sources.len()];
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(target.addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a session on `/` as the `n`th connection: TCP, the WebSocket
/// upgrade, Engine.IO open, Socket.IO CONNECT.
pub async fn connect(target: &Target, n: usize, scratch: &Scratch) -> Result<Session> {
    let started = Instant::now();
    let stream = Rc::new(tcp_connect(target, n).await?);
    let writer = Writer {
        stream: stream.clone(),
        lock: Rc::default(),
    };
    // A fixed key: the generator does not check the server's answer to it
    // (the server's own tests do).
    let request = format!(
        "GET {}?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    );
    writer
        .send_raw(request.as_bytes())
        .await
        .context("WebSocket handshake")?;
    let mut head = Vec::new();
    let body_start = loop {
        stream.readable().await?;
        let mut buf = [0u8; 4096];
        match stream.try_read(&mut buf) {
            Ok(0) => bail!("the server closed the connection during the WebSocket handshake"),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            bail!("the WebSocket handshake response has no end");
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
        bail!("WebSocket handshake refused: {}", line.lines().next().unwrap_or(""));
    }
    let mut session = Session {
        stream,
        writer,
        pending: head[body_start..].to_vec(),
        fragments: None,
        inbox: VecDeque::new(),
        handshake: Duration::ZERO,
    };
    if !session.pending.is_empty() {
        let pending = std::mem::take(&mut session.pending);
        let mut replies = Vec::new();
        let mut got = Vec::new();
        let (used, _) = session.frames(&pending, 0, &mut replies, &mut |t: &[u8], _| {
            got.push(String::from_utf8_lossy(t).into_owned())
        })?;
        session.pending = pending[used..].to_vec();
        session.inbox.extend(got);
    }
    let open = session.next_text(scratch).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:.80}");
    }
    session.writer.send_text("40").await?;
    let connected = session.next_text(scratch).await?;
    if !connected.starts_with("40") {
        bail!("expected CONNECT, got {connected:.80}");
    }
    session.handshake = started.elapsed();
    Ok(session)
}

/// A publish frame: event `m` with `[sent_at_us, step]` as its data,
/// appended to `out` as a WebSocket frame.
pub fn publish_frame(ack_id: u64, room: &str, sent_at_us: u64, step: usize, out: &mut Vec<u8>) {
    let text = publish_text(ack_id, room, sent_at_us, step);
    encode_frame(OP_TEXT, text.as_bytes(), out);
}

fn publish_text(ack_id: u64, room: &str, sent_at_us: u64, step: usize) -> String {
    format!(r#"42{ack_id}["publish",{{"room":"{room}","event":"m","data":[{sent_at_us},{step}]}}]"#)
}

/// Ack ids of publishes: the step times this, plus the publish's number
/// within the step (the publisher's own count). Small ids stay for
/// requests (a subscribe is 1).
const ACK_STEP: u64 = 1_000_000_000;

/// The ack id of a publisher's `seq`th publish of `step`.
pub fn publish_ack_id(step: usize, seq: u64) -> u64 {
    (step as u64 + 1) * ACK_STEP + seq
}

/// The `(step, seq)` of a publish's ack, `43<id>[…]`.
pub fn parse_publish_ack(frame: &[u8]) -> Option<(usize, u64)> {
    let (id, _) = digits(frame.strip_prefix(b"43")?, b'[')?;
    let step = usize::try_from(id / ACK_STEP).ok()?.checked_sub(1)?;
    Some((step, id % ACK_STEP))
}

/// The `(sent_at_us, step)` of a delivered `42["m",[t,step]]` frame.
pub fn parse_delivery(frame: &[u8]) -> Option<(u64, usize)> {
    let rest = frame.strip_prefix(br#"42["m",["#)?;
    let (t, rest) = digits(rest, b',')?;
    let (step, _) = digits(rest, b']')?;
    Some((t, usize::try_from(step).ok()?))
}

/// The number at the start of `bytes`, ended by `end`, and what follows.
fn digits(bytes: &[u8], end: u8) -> Option<(u64, &[u8])> {
    let stop = bytes.iter().position(|&b| b == end)?;
    if stop == 0 || stop > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in &bytes[..stop] {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some((n, &bytes[stop + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_parse_back() {
        let text = publish_text(7, "r1", 123_456, 3);
        assert_eq!(text, r#"427["publish",{"room":"r1","event":"m","data":[123456,3]}]"#);
        assert_eq!(parse_delivery(br#"42["m",[123456,3]]"#), Some((123_456, 3)));
        let id = publish_ack_id(3, 41);
        assert_eq!(
            parse_publish_ack(format!(r#"43{id}[{{"ok":true}}]"#).as_bytes()),
            Some((3, 41))
        );
        assert_eq!(parse_publish_ack(br#"431[{"ok":true}]"#), None);
        assert_eq!(parse_publish_ack(br#"42["m",[1,2]]"#), None);
        assert_eq!(parse_delivery(br#"42["x",[1,2]]"#), None);
        assert_eq!(parse_delivery(br#"42["m",[12a,3]]"#), None);
        assert_eq!(parse_delivery(br#"42["m",[,3]]"#), None);
    }

    #[test]
    fn frames_are_cut_where_they_end() {
        // Server frames are not masked: 7-bit, 16-bit and 64-bit lengths.
        let mut data = vec![0x81, 1, b'2'];
        data.extend([0x81, 126, 0, 200]);
        data.extend(std::iter::repeat_n(b'x', 200));
        data.extend([0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]);
        let (fin, op, range, len) = frame_at(&data).unwrap().unwrap();
        assert_eq!((fin, op, range, len), (true, OP_TEXT, 2..3, 3));
        let (_, _, range, len) = frame_at(&data[3..]).unwrap().unwrap();
        assert_eq!((range, len), (4..204, 204));
        let (_, op, range, len) = frame_at(&data[207..]).unwrap().unwrap();
        assert_eq!((op, range, len), (OP_BINARY, 10..13, 13));
        // Any prefix of a frame is incomplete, not an error.
        for cut in 0..13 {
            assert!(frame_at(&data[207..207 + cut]).unwrap().is_none());
        }
        assert!(
            frame_at(&[0x81, 0x81, 0, 0, 0, 0, b'x']).is_err(),
            "masked server frame"
        );
    }

    #[test]
    fn client_frames_are_masked_with_their_length() {
        let mut out = Vec::new();
        encode_frame(OP_TEXT, b"40", &mut out);
        assert_eq!(out, [0x81, 0x82, 0, 0, 0, 0, b'4', b'0']);
        out.clear();
        encode_frame(OP_TEXT, &[b'a'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
    }
}
