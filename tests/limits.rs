//! The limits of `[limits]` (and the WebSocket message and write timeouts,
//! the namespace cap), each provoked by a real client: the client gets its
//! signal (HTTP status and Engine.IO error body, CONNECT_ERROR, error ack,
//! close code), the breach is counted in `/metrics` and recorded in the
//! audit log, and a bystander client is not affected.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::audit::{rows, store, wait_rows};
use common::eio::{member, next_text, open, send, Ws};
use common::raw::{raw, read_response, ws_request, RawWs};
use common::{eventually, metric as counter, quiet, within, TestServer, SIO};
use futures_util::{SinkExt as _, StreamExt as _};
use roomcast::audit::store::AuditQuery;
use roomcast::config::Settings;
use tokio_tungstenite::tungstenite::Message;

/// A server with `tweak`, its audit database URL, and the per-address
/// limits applying to loopback (exempt by default).
fn server(tweak: impl FnOnce(&mut Settings)) -> (TestServer, String) {
    let settings = common::settings(|s| {
        quiet(s);
        s.limits.exempt = vec![];
        s.audit.flush_interval_ms = 20;
        tweak(s);
    });
    let url = settings.database.url.clone();
    (common::spawn(settings), url)
}

/// `roomcast_limit_breaches_total{limit="…"}`.
async fn breaches(server: &TestServer, limit: &str) -> u64 {
    counter(server, &format!("roomcast_limit_breaches_total{{limit=\"{limit}\"}}")).await
}

/// Reads until the server's close frame; its code (`None`: the connection
/// ended without one).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    within("the server's close", async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
}

/// Waits for the `limit_exceeded` rows with reason `limit`.
async fn limit_rows(db: &str, limit: &str, n: usize) -> Vec<roomcast::audit::AuditRow> {
    let query = AuditQuery {
        kind: Some("limit_exceeded".into()),
        reason: Some(limit.into()),
        ..Default::default()
    };
    wait_rows(&store(db), query, n).await
}

fn handshake_url(server: &TestServer) -> String {
    format!("{}{SIO}?EIO=4&transport=polling", server.http())
}

/// A bystander: a Socket.IO client in a room, and a check that a publish
/// to that room still reaches it.
struct Bystander {
    ws: Ws,
    publisher: Ws,
}

impl Bystander {
    async fn new(server: &TestServer) -> Bystander {
        let ws = member(server, "bystanders").await;
        let (mut publisher, _) = open(server, SIO).await;
        send(&mut publisher, "40").await;
        assert!(next_text(&mut publisher).await.starts_with("40{"));
        Bystander { ws, publisher }
    }

