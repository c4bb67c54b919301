//! The second generator's subscribers (`--generator tungstenite`): each
//! one a tokio-tungstenite client in a task of its own that reads message
//! by message through tungstenite's buffer (4 KiB, as a typical Rust
//! client configures it) and takes the time of each message as it gets it.
//! The generator's own sessions (`client`) read every queued byte of a
//! socket in one read through a shared 256 KiB buffer instead; a server
//! whose latency depends on how its clients read shows it between the two.
//! Publishers stay the generator's own in both, so the publish side is the
//! same.

use anyhow::{bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::Target;

/// tungstenite's read buffer here: 4 KiB.
const READ_BUFFER: usize = 4096;

/// A subscribed session.
pub struct Subscriber {
    ws: WebSocketStream<TcpStream>,
}

/// The next text message that is not an Engine.IO ping (pings answered).
async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Result<String> {
    loop {
        match ws.next().await.context("the server closed the connection")?? {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(_) => bail!("the server closed the connection"),
            _ => {}
        }
    }
}

/// Opens a session on `/` as the `n`th connection (the WebSocket upgrade,
/// Engine.IO open, Socket.IO CONNECT) and subscribes it to `room`.
pub async fn subscribe(target: &Target, n: usize, room: &str) -> Result<Subscriber> {
    let stream = crate::client::tcp_connect(target, n).await?;
    let url = format!("ws://{}{}?EIO=4&transport=websocket", target.host, target.path);
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open:.80}");
    }
    ws.send(Message::text("40")).await?;
    let connected = next_text(&mut ws).await?;
    if !connected.starts_with("40") {
        bail!("expected CONNECT, got {connected:.80}");
    }
    let request = format!("421{}", serde_json::json!(["subscribe", { "room": room }]));
    ws.send(Message::text(request)).await?;
    loop {
        let t = next_text(&mut ws).await?;
        if let Some(body) = t.strip_prefix("431") {
            let reply: serde_json::Value = serde_json::from_str(body)?;
            if reply[0]["ok"] != true {
                bail!("subscribe {room} refused: {body}");
            }
            return Ok(Subscriber { ws });
        }
    }
}

impl Subscriber {
    /// Reads until the server closes the session (or the task is
    /// aborted), answering pings; each other text message goes to
    /// `on_text` with the time it was read (`now`, once per message).
    pub async fn hold(mut self, now: fn() -> u64, mut on_text: impl FnMut(&[u8], u64)) {
        while let Some(Ok(msg)) = self.ws.next().await {
            let pong = match msg {
                Message::Text(t) if t.as_str() == "2" => Message::text("3"),
                Message::Text(t) => {
                    on_text(t.as_bytes(), now());
                    continue;
                }
                Message::Close(_) => return,
                _ => continue,
            };
            if self.ws.send(pong).await.is_err() {
                return;
            }
        }
    }
}
