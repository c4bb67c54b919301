//! Redis in tests: a private `redis-server` on a free port (started,
//! killed and started again by the test), and the Socket.IO helpers the
//! cluster tests share.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use super::eio::{next, open, send, Ws};
use super::{within, TestServer, SIO, SOON};

/// The adapter protocol a test's nodes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Classic,
    /// Sharded pub/sub on one Redis server, one channel per public room.
    Sharded,
    /// Sharded pub/sub, one channel per namespace.
    ShardedStatic,
    /// `@socket.io/redis-streams-adapter`'s protocol: broadcasts in a stream.
    Streams,
}

impl Proto {
    /// Makes `s` speak this protocol.
    pub fn apply(self, s: &mut roomcast::config::Settings) {
        use roomcast::config::{RedisMode, SubscriptionMode};
        match self {
            Proto::Classic => {}
            Proto::Sharded => s.redis.mode = RedisMode::Sharded,
            Proto::ShardedStatic => {
                s.redis.mode = RedisMode::Sharded;
                s.redis.subscription_mode = SubscriptionMode::Static;
            }
            Proto::Streams => {
                s.redis.mode = RedisMode::Streams;
                // Short blocking reads, so that a reader sees a hung Redis
                // as soon as the tests' short command timeouts would.
                s.redis.stream_block_ms = 500;
            }
        }
    }
}

/// Runs each scenario (an `async fn(Proto)` of the test file, which imports
/// [`Proto`]) once per protocol, each as its own test. (Unused by the test
/// files that share `common` without being cluster tests.)
#[allow(unused_macros)]
macro_rules! in_every_mode {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[actix_web::test]
            async fn classic() {
                super::$scenario(super::Proto::Classic).await
            }
            #[actix_web::test]
            async fn sharded() {
                super::$scenario(super::Proto::Sharded).await
            }
            #[actix_web::test]
            async fn sharded_static() {
                super::$scenario(super::Proto::ShardedStatic).await
            }
            #[actix_web::test]
            async fn streams() {
                super::$scenario(super::Proto::Streams).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use in_every_mode;

/// A redis-server of its own on a free port, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        // unwrap: loopback has free ports.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.spawn();
        redis
    }

    /// Starts it (again) on its port.
    pub fn spawn(&mut self) {
        self.child = Some(redis_server(self.port, &[]));
        await_listening(self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-server on `port` that keeps nothing on disk, with `extra` arguments.
pub fn redis_server(port: u16, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server could not be started ({e}): install it (Debian: apt-get install redis-server)")
        })
}

/// Waits (bounded) until something listens on `port`.
pub fn await_listening(port: u16) {
    let deadline = std::time::Instant::now() + SOON;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the node's adapter is (or is no longer) subscribed.
pub async fn connected(server: &TestServer, want: bool) {
    within("the adapter state", async {
        while server.cluster.connected.load(Ordering::Relaxed) != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A Socket.IO client in "/" over WebSocket.
pub async fn client(server: &TestServer) -> Ws {
    let (mut ws, _) = open(server, SIO).await;
    send(&mut ws, "40").await;
    let connected = text(&mut ws).await;
    assert!(connected.starts_with("40{"), "{connected}");
    ws
}

/// The next text frame that is not a ping (pings are answered); a binary
/// frame as `<binary …>`.
pub async fn text(ws: &mut Ws) -> String {
    loop {
        match next(ws).await {
            Message::Text(t) if t.as_str() == "2" => send(ws, "3").await,
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return format!("<binary {b:?}>"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sends event `event` with `arg` and ack id `id`; its ack.
pub async fn request(ws: &mut Ws, id: u32, event: &str, arg: serde_json::Value) -> String {
    send(ws, format!("42{id}{}", serde_json::json!([event, arg]))).await;
    let reply = text(ws).await;
    assert!(reply.starts_with(&format!("43{id}")), "{reply}");
    reply
}

/// Subscribes to `room` (which must succeed).
pub async fn subscribe(ws: &mut Ws, room: &str) {
    let reply = request(ws, 1, "subscribe", serde_json::json!({"room": room})).await;
    assert_eq!(reply, r#"431[{"ok":true}]"#);
}

/// Publishes event "chat" with `data` to `room`.
pub async fn publish(ws: &mut Ws, room: &str, data: serde_json::Value) {
    let arg = serde_json::json!({"room": room, "event": "chat", "data": data});
    request(ws, 2, "publish", arg).await;
}
