//! Hostile clients that cost a node more than their own connection, each
//! tried against a real server:
//! - sockets that park Socket.IO attachments (a binary event announcing four
//!   attachments, three ~1 MB frames, then nothing): the node's input budget
//!   bounds what they hold (RSS), and each is closed by the budget at once
//!   or by the attachment deadline, from a loopback (exempt) address and
//!   from a non-exempt one with 1,000 sockets;
//! - a flood of unknown and invalid events on one connection: error acks,
//!   a metric, at most a handful of audit rows and one summary row with the
//!   count of the rest;
//! - 500 connections flooding invalid events while the audit database is
//!   down: a forced close elsewhere is still recorded (the client rows
//!   cannot fill the spill file).
#![cfg(unix)]

mod common;

/// The server's allocator, so that RSS means what it means in production
/// (glibc's malloc keeps freed buffers of closed connections).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use common::audit::{by_sid, rows, store, wait_rows};
use common::eio::{next_text, open, send};
use common::raw::{client_frame, raw_request, ws_request, RawWs};
use common::{metric, quiet, within, TestServer, SIO};
use roomcast::config::Settings;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A server with `tweak` and quiet heartbeats; its audit settings.
fn server(tweak: impl FnOnce(&mut Settings)) -> (TestServer, Settings) {
    let settings = common::settings(|s| {
        quiet(s);
        s.audit.flush_interval_ms = 20;
        tweak(s);
    });
    (common::spawn(settings.clone()), settings)
}

/// Bytes of each parked attachment: just under `engine.max_payload`.
const ATTACHMENT: usize = 999_000;