    async fn still_served(&mut self, n: u64) {
        let data = format!("still here {n}");
        send(
            &mut self.publisher,
            format!(r#"42{n}["publish",{{"room":"bystanders","event":"news","data":"{data}"}}]"#),
        )
        .await;
        let ack = next_text(&mut self.publisher).await;
        assert!(
            ack.starts_with(&format!("43{n}[")) && ack.contains(r#""ok":true"#),
            "{ack}"
        );
        let got = next_text(&mut self.ws).await;
        assert!(got.contains(&data), "{got}");
    }
}

#[actix_web::test]
async fn handshakes_per_address_are_rate_limited_with_429_and_retry_after() {
    let (server, db) = server(|s| {
        s.limits.handshakes_per_second = 1;
        s.limits.handshake_burst = 3;
        s.limits.connections_per_ip = 0;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    });
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let resp = http.get(handshake_url(&server)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = http.get(handshake_url(&server)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    common::eio::assert_error_body(resp, 429, 3, "Too many handshakes from this address").await;
    // A WebSocket handshake from the same address: no 101.
    let refused = read_response(
        raw(
            &server,
            ws_request(&format!("{SIO}?EIO=4&transport=websocket")).as_bytes(),
        )
        .await,
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.head);
    // Another client behind the trusted proxy has its own count.
    let resp = http
        .get(handshake_url(&server))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(breaches(&server, "handshakes_per_second").await, 2);
    let rows = limit_rows(&db, "handshakes_per_second", 2).await;
    assert!(
        rows.iter()
            .all(|r| r.code == 301 && r.peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:"))),
        "{rows:#?}"
    );
}

#[actix_web::test]
async fn open_sessions_per_address_are_limited_until_one_ends() {
    let (server, db) = server(|s| {
        s.limits.handshakes_per_second = 0;
        s.limits.connections_per_ip = 2;
    });
    let (first, _) = open(&server, SIO).await;
    let (_second, _) = open(&server, SIO).await;
    let resp = reqwest::get(handshake_url(&server)).await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    common::eio::assert_error_body(resp, 429, 3, "Too many sessions from this address").await;
    let refused = limit_rows(&db, "connections_per_ip", 1).await;
    assert_eq!(refused[0].code, 302);
    // When a session ends, its place is free again.
    drop(first);
    eventually("the closed session leaves", || async { server.registry.len() == 1 }).await;
    let (_third, open_packet) = open(&server, SIO).await;
    assert!(open_packet["sid"].is_string());
    assert_eq!(breaches(&server, "connections_per_ip").await, 1);
}

#[actix_web::test]
async fn loopback_is_exempt_by_default() {
    let server = common::spawn(common::settings(|s| {
        quiet(s);
        s.limits.connections_per_ip = 1;
        s.limits.handshake_burst = 1;
        s.limits.handshakes_per_second = 1;
    }));
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(open(&server, SIO).await.0);
    }
    assert_eq!(breaches(&server, "connections_per_ip").await, 0);
}

#[actix_web::test]
async fn origins_outside_the_allowlist_get_403() {
    let (server, db) = server(|s| {
        s.server.allowed_origins = vec!["https://app.example".into()];
    });
    let handshake = |origin: Option<&str>| {
        let mut request = format!(
            "GET {SIO}?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(origin) = origin {
            request.push_str(&format!("Origin: {origin}\r\n"));
        }
        request.push_str("\r\n");
        let server = &server;
        async move { read_response(raw(server, request.as_bytes()).await).await }
    };
    let refused = handshake(Some("https://evil.example")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.text(), r#"{"code":4,"message":"Forbidden"}"#);
    assert_eq!(handshake(Some("https://app.example")).await.status, 101);
    assert_eq!(handshake(None).await.status, 101, "non-browser clients send no Origin");
    let resp = reqwest::Client::new()
        .get(handshake_url(&server))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    common::eio::assert_error_body(resp, 403, 4, "Forbidden").await;
    let rows = limit_rows(&db, "allowed_origins", 2).await;
    assert!(
        rows.iter()
            .any(|r| r.excerpt.as_deref() == Some("https://evil.example")),
        "{rows:#?}"
    );
}

#[actix_web::test]
async fn long_targets_and_large_heads_get_414_and_431() {
    let (server, db) = server(|s| {
        s.limits.max_url_len = 200;
        s.limits.max_header_bytes = 1000;
    });
    let mut bystander = Bystander::new(&server).await;
    let long = format!("{}&pad={}", handshake_url(&server), "x".repeat(200));
    let resp = reqwest::get(long).await.unwrap();
    common::eio::assert_error_body(resp, 414, 3, "URI too long").await;
    let resp = reqwest::Client::new()
        .get(handshake_url(&server))
        .header("x-big", "y".repeat(1000))
        .send()
        .await
        .unwrap();
    common::eio::assert_error_body(resp, 431, 3, "Request header fields too large").await;
    // Thousands of small headers: refused whoever counts them first
    // (actix-http allows 96; above that it answers 431 itself).
    let mut request = format!("GET {SIO}?EIO=4&transport=polling HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..3000 {
        request.push_str(&format!("X-{i}: a\r\n"));
    }
    request.push_str("\r\n");
    let stream = raw(&server, request.as_bytes()).await;
    let refused = read_response(stream).await;
    assert_eq!(refused.status, 431, "{}", refused.head);
    bystander.still_served(1).await;
    assert_eq!(breaches(&server, "max_url_len").await, 1);
    assert!(breaches(&server, "max_header_bytes").await >= 1);
    limit_rows(&db, "max_url_len", 1).await;
    limit_rows(&db, "max_header_bytes", 1).await;
}

/// A Socket.IO client in "/" over a WebSocket; its session id.
async fn joined(server: &TestServer) -> (Ws, String) {
    let (mut ws, open_packet) = open(server, SIO).await;
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    (ws, open_packet["sid"].as_str().unwrap().to_owned())
}

#[actix_web::test]
async fn messages_over_the_rate_get_error_acks_then_the_connection_is_closed() {
    let (server, db) = server(|s| {
        s.limits.packets_per_second = 1;
        s.limits.packets_burst = 20;
        s.limits.refused_before_close = 5;
    });
    let mut bystander = Bystander::new(&server).await;
    let (mut ws, sid) = joined(&server).await;
    // The CONNECT took one token; 19 subscribes pass.
    for id in 0..19 {
        send(&mut ws, format!(r#"42{id}["subscribe",{{"room":"r{id}"}}]"#)).await;
        assert_eq!(next_text(&mut ws).await, format!(r#"43{id}[{{"ok":true}}]"#));
    }
    // Then each is refused with an error ack, and the sixth refusal closes.
    for id in 100..105 {
        send(&mut ws, format!(r#"42{id}["subscribe",{{"room":"r{id}"}}]"#)).await;
        let ack = next_text(&mut ws).await;
        assert!(
            ack.starts_with(&format!("43{id}["))
                && ack.contains(r#""ok":false"#)
                && ack.contains(r#""code":"rate_limited""#),
            "{ack}"
        );
    }
    send(&mut ws, r#"42["subscribe",{"room":"last"}]"#).await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    bystander.still_served(1).await;
    assert_eq!(breaches(&server, "packets_per_second").await, 6);
    // One row for the first refusal, one for the forced close.
    let store = store(&db);
    let first = limit_rows(&db, "packets_per_second", 1).await;
    assert_eq!(first[0].sid.as_deref(), Some(sid.as_str()));
    let query = AuditQuery {
        kind: Some("forced_close".into()),
        sid: Some(sid.clone()),
        ..Default::default()
    };
    let close = wait_rows(&store, query, 1).await;
    assert!(close[0].detail.contains("rate limit"), "{close:#?}");
    assert!(server.shutdown.flush_audit().await);
    let all = rows(
        &store,
        AuditQuery {
            sid: Some(sid),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[actix_web::test]
async fn bytes_over_the_rate_are_refused_and_a_quiet_client_is_forgiven() {
    let (server, _db) = server(|s| {
        s.engine.max_payload = 1000;
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 1000;
        s.limits.bytes_burst = 1000;
        s.limits.refused_before_close = 1000;
    });
    let (mut ws, _) = joined(&server).await;
    let pad = "p".repeat(400);
    let event = |id: u32| format!(r#"42{id}["subscribe",{{"room":"r","pad":"{pad}"}}]"#);
    // Two fit in the burst; the third is refused.
    for id in 0..2 {
        send(&mut ws, event(id)).await;
        assert_eq!(next_text(&mut ws).await, format!(r#"43{id}[{{"ok":true}}]"#));
    }
    send(&mut ws, event(2)).await;
    assert!(next_text(&mut ws).await.contains("rate_limited"));
    // A second later the bucket is full again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&mut ws, event(3)).await;
    assert_eq!(next_text(&mut ws).await, r#"433[{"ok":true}]"#);
    assert_eq!(breaches(&server, "bytes_per_second").await, 1);
}

/// 100,000 events per second from one client (without acks, as a
/// flooding `emit` sends them; it reads nothing): it is limited (what is
/// over its rate is refused at the cost of a decode) while a bystander's
/// round trips are measured before and during the flood (printed, not
/// asserted).
#[actix_web::test]
async fn a_flood_of_events_is_limited_and_others_keep_their_latency() {
    let (server, _db) = server(|s| {
        s.server.workers = 2;
        // Keep the flooder connected for the whole flood, refused.
        s.limits.refused_before_close = u32::MAX;
    });
    let mut bystander = Bystander::new(&server).await;
    let mut quiet_rtt = Vec::new();
    for n in 0..200 {
        let t = Instant::now();
        bystander.still_served(n).await;
        quiet_rtt.push(t.elapsed());
    }
    let before = counter(&server, "roomcast_events_in_total").await;
    // The flooder runs on a thread of its own (another machine, as it
    // were), so that its writing does not slow the bystander's client.
    let url = format!("{}{SIO}?EIO=4&transport=websocket", server.ws());
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let flood = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut flooder, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            next_text(&mut flooder).await; // open packet
            send(&mut flooder, "40").await;
            assert!(next_text(&mut flooder).await.starts_with("40{"));
            let start = Instant::now();
            let _ = joined_tx.send(start);
            let mut sent = 0u64;
            // 2 s at 100,000 events per second, in slices of 100.
            while start.elapsed() < Duration::from_secs(2) {
                for _ in 0..100 {
                    let event = format!(r#"42["publish",{{"room":"elsewhere","event":"e","data":{sent}}}]"#);
                    flooder
                        .feed(Message::text(event))
                        .await
                        .expect("the flooder stays connected");
                    sent += 1;
                }
                flooder.flush().await.expect("the flooder stays connected");
                let due = start + Duration::from_micros(sent * 10);
                tokio::time::sleep_until(due.into()).await;
            }
            (sent, flooder)
        })
    });
    let start = joined_rx.await.unwrap();
    let mut flood_rtt = Vec::new();
    let mut n = 1000u64;
    while !flood.is_finished() {
        let t = Instant::now();
        bystander.still_served(n).await;
        flood_rtt.push(t.elapsed());
        n += 1;
        // The bystander stays within its own rate limit (1000/s).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (sent, _flooder) = flood.join().unwrap();
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    // Wait until the server has read the whole flood.
    let deadline = Instant::now() + Duration::from_secs(30);
    // (Its CONNECT, the flood, and the bystander's publishes meanwhile.)
    let expected = before + 1 + sent + (n - 1000);
    while counter(&server, "roomcast_events_in_total").await < expected {
        assert!(Instant::now() < deadline, "the server did not read the flood");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let refused = breaches(&server, "packets_per_second").await;
    // What the bucket allows: its burst plus its rate over the time taken.
    let allowed = 2000.0 + 1000.0 * elapsed;
    assert!(
        (sent - refused) as f64 <= allowed + 1.0,
        "{} of {sent} accepted in {elapsed:.2} s",
        sent - refused
    );
    assert!(!flood_rtt.is_empty());
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    println!(
        "flood: {sent} events at {rate:.0}/s ({} accepted, {refused} refused); bystander round trip \
         quiet p50 {:?} p99 {:?}, during the flood p50 {:?} p99 {:?} ({} samples)",
        sent - refused,
        p(&mut quiet_rtt, 0.5),
        p(&mut quiet_rtt, 0.99),
        p(&mut flood_rtt, 0.5),
        p(&mut flood_rtt, 0.99),
        flood_rtt.len()
    );
}

#[actix_web::test]
async fn with_the_default_policy_a_flooder_is_closed() {
    let (server, _db) = server(|_| {});
    let mut bystander = Bystander::new(&server).await;
    let (ws, _) = joined(&server).await;
    let (mut sink, mut stream) = ws.split();
    // The flood is written while the close is read, so that the close
    // frame is seen before writes start failing.
    let closed = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    });
    for n in 0..100_000u32 {
        if closed.is_finished() {
            break;
        }
        let event = format!(r#"42["publish",{{"room":"elsewhere","event":"e","data":{n}}}]"#);
        if sink.feed(Message::text(event)).await.is_err() {
            break;
        }
        if n % 100 == 0 && sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.flush().await;
    let code = tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("the flooder is closed")
        .unwrap();
    assert_eq!(code, Some(1008));
    bystander.still_served(1).await;
    assert!(breaches(&server, "packets_per_second").await > 100);
}

#[actix_web::test]
async fn namespaces_per_connection_are_capped() {
    let (server, db) = server(|s| {
        s.socketio.namespaces = vec!["/".into(), "/a".into(), "/b".into()];
        s.auth.anonymous_namespaces = s.socketio.namespaces.clone();
        s.socketio.max_namespaces = 2;
    });
    let (mut ws, _) = joined(&server).await;
    send(&mut ws, "40/a,").await;
    assert!(next_text(&mut ws).await.starts_with("40/a,{"));
    send(&mut ws, "40/b,").await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"44/b,{"data":{"code":"too_many_namespaces"},"message":"Too many namespaces"}"#
    );
    // Reconnecting to one it is in is not one more.
    send(&mut ws, "40/a,").await;
    let again = next_text(&mut ws).await;
    assert!(again.starts_with("40/a,{"), "{again}");
    send(&mut ws, "41/a,").await;
    send(&mut ws, "40/b,").await;
    assert!(next_text(&mut ws).await.starts_with("40/b,{"));
    let rows = limit_rows(&db, "max_namespaces", 1).await;
    assert_eq!(rows[0].namespace.as_deref(), Some("/b"));
}

#[actix_web::test]
async fn unfinished_messages_are_closed_after_the_message_timeout() {
    let (server, _db) = server(|s| {
        s.websocket.message_timeout_ms = 300;
    });
    let mut bystander = Bystander::new(&server).await;
    // A frame whose payload stops half way.
    let mut slow = RawWs::connect(&server, SIO).await;
    slow.frame().await.expect("open packet");
    slow.send_bytes(&[0x81, 0x80 | 100, 1, 2, 3, 4]).await;
    slow.send_bytes(&[b'4'; 10]).await;
    assert_eq!(slow.close_code().await, 1008);
    // A fragmented message that never ends (each fragment is complete).
    let mut fragments = RawWs::connect(&server, SIO).await;
    fragments.frame().await.expect("open packet");
    fragments.send_frame_with(0x01, b"4a", true).await;
    fragments.send_frame_with(0x00, b"b", true).await;
    assert_eq!(fragments.close_code().await, 1008);
    // A message that arrives whole, slowly but in time, is fine.
    let mut ok = RawWs::connect(&server, common::ECHO).await;
    ok.frame().await.expect("open packet");
    ok.send_frame_with(0x01, b"4a", true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok.send_frame_with(0x80, b"b", true).await;
    assert_eq!(ok.frame().await, Some((0x1, b"4ab".to_vec())));
    bystander.still_served(1).await;
    assert_eq!(breaches(&server, "message_timeout").await, 2);
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let (server, db) = server(|s| {
        s.websocket.write_timeout_ms = 500;
        // Only the write timeout may end it.
        s.engine.max_buffered_packets = 1_000_000;
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 0;
    });
    let mut bystander = Bystander::new(&server).await;
    // A member with a small receive buffer that never reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        format!("{}{SIO}?EIO=4&transport=websocket", server.ws()),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let open_packet = common::eio::parse_open(&next_text(&mut slow).await);
    let sid = open_packet["sid"].as_str().unwrap().to_owned();
    send(&mut slow, "40").await;
    assert!(next_text(&mut slow).await.starts_with("40{"));
    send(&mut slow, r#"421["subscribe",{"room":"big"}]"#).await;
    assert_eq!(next_text(&mut slow).await, r#"431[{"ok":true}]"#);
    // Publish until the server gives up on it.
    let (mut publisher, _) = joined(&server).await;
    let data = "z".repeat(60_000);
    let store = store(&db);
    let query = AuditQuery {
        kind: Some("forced_close".into()),
        sid: Some(sid.clone()),
        ..Default::default()
    };
    let mut published = 0u32;
    while rows(&store, query.clone()).await.is_empty() {
        assert!(
            published < 2_000,
            "no forced close after {published} publishes of 60 kB"
        );
        for _ in 0..10 {
            send(
                &mut publisher,
                format!(r#"42{published}["publish",{{"room":"big","event":"e","data":"{data}"}}]"#),
            )
            .await;
            let ack = next_text(&mut publisher).await;
            assert!(ack.starts_with("43"), "{ack}");
            published += 1;
        }
    }
    let row = &rows(&store, query).await[0];
    assert!(row.detail.contains("write_timeout_ms"), "{row:?}");
    assert_eq!(breaches(&server, "write_timeout").await, 1);
    bystander.still_served(1).await;
    // Its session and everything queued for it are gone.
    eventually("the slow session leaves", || async {
        server.registry.get(&sid).is_none()
    })
    .await;
    drop(slow);
}

#[actix_web::test]
async fn older_limits_are_counted_too() {
    let (server, db) = server(|s| {
        s.rooms.max_per_socket = 1;
        s.engine.max_payload = 1000;
        s.limits.bytes_burst = 1000;
    });
    let (mut ws, _) = joined(&server).await;
    send(&mut ws, r#"421["subscribe",{"room":"a"}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"431[{"ok":true}]"#);
    send(&mut ws, r#"422["subscribe",{"room":"b"}]"#).await;
    assert!(next_text(&mut ws).await.contains("too_many_rooms"));
    limit_rows(&db, "rooms_per_socket", 1).await;
    assert_eq!(breaches(&server, "rooms_per_socket").await, 1);
    // A message above maxPayload: close 1009, counted.
    send(&mut ws, format!("4{}", "x".repeat(1001))).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    eventually("the max_payload breach is counted", || async {
        breaches(&server, "max_payload").await > 0
    })
    .await;
}

/// A publisher with more publishes waiting on the broker than its window
/// (`limits.publish_window`, here 4) stops being read until the broker
/// answers, and loses nothing: every publish is acked exactly once, and the
/// room gets them all, in order.
#[actix_web::test]
async fn a_burst_past_the_publish_window_is_pushed_back_and_loses_nothing() {
    let (server, _) = server(|s| {
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 0;
        // Small enough that a burst read at once outruns the broker's
        // answers, however soon each comes back.
        s.limits.publish_window = 4;
        // The subscriber reads only after the acks: its queue holds them all.
        s.engine.max_buffered_packets = 10_000;
    });
    let mut subscriber = member(&server, "w").await;
    let mut publisher = member(&server, "other").await;
    let n = 2000;
    // One write: the server reads the whole burst before any answer.
    for i in 0..n {
        let publish = format!(r#"42{}["publish",{{"room":"w","event":"m","data":{i}}}]"#, 10 + i);
        within("feed", publisher.feed(Message::text(publish))).await.unwrap();
    }
    within("flush", publisher.flush()).await.unwrap();
    let mut acked = vec![false; n];
    for _ in 0..n {
        let ack = next_text(&mut publisher).await;
        let (id, body) = ack
            .strip_prefix("43")
            .and_then(|a| a.split_once('['))
            .unwrap_or_else(|| panic!("an ack, got {ack}"));
        assert_eq!(body, r#"{"ok":true,"recipients":1}]"#, "ack {id}");
        let id: usize = id.parse().unwrap();
        assert!(!std::mem::replace(&mut acked[id - 10], true), "ack {id} came twice");
    }
    for i in 0..n {
        assert_eq!(next_text(&mut subscriber).await, format!(r#"42["m",{i}]"#));
    }
    assert!(
        counter(&server, "roomcast_publish_backpressure_total").await > 0,
        "the burst went past the window: the publisher was pushed back"
    );
}

/// A CONNECT, a subscribe and a publish read in one go keep their order at
/// the broker: the node registers the sockets of a worker's turn together
/// (one wake-up of the broker's thread for a burst of handshakes), and the
/// subscribe and the publish after them wait for those registrations.
/// Twenty clients at once, so that registrations are gathered.
#[actix_web::test]
async fn a_connect_and_what_follows_it_in_the_same_read_keep_their_order() {
    let (server, _) = server(|s| {
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 0;
    });
    let mut watcher = member(&server, "together").await;
    let clients = (0..20).map(|i| {
        let server = &server;
        async move {
            let (mut ws, _) = common::eio::open(server, common::SIO).await;
            for text in [
                "40".to_owned(),
                r#"421["subscribe",{"room":"together"}]"#.to_owned(),
                format!(r#"422["publish",{{"room":"together","event":"m","data":{i}}}]"#),
            ] {
                within("feed", ws.feed(Message::text(text))).await.unwrap();
            }
            within("flush", ws.flush()).await.unwrap();
            let mut answers = Vec::new();
            while answers.len() < 3 {
                let text = next_text(&mut ws).await;
                // (other clients' publishes to the room come too)
                if !text.starts_with("42[") {
                    answers.push(text);
                }
            }
            assert!(answers[0].starts_with("40{"), "{answers:?}");
            assert_eq!(answers[1], r#"431[{"ok":true}]"#, "{answers:?}");
            assert!(answers[2].starts_with(r#"432[{"ok":true,"recipients":"#), "{answers:?}");
            ws
        }
    });
    let _clients = futures_util::future::join_all(clients).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        let text = next_text(&mut watcher).await;
        let data: u32 = text
            .strip_prefix(r#"42["m","#)
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or_else(|| panic!("a publish, got {text}"))
            .parse()
            .unwrap();
        assert!(seen.insert(data), "publish {data} came twice");
    }
}
