//! A minimal Socket.IO v5 / Engine.IO v4 client over WebSocket: just what
//! the scenarios need (connect to "/", answer pings, acked events).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The sending half of a session.
pub type Tx = SplitSink<WebSocketStream<TcpStream>, Message>;
/// The receiving half of a session.
pub type Rx = SplitStream<WebSocketStream<TcpStream>>;

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

/// A connected Socket.IO session and how long its handshake took.
pub struct Session {
    pub tx: Tx,
    pub rx: Rx,
    /// TCP connect to the Socket.IO CONNECT answer.
    pub handshake: Duration,
}

/// Opens a session on `/` as the `n`th connection.
pub async fn connect(target: &Target, n: usize) -> Result<Session> {
    let started = Instant::now();
    let socket = TcpSocket::new_v4()?;
    if !target.sources.is_empty() {
        let ip = target.sources[n % target.sources.len()];
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(target.addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{}{}?EIO=4&transport=websocket", target.host, target.path);
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("WebSocket handshake")?;
    let (mut tx, mut rx) = ws.split();
    let open = next_text(&mut rx, &mut tx).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:.80}");
    }
    tx.send(Message::text("40")).await?;
    let connected = next_text(&mut rx, &mut tx).await?;
    if !connected.starts_with("40") {
        bail!("expected CONNECT, got {connected:.80}");
    }
    Ok(Session {
        tx,
        rx,
        handshake: started.elapsed(),
    })
}

/// The next text frame that is not a ping (pings are answered).
pub async fn next_text(rx: &mut Rx, tx: &mut Tx) -> Result<String> {
    loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => tx.send(Message::text("3")).await?,
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Emits `event` with `arg` and an ack id, and waits for the ack.
pub async fn request(s: &mut Session, id: u64, event: &str, arg: serde_json::Value) -> Result<serde_json::Value> {
    let frame = format!("42{id}{}", serde_json::json!([event, arg]));
    s.tx.send(Message::text(frame)).await?;
    let prefix = format!("43{id}");
    loop {
        let t = next_text(&mut s.rx, &mut s.tx).await?;
        if let Some(body) = t.strip_prefix(&prefix) {
            let v: serde_json::Value = serde_json::from_str(body)?;
            return Ok(v.get(0).cloned().unwrap_or_default());
        }
    }
}

/// Subscribes a session to `room`.
pub async fn subscribe(s: &mut Session, room: &str) -> Result<()> {
    let reply = request(s, 1, "subscribe", serde_json::json!({ "room": room })).await?;
    if reply["ok"] != true {
        bail!("subscribe {room} refused: {reply}");
    }
    Ok(())
}

/// A publish frame: event `m` with `[sent_at_us, step]` as its data.
pub fn publish_frame(ack_id: u64, room: &str, sent_at_us: u64, step: usize) -> String {
    format!(r#"42{ack_id}["publish",{{"room":"{room}","event":"m","data":[{sent_at_us},{step}]}}]"#)
}

/// The `(sent_at_us, step)` of a delivered `42["m",[t,step]]` frame.
pub fn parse_delivery(frame: &str) -> Option<(u64, usize)> {
    let rest = frame.strip_prefix(r#"42["m",["#)?;
    let (t, rest) = rest.split_once(',')?;
    let step = rest.split(']').next()?;
    Some((t.parse().ok()?, step.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_parse_back() {
        let frame = publish_frame(7, "r1", 123_456, 3);
        assert_eq!(frame, r#"427["publish",{"room":"r1","event":"m","data":[123456,3]}]"#);
        assert_eq!(parse_delivery(r#"42["m",[123456,3]]"#), Some((123_456, 3)));
        assert_eq!(parse_delivery(r#"42["x",[1,2]]"#), None);
    }
}