/// A masked client binary frame header for `len` bytes, with the mask key
/// 0 so that one shared payload buffer serves every frame unchanged.
fn binary_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&(len as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Opens a Socket.IO session over a raw WebSocket and joins "/".
async fn joined_raw(server: &TestServer) -> RawWs {
    let resp = raw_request(server, &ws_request(&format!("{SIO}?EIO=4&transport=websocket"))).await;
    assert!(resp.head.starts_with("HTTP/1.1 101"), "{}", resp.head);
    let mut ws = resp.into_ws();
    let (_, open) = ws.frame().await.expect("the open packet");
    assert_eq!(open[0], b'0');
    ws.send_bytes(&client_frame(0x81, b"40", true)).await;
    let (_, connect) = ws.frame().await.expect("the CONNECT answer");
    assert!(connect.starts_with(b"40{"), "{}", String::from_utf8_lossy(&connect));
    ws
}

/// Sends a binary event announcing four attachments, then three of them;
/// write errors (the server closed the connection) end it early.
async fn park(ws: &mut RawWs, payload: &'static [u8]) {
    let placeholders: Vec<String> = (0..4)
        .map(|n| format!(r#"{{"_placeholder":true,"num":{n}}}"#))
        .collect();
    let head = format!(r#"454-["upload",{}]"#, placeholders.join(","));
    let mut text = vec![0x81, 0x80 | 126];
    text.extend_from_slice(&(head.len() as u16).to_be_bytes());
    text.extend_from_slice(&[0, 0, 0, 0]);
    text.extend_from_slice(head.as_bytes());
    if ws.stream.write_all(&text).await.is_err() {
        return;
    }
    for _ in 0..3 {
        if ws.stream.write_all(&binary_header(payload.len())).await.is_err()
            || ws.stream.write_all(payload).await.is_err()
        {
            return;
        }
    }
}

/// Reads until the server ends the connection; false if it is still open
/// after `limit`.
async fn ends_within(ws: &mut RawWs, limit: Duration) -> bool {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match ws.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// `sockets` sockets park attachments; the server's RSS grows by less than
/// 100 MiB, and every socket is closed within the attachment deadline.
async fn parked_attachments(exempt: bool, sockets: usize) {
    let _alone = common::alone().await;
    let deadline_ms = Settings::defaults().limits.attachment_timeout_ms;
    let (server, _) = server(|s| {
        if !exempt {
            s.limits.exempt = vec![];
        }
    });
    let payload: &'static [u8] = Box::leak(vec![0x5a; ATTACHMENT].into_boxed_slice());
    let mut conns = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        conns.push(joined_raw(&server).await);
    }
    let before = common::rss_kib();
    // The highest RSS while the attack lasts, sampled until every socket
    // has been closed.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = actix_web::rt::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(common::rss_kib());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        }
    });
    let started = Instant::now();
    let parked: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            actix_web::rt::spawn(async move {
                park(&mut ws, payload).await;
                ws
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(sockets);
    for task in parked {
        conns.push(task.await.unwrap());
    }
    let limit = Duration::from_millis(deadline_ms) + Duration::from_secs(5);
    for (i, ws) in conns.iter_mut().enumerate() {
        let left = limit.saturating_sub(started.elapsed());
        assert!(
            ends_within(ws, left).await,
            "socket {i} still open {:?} after it parked its attachments (deadline {deadline_ms} ms)",
            started.elapsed()
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let grown_mib = peak.await.unwrap().saturating_sub(before) / 1024;
    println!(
        "{sockets} sockets parking attachments: RSS +{grown_mib} MiB at the peak, all closed in {:?}",
        started.elapsed()
    );
    assert!(
        grown_mib < 100,
        "{sockets} sockets parking attachments grew RSS by {grown_mib} MiB at the peak"
    );
    common::registry_empties(&server).await;
    let refused = metric(&server, "roomcast_limit_breaches_total{limit=\"input_budget\"}").await
        + metric(&server, "roomcast_limit_breaches_total{limit=\"attachment_timeout\"}").await;
    assert_eq!(
        refused, sockets as u64,
        "each socket ended by the budget or the deadline"
    );
}

#[actix_web::test]
async fn parked_attachments_are_bounded_by_the_input_budget_and_the_deadline() {
    parked_attachments(true, 100).await;
}

#[actix_web::test]
async fn a_thousand_sockets_of_one_address_parking_attachments_are_bounded_too() {
    parked_attachments(false, 1000).await;
}

#[actix_web::test]
async fn unknown_and_invalid_events_get_error_acks_and_a_handful_of_rows() {
    let _shared = common::shared().await;
    let (server, settings) = server(|s| {
        // The flood is about the audit log, not the rate limit.
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 0;
    });
    let (mut ws, open) = open(&server, SIO).await;
    let sid = open["sid"].as_str().unwrap().to_owned();
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
    for i in 0..1000 {
        send(&mut ws, format!(r#"42{i}["x{i}"]"#)).await;
        send(&mut ws, format!(r#"42["subscribe",{{"room":"no spaces {i}"}}]"#)).await;
    }
    send(&mut ws, r#"421000["x1000"]"#).await;
    let mut acks = 0;
    let mut last = String::new();
    while acks < 1001 {
        last = next_text(&mut ws).await;
        if last.starts_with("43") {
            acks += 1;
        }
    }
    assert!(last.starts_with("431000["), "{last}");
    assert!(last.contains(r#""code":"unknown_event""#), "{last}");
    let unknown = metric(&server, "roomcast_invalid_events_total{code=\"unknown_event\"}").await;
    let invalid_room = metric(&server, "roomcast_invalid_events_total{code=\"invalid_room\"}").await;
    assert_eq!((unknown, invalid_room), (1001, 1000));
    drop(ws);
    let store = store(&settings.database.url);
    let summary = roomcast::audit::store::AuditQuery {
        reason: Some("audit_rows_per_connection".into()),
        ..by_sid(&sid)
    };
    let found = wait_rows(&store, summary, 1).await;
    let limit = Settings::defaults().limits.audit_rows_per_connection as usize;
    assert!(
        found[0]
            .detail
            .starts_with(&format!("{} more audit rows", 1000 - limit)),
        "{}",
        found[0].detail
    );
    let all = rows(&store, by_sid(&sid)).await;
    assert!(
        all.len() <= limit + 1,
        "{} rows for one flooding connection: {all:#?}",
        all.len()
    );
    assert!(all
        .iter()
        .all(|r| r.reason != "unknown_event" && !r.detail.contains("unknown event")));
}

#[actix_web::test]
async fn a_flood_of_client_rows_cannot_crowd_out_a_forced_close() {
    let _shared = common::shared().await;
    let (server, settings) = server(|s| {
        s.limits.packets_per_second = 0;
        s.limits.bytes_per_second = 0;
        // The database is down for the whole test: every row goes to the
        // spill file, which holds a few hundred rows.
        s.database.url = "postgres://postgres@127.0.0.1:1/down".into();
        s.database.timeout_ms = 200;
        s.audit.queue = 16;
        s.audit.spill_max_bytes = 200_000;
        s.socketio.connect_timeout_ms = 60_000;
    });
    let spill = server.audit.stats().clone();
    let mut flooders = Vec::new();
    for _ in 0..500 {
        let (mut ws, _) = open(&server, SIO).await;
        send(&mut ws, "40").await;
        assert!(next_text(&mut ws).await.starts_with("40{"));
        flooders.push(ws);
    }
    let floods: Vec<_> = flooders
        .into_iter()
        .map(|mut ws| {
            actix_web::rt::spawn(async move {
                for i in 0..200 {
                    send(&mut ws, format!(r#"42["subscribe",{{"room":"bad room {i}"}}]"#)).await;
                }
                ws
            })
        })
        .collect();
    let mut flooders = Vec::new();
    for task in floods {
        flooders.push(task.await.unwrap());
    }
    // A session elsewhere is closed by the server.
    let (mut victim, open) = open(&server, SIO).await;
    let sid = open["sid"].as_str().unwrap().to_owned();
    send(&mut victim, "40").await;
    assert!(next_text(&mut victim).await.starts_with("40{"));
    let kick = server.registry.get(&sid).expect("the victim's session");
    kick.addr.do_send(roomcast::conn::messages::CloseSession(
        roomcast::engineio::CloseCause::new(roomcast::reason::DisconnectReason::ForcedClose, "kicked by the test"),
    ));
    let spill_file = settings.audit.spill_file.clone();
    let recorded = within("the forced close in the spill file", async {
        loop {
            let text = std::fs::read_to_string(&spill_file).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.contains(&sid) && l.contains(r#""kind":"forced_close""#))
            {
                return true;
            }
            if roomcast::audit::AuditStats::get(&spill.dropped) > 0 {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        recorded,
        "the forced close was dropped: the spill file was full of client rows ({} dropped)",
        roomcast::audit::AuditStats::get(&spill.dropped)
    );
    assert!(metric(&server, "roomcast_audit_suppressed_total").await > 0);
    drop(flooders);
}

#[actix_web::test]
async fn attachments_that_do_not_all_arrive_are_closed_at_the_deadline() {
    let _shared = common::shared().await;
    let (server, settings) = server(|s| s.limits.attachment_timeout_ms = 300);
    let mut ws = joined_raw(&server).await;
    let head = r#"452-["upload",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
    ws.send_bytes(&client_frame(0x81, head.as_bytes(), true)).await;
    ws.send_bytes(&client_frame(0x82, &[1, 2, 3], true)).await;
    let started = Instant::now();
    assert_eq!(ws.close_code().await, 1008, "a forced close");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&server, "roomcast_limit_breaches_total{limit=\"attachment_timeout\"}").await,
        1
    );
    let query = roomcast::audit::store::AuditQuery {
        kind: Some("forced_close".into()),
        ..Default::default()
    };
    let found = wait_rows(&store(&settings.database.url), query, 1).await;
    assert!(found[0].detail.contains("attachment_timeout_ms"), "{}", found[0].detail);
    // A packet whose attachments all arrive in time is not affected.
    let mut ws = joined_raw(&server).await;
    ws.send_bytes(&client_frame(0x81, head.as_bytes(), true)).await;
    ws.send_bytes(&client_frame(0x82, &[1], true)).await;
    ws.send_bytes(&client_frame(0x82, &[2], true)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send_bytes(&client_frame(0x81, br#"421["still-there"]"#, true)).await;
    let (opcode, ack) = ws.frame().await.expect("the error ack");
    assert_eq!(opcode, 0x1);
    assert!(ack.starts_with(b"431["), "{}", String::from_utf8_lossy(&ack));
}

#[actix_web::test]
async fn polling_bodies_being_read_count_against_the_input_budget() {
    let _shared = common::shared().await;
    let (server, _) = server(|s| s.limits.input_budget_bytes = 100_000);
    let a = common::eio::Polling::open(&server, SIO).await;
    let b = common::eio::Polling::open(&server, SIO).await;
    let body = "x".repeat(60_000);
    let _held = a.partial_post(&server, 90_000, &body).await;
    common::eventually("the first body is held", || async {
        metric(&server, "roomcast_input_held_bytes").await >= 60_000
    })
    .await;
    let resp = common::raw::read_response(b.partial_post(&server, 90_000, &body).await).await;
    assert_eq!(resp.status, 503, "{}", resp.head);
    assert_eq!(resp.text(), r#"{"code":3,"message":"Server busy"}"#);
    b.assert_gone().await;
    assert_eq!(
        metric(&server, "roomcast_limit_breaches_total{limit=\"input_budget\"}").await,
        1
    );
}
