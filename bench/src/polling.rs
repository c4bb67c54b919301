//! `poll-rtt`: the round trip of an acknowledged event over Engine.IO
//! long-polling, the transport whose every request a cluster must route to
//! the session's node (sticky sessions, or forwarding when requests are
//! spread: docs/clustering.md, "Without sticky sessions").
//!
//! Each session is what a browser's polling transport is: one keep-alive
//! HTTP/1.1 connection that always has a GET waiting for packets, and one
//! that sends POSTs, one at a time (Engine.IO refuses overlapping POSTs).
//! A session publishes (`42<id>["publish",…]`, roomcast's protocol) at its
//! share of `--rate` and measures from the POST's first byte until the ack
//! (`43<id>…`) is read from a GET's answer. Pings are answered with a POST
//! as the client must. A publish waits for the previous one's ack, so a
//! server slower than the rate lowers the rate, not the latency figures;
//! the run reports the round trips it made per second.
//!
//! Sticky sessions through a balancer need the balancer's cookie back on
//! every request: the session keeps the cookies of the handshake's answer
//! and sends them, as a browser does; with round robin there are none.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};
use tokio::task::spawn_local;

use crate::client::Target;
use crate::stats::{new_histogram, quantiles_ms};

/// Engine.IO v4's packet separator in a polling payload (protocol, "Payload").
const SEPARATOR: u8 = 0x1e;
/// Longest a single HTTP request may take (a long-poll is held up to the
/// server's ping interval, 25 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One keep-alive HTTP/1.1 connection to the target.
struct HttpConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// What a request got back.
struct Response {
    status: u16,
    /// `name=value` of every Set-Cookie.
    cookies: Vec<String>,
    body: Vec<u8>,
}

