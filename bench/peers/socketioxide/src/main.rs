//! The socketioxide peer of roomcast's benchmarks: socketioxide serving the
//! same application protocol as roomcast (docs/protocol.md) for what
//! roomcast-bench uses: `subscribe` and `publish`, acknowledged with
//! `{ok:true}`, the publisher excluded. (`recipients` is left out of the
//! publish ack: socketioxide has no constant-time room size, and the load
//! generator does not read it.)
//!
//!   roomcast-bench-socketioxide-peer [port]
//!
//! Prints "listening on 127.0.0.1:<port>" once it accepts connections.

use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;

fn refuse(code: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": code}})
}

async fn on_connect(socket: SocketRef) {
    socket.on("subscribe", |socket: SocketRef, Data::<Value>(arg), ack: AckSender| async move {
        let reply = match arg.get("room").and_then(Value::as_str) {
            Some(room) => {
                socket.join(room.to_owned());
                json!({"ok": true})
            }
            None => refuse("bad_request"),
        };
        ack.send(&reply).ok();
    });
    socket.on(
        "publish",
        |socket: SocketRef, Data::<Value>(arg), ack: AckSender| async move {
            let room = arg.get("room").and_then(Value::as_str);
            let event = arg.get("event").and_then(Value::as_str);
            let (Some(room), Some(event)) = (room, event) else {
                ack.send(&refuse("bad_request")).ok();
                return;
            };
            let data = arg.get("data").cloned().unwrap_or(Value::Null);
            let sent = socket.to(room.to_owned()).emit(event.to_owned(), &data).await;
            ack.send(&if sent.is_ok() { json!({"ok": true}) } else { refuse("broadcast_failed") }).ok();
        },
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args().nth(1).map(|p| p.parse()).transpose()?.unwrap_or(3000);
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
