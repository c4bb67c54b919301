//! HTTP and WebSocket written and read by hand over TCP, so every byte is
//! under the test's control.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{within, TestServer};

/// The RFC 6455 §1.3 example `Sec-WebSocket-Key`.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid WebSocket handshake request for `target` (`Host: localhost`,
/// `RFC_KEY`).
pub fn ws_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Writes `request` on a new connection to the server.
pub async fn raw(server: &TestServer, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

/// Writes `request` on a new connection to the server and reads the response.
pub async fn raw_request(server: &TestServer, request: &str) -> RawResponse {
    read_response(raw(server, request.as_bytes()).await).await
}

/// A response read off a raw connection.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The body of a non-101 response (by `Content-Length`).
    pub body: Vec<u8>,
    pub stream: TcpStream,
    /// Bytes read past the head of a 101 (WebSocket frames).
    pub rest: Vec<u8>,
}

impl RawResponse {
    /// The header `name`, which must not be repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers_all(name).into_iter();
        let first = all.next();
        assert!(all.next().is_none(), "header {name} repeated:\n{}", self.head);
        first
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body, which must be UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// The connection after a 101: a WebSocket.
    pub fn into_ws(self) -> RawWs {
        RawWs {
            stream: self.stream,
            buf: self.rest,
        }
    }
}

/// Reads one HTTP response: the head, then, unless it is a 101, a body of
/// `Content-Length` bytes (none without the header).
pub async fn read_response(mut stream: TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = within("the response head", stream.read_buf(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut rest = buf.split_off(head_end);
    let mut body = Vec::new();
    if status != 101 {
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        while rest.len() < length {
            let n = within("the response body", stream.read_buf(&mut rest)).await.unwrap();
            assert!(n > 0, "closed before the response body");
        }
        body = std::mem::take(&mut rest);
    }
    RawResponse {
        status,
        head,
        headers,
        body,
        stream,
        rest,
    }
}

/// A WebSocket connection whose frames are read and written by hand.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read and not yet taken as a frame.
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Opens a WebSocket on `path` with `ws_request`; it must get a 101.
    pub async fn connect(server: &TestServer, path: &str) -> RawWs {
        let resp = raw_request(server, &ws_request(&format!("{path}?EIO=4&transport=websocket"))).await;
        assert!(resp.head.starts_with("HTTP/1.1 101"), "{}", resp.head);
        resp.into_ws()
    }

    /// Reads one (unmasked, unfragmented) server frame: its first byte (FIN,
    /// RSV bits, opcode) and payload. `None` if the connection ended first.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((b0, payload));
                }
            }
            let n = within("a frame", self.stream.read_buf(&mut self.buf)).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads one server frame: opcode and payload. `None` if the connection
    /// ended first.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let (b0, payload) = self.read_frame().await?;
        Some((b0 & 0x0f, payload))
    }

    /// Reads frames until a close frame; its status code.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((0x8, payload)) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Some((0x1, _)) => continue, // a text frame before the close
                Some(other) => panic!("unexpected frame {other:?}"),
                None => panic!("the connection ended without a close frame"),
            }
        }
    }

    /// Writes a client frame: FIN, `opcode`, masked with a fixed key unless
    /// `mask` is false.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], mask: bool) {
        self.send_frame_with(0x80 | opcode, payload, mask).await;
    }

    /// Writes bytes as they are (a hand-made frame header, say).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Writes a client frame whose first byte (FIN, RSV1-3, opcode) is
    /// `first`, masked unless `mask` is false.
    pub async fn send_frame_with(&mut self, first: u8, payload: &[u8], mask: bool) {
        self.stream
            .write_all(&client_frame(first, payload, mask))
            .await
            .unwrap();
    }
}

/// A client frame whose first byte (FIN, RSV1-3, opcode) is `first`, masked
/// unless `mask` is false; the payload is under 126 bytes.
pub fn client_frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first, payload.len() as u8 | if mask { 0x80 } else { 0 }];
    if mask {
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}