impl HttpConn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads its response; reconnects when the
    /// previous response closed the connection.
    async fn request(
        &mut self,
        target: &Target,
        method: &str,
        query: &str,
        cookie: &str,
        body: &[u8],
    ) -> Result<Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(target, method, query, cookie, body))
            .await
            .map_err(|_| anyhow!("{method} {query}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// [`Self::request`] without its time bound.
    async fn exchange(
        &mut self,
        target: &Target,
        method: &str,
        query: &str,
        cookie: &str,
        body: &[u8],
    ) -> Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await.context("TCP connect")?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let mut head = format!("{method} {}?{query} HTTP/1.1\r\nHost: {}\r\n", target.path, target.host);
        if !cookie.is_empty() {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        // unwrap: set just above when it was None.
        let stream = self.stream.as_mut().unwrap();
        stream.write_all(&out).await?;
        let response = read_response(stream, &mut self.buf).await;
        match response {
            Ok((response, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// Reads one response (Content-Length or chunked body) from `stream`,
/// keeping what follows it in `buf`; also says whether the server closes
/// the connection after it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Response, bool)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status line in {head:.80}"))?;
    let (mut length, mut chunked, mut close, mut cookies) = (None, false, false, Vec::new());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "set-cookie" => cookies.extend(value.split(';').next().map(str::to_string)),
            _ => {}
        }
    }
    buf.drain(..head_end);
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("chunk size {size_text:?}"))?;
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let length = length.ok_or_else(|| anyhow!("a response without Content-Length: {head:.200}"))?;
        while buf.len() < length {
            fill(stream, buf).await?;
        }
        buf.drain(..length).collect()
    };
    Ok((Response { status, cookies, body }, close))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("the server closed the connection");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The acks a session waits for, by id.
type Waiting = Rc<RefCell<HashMap<u64, oneshot::Sender<Instant>>>>;

/// A polling session's POST side, shared by the publisher and the pong.
struct Poster {
    conn: Mutex<HttpConn>,
    target: Target,
    query: String,
    cookie: String,
}

impl Poster {
    async fn post(&self, packet: &str) -> Result<()> {
        let mut conn = self.conn.lock().await;
        let r = conn
            .request(&self.target, "POST", &self.query, &self.cookie, packet.as_bytes())
            .await?;
        if r.status != 200 {
            bail!("POST answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }
}

/// Opens a polling session on `/` (handshake, CONNECT, its answer) and
/// returns its POST side and the GET connection, with the CONNECT answered.
async fn open(target: &Target) -> Result<(Rc<Poster>, HttpConn, String)> {
    let mut get = HttpConn::new(target.addr);
    let r = get
        .request(target, "GET", "EIO=4&transport=polling", "", b"")
        .await
        .context("handshake")?;
    if r.status != 200 || r.body.first() != Some(&b'0') {
        bail!("handshake answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    let open: Value = serde_json::from_slice(&r.body[1..]).context("the open packet")?;
    let sid = open["sid"]
        .as_str()
        .ok_or_else(|| anyhow!("no sid in {open}"))?
        .to_string();
    let cookie = r.cookies.join("; ");
    let query = format!("EIO=4&transport=polling&sid={sid}");
    let poster = Rc::new(Poster {
        conn: Mutex::new(HttpConn::new(target.addr)),
        target: target.clone(),
        query: query.clone(),
        cookie,
    });
    poster.post("40").await.context("CONNECT")?;
    let r = get.request(target, "GET", &query, &poster.cookie, b"").await?;
    if r.status != 200 || !r.body.starts_with(b"40") {
        bail!(
            "expected the CONNECT answer, got {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok((poster, get, query))
}

/// Keeps a GET waiting on `get` until the session ends: hands every ack to
/// its waiter (with the time it was read) and answers pings.
async fn poll_loop(mut get: HttpConn, poster: Rc<Poster>, query: String, waiting: Waiting) -> Result<()> {
    loop {
        let r = get.request(&poster.target, "GET", &query, &poster.cookie, b"").await?;
        let read_at = Instant::now();
        if r.status != 200 {
            bail!("GET answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        for packet in r.body.split(|&b| b == SEPARATOR) {
            match packet {
                b"2" => {
                    let poster = poster.clone();
                    // The pong goes out beside the next GET.
                    spawn_local(async move { poster.post("3").await });
                }
                b"1" => bail!("the server closed the session"),
                p if p.starts_with(b"43") => {
                    let digits: String = p[2..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .map(|&b| b as char)
                        .collect();
                    if let Some(tx) = digits.parse().ok().and_then(|id: u64| waiting.borrow_mut().remove(&id)) {
                        let _ = tx.send(read_at);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `poll-rtt`: `sessions` polling sessions, the `i`th on `targets[i % len]`,
/// publishing `rate` times a second in total for `duration` (after one
/// unmeasured second).
pub async fn poll_rtt(targets: &[Target], sessions: usize, rate: f64, duration: Duration) -> Result<Value> {
    let mut opened = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let target = &targets[i % targets.len()];
        opened.push(open(target).await.with_context(|| format!("session {i}"))?);
    }
    let latencies = Rc::new(RefCell::new(new_histogram()));
    let done = Rc::new(std::cell::Cell::new(0u64));
    let failures: Rc<RefCell<Vec<String>>> = Rc::default();
    let interval = Duration::from_secs_f64(sessions as f64 / rate.max(0.001));
    let warm_up = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warm_up;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    let mut pollers = Vec::new();
    for (i, (poster, get, query)) in opened.into_iter().enumerate() {
        let waiting: Waiting = Rc::default();
        pollers.push(spawn_local({
            let (poster, waiting, failures) = (poster.clone(), waiting.clone(), failures.clone());
            async move {
                if let Err(e) = poll_loop(get, poster, query, waiting.clone()).await {
                    failures.borrow_mut().push(format!("session {i} GET: {e:#}"));
                }
                // Whoever waits for an ack learns at once that none will come.
                waiting.borrow_mut().clear();
            }
        }));
        let (latencies, done, failures) = (latencies.clone(), done.clone(), failures.clone());
        tasks.push(spawn_local(async move {
            // Sessions start spread over one interval, not all at once.
            let mut next = started + interval.mul_f64(i as f64 / sessions as f64);
            let mut id = 1u64;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                if !failures.borrow().is_empty() {
                    return;
                }
                let (tx, rx) = oneshot::channel();
                waiting.borrow_mut().insert(id, tx);
                let packet = format!(r#"42{id}["publish",{{"room":"rtt-{i}","event":"m","data":[{id}]}}]"#);
                let sent = Instant::now();
                let result = async {
                    poster.post(&packet).await?;
                    tokio::time::timeout(REQUEST_TIMEOUT, rx)
                        .await
                        .map_err(|_| anyhow!("no ack within {REQUEST_TIMEOUT:?}"))?
                        .map_err(|_| anyhow!("the GET side ended"))
                }
                .await;
                match result {
                    Ok(read_at) => {
                        if sent >= measure_from {
                            let us = read_at.saturating_duration_since(sent).as_micros() as u64;
                            latencies.borrow_mut().saturating_record(us.max(1));
                            done.set(done.get() + 1);
                        }
                    }
                    Err(e) => {
                        failures.borrow_mut().push(format!("session {i} publish {id}: {e:#}"));
                        return;
                    }
                }
                id += 1;
                next += interval;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    for p in &pollers {
        p.abort();
    }
    let failures = failures.borrow();
    if let Some(first) = failures.first() {
        bail!("{} sessions failed; first: {first}", failures.len());
    }
    let h = latencies.borrow();
    let (p50, p99, max) = quantiles_ms(&h);
    Ok(json!({
        "scenario": "poll-rtt",
        "sessions": sessions,
        "rate": rate,
        "seconds": duration.as_secs_f64(),
        "round_trips": done.get(),
        "round_trips_per_s": done.get() as f64 / duration.as_secs_f64(),
        "rtt_p50_ms": p50,
        "rtt_p99_ms": p99,
        "rtt_max_ms": max,
    }))
}
