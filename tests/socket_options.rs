//! The server's side of every accepted connection has Nagle's algorithm off
//! (`TCP_NODELAY`). With it on, a small write (an ack, a delivery) waits
//! while an earlier one is unacknowledged, and a client that delays its
//! ACKs until it next sends holds every publisher's ack back by its publish
//! interval (seen in the benchmark: ack p50 at 100 publishes/s moved from
//! 0.8 ms to 10 ms from one run to the next). roomcast coalesces its own
//! writes, so Nagle adds only the wait.
//!
//! The test server runs in this process: the accepted socket is found among
//! the process's own descriptors by its peer address.
mod common;

use std::net::SocketAddr;

use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use common::TestServer;

/// Whether the server's socket whose peer is `client` has TCP_NODELAY.
fn server_nodelay(server: &TestServer, client: SocketAddr) -> bool {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd (Linux)") {
        let Some(fd) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: only borrowed for the two getsockname/getpeername calls
        // and a getsockopt; the descriptor is this process's and stays
        // open (nothing here closes it).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        if peer == Some(client) && local.map(|a| a.port()) == Some(server.port) {
            found = Some(socket.tcp_nodelay().expect("TCP_NODELAY readable"));
        }
    }
    found.unwrap_or_else(|| panic!("no server socket has the peer {client}"))
}

#[actix_web::test]
async fn accepted_connections_have_nagle_off() {
    let server = common::spawn(common::settings(common::quiet));

    // A polling request, its connection kept alive.
    let mut polling = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let request = format!(
        "GET {}?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        common::SIO
    );
    polling.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = common::within("the open packet over polling", polling.read(&mut buf))
        .await
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        server_nodelay(&server, polling.local_addr().unwrap()),
        "a polling connection"
    );

    // A WebSocket, after the upgrade (the socket is the handover's then).
    let url = format!(
        "ws://127.0.0.1:{}{}?EIO=4&transport=websocket",
        server.port,
        common::SIO
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = common::within("the open packet over WebSocket", ws.next())
        .await
        .expect("the open packet")
        .unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    let client = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("plain ws://"),
    };
    assert!(server_nodelay(&server, client), "a WebSocket");
}
