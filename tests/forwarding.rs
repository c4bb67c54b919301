//! Covers `[cluster] sticky = false` (long-polling without sticky
//! sessions) with a private `redis-server` and in-process nodes, each
//! request sent to a node of the test's choosing:
//! - a polling session opened on one node is served by every other one:
//!   POSTs and GETs through any node reach it in order, a long-poll is
//!   held through the forwarding node and answered when the owner has
//!   something, and Engine.IO's rule of one pending GET is still the
//!   owner's (a second GET through another node ends the session);
//! - a WebSocket upgrade sent to another node is relayed to the owner:
//!   probe, upgrade and messages both ways, the session stays on its node;
//! - a session whose node is gone (stopped, or never existed) is unknown
//!   at once, not after a timeout;
//! - a node started after the others is found at its first session's
//!   first forwarded request (a miss reads the directory again);
//! - forwarding is bounded: beyond `cluster.max_forwarded`, 503 with
//!   `Retry-After`; a request another node forwarded is never forwarded
//!   again;
//! - the metrics count what was forwarded.
mod common;

use std::time::Duration;

use common::eio::{assert_error, next_text, send, Polling};
use common::redis::PrivateRedis;
use common::{metric, settings, spawn, within, TestServer, SIO};

/// A node of a non-sticky cluster on `redis`, reached by the others at
/// its own (public) listener.
fn node(redis: &PrivateRedis, tweak: impl FnOnce(&mut roomcast::config::Settings)) -> TestServer {
    spawn(settings(|s| {
        s.redis.url = redis.url();
        s.cluster.sticky = false;
        s.cluster.advertise_address = "127.0.0.1:0".into();
        s.cluster.heartbeat_ms = 100;
        s.cluster.node_ttl_ms = 400;
        s.engine.ping_interval_ms = 5000;
        s.engine.ping_timeout_ms = 5000;
        tweak(s);
    }))
}

/// The polling client `p`, sending to `server` instead.
fn via(p: &Polling, server: &TestServer) -> Polling {
    Polling {
        client: p.client.clone(),
        base: format!("{}{SIO}", server.http()),
        sid: p.sid.clone(),
        open: p.open.clone(),
        content_type: p.content_type,
    }
}

/// Waits until `n` nodes have published themselves in `redis` (what a
/// balancer's health checks give a node before it gets traffic); a node
/// that has not read them yet does at its first miss.
async fn nodes_known(redis: &PrivateRedis, n: usize) {
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    common::eventually("every node is in the directory", || {
        let mut conn = conn.clone();
        async move {
            let known: usize = redis::cmd("HLEN")
                .arg("socket.io#roomcast#nodes")
                .query_async(&mut conn)
                .await
                .unwrap();
            known >= n
        }
    })
    .await;
}

/// Nodes in the directory's hash now.
async fn directory_len(redis: &PrivateRedis) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HLEN")
        .arg("socket.io#roomcast#nodes")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_polling_session_is_served_through_every_node() {
    let redis = PrivateRedis::start();
    let (a, b, c) = (node(&redis, |_| {}), node(&redis, |_| {}), node(&redis, |_| {}));
    nodes_known(&redis, 3).await;
    let on_a = Polling::open(&a, SIO).await;
    let (on_b, on_c) = (via(&on_a, &b), via(&on_a, &c));
    assert!(b.registry.get(&on_a.sid).is_none() && a.registry.get(&on_a.sid).is_some());

    // The Socket.IO CONNECT through B; its answer through C.
    on_b.post_ok("40").await;
    let answer = on_c.get_ok().await;
    assert!(answer.starts_with("40{\"sid\":"), "{answer}");

    // A long-poll through B is held there while the owner has nothing…
    let mut held = actix_web::rt::spawn(on_b.get());
    common::eio::assert_held(&mut held).await;
    // …and answered when a POST through C makes the owner answer.
    on_c.post_ok(r#"421["subscribe",{"room":"r"}]"#).await;
    common::eio::assert_answered(held, r#"431[{"ok":true}]"#).await;

    // POSTs through different nodes reach the session in order.
    for (i, p) in [&on_a, &on_b, &on_c, &on_b].iter().enumerate() {
        p.post_ok(format!(r#"42{}["subscribe",{{"room":"r{i}"}}]"#, 10 + i))
            .await;
    }
    let mut acks = String::new();
    while acks.matches("43").count() < 4 {
        acks.push_str(&on_a.get_ok().await);
        acks.push('\x1e');
    }
    let order: Vec<&str> = acks.split('\x1e').filter(|p| p.starts_with("43")).collect();
    assert_eq!(
        order,
        [
            "4310[{\"ok\":true}]",
            "4311[{\"ok\":true}]",
            "4312[{\"ok\":true}]",
            "4313[{\"ok\":true}]"
        ]
    );

    // One GET at a time is still the owner's rule: a second one through
    // another node ends the session.
    let first = actix_web::rt::spawn(on_b.get());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = on_c.get().await;
    assert_eq!(second.status().as_u16(), 400);
    let _ = within("the first GET", first).await;
    on_a.assert_gone().await;

    assert!(
        metric(
            &b,
            r#"roomcast_forwarded_requests_total{kind="poll_post",outcome="ok"}"#
        )
        .await
            >= 2
    );
    assert!(metric(&c, r#"roomcast_forwarded_requests_total{kind="poll_get",outcome="ok"}"#).await >= 1);
    assert_eq!(
        metric(&a, r#"roomcast_forwarded_requests_total{kind="poll_get",outcome="ok"}"#).await,
        0
    );
    assert_eq!(metric(&b, "roomcast_forwarded_in_flight").await, 0);
}

#[actix_web::test]
async fn an_upgrade_reaching_another_node_is_relayed_to_the_owner() {
    let redis = PrivateRedis::start();
    let (a, b) = (node(&redis, |_| {}), node(&redis, |_| {}));
    nodes_known(&redis, 2).await;
    let on_a = Polling::open(&a, SIO).await;
    on_a.post_ok("40").await;
    assert!(on_a.get_ok().await.starts_with("40{"));
    // The probe and the upgrade through B; the pending GET (through A)
    // gets its noop from the owner.
    let mut pending = actix_web::rt::spawn(on_a.get());
    common::eio::assert_held(&mut pending).await;
    let mut ws = on_a.probe(&b, SIO).await;
    common::eio::assert_answered(pending, "6").await;
    send(&mut ws, "5").await;
    send(&mut ws, r#"421["subscribe",{"room":"r"}]"#).await;
    assert_eq!(next_text(&mut ws).await, r#"431[{"ok":true}]"#);
    // Still A's session, now on WebSocket; B only relays.
    assert!(a.registry.get(&on_a.sid).is_some());
    assert!(b.registry.get(&on_a.sid).is_none());
    assert_eq!(metric(&b, "roomcast_relayed_websockets").await, 1);
    // A broadcast from a member on B reaches it.
    let mut member = common::eio::member(&b, "other").await;
    send(
        &mut member,
        r#"422["publish",{"room":"r","event":"news","data":"hello"}]"#,
    )
    .await;
    assert!(next_text(&mut member).await.starts_with("432[{\"ok\":true"));
    let mut got = next_text(&mut ws).await;
    while got == "2" {
        send(&mut ws, "3").await;
        got = next_text(&mut ws).await;
    }
    assert_eq!(got, r#"42["news","hello"]"#);
    // The client leaves: the relay ends, and so does the session.
    drop(ws);
    common::eventually("the relay ends", || async {
        metric(&b, "roomcast_relayed_websockets").await == 0
    })
    .await;
    common::eventually("the session ends", || async { a.registry.get(&on_a.sid).is_none() }).await;
}

#[actix_web::test]
async fn a_session_whose_node_is_gone_is_unknown_at_once() {
    let redis = PrivateRedis::start();
    let (a, b, c) = (node(&redis, |_| {}), node(&redis, |_| {}), node(&redis, |_| {}));
    nodes_known(&redis, 3).await;
    let on_b = Polling::open(&b, SIO).await;
    let through_a = via(&on_b, &a);
    through_a.post_ok("40").await;
    // B stops outright (its listener closes; its entry stays until it
    // expires): the next request through A is refused at once, well
    // before the session's heartbeat (10 s here) would have ended it.
    b.handle.stop(false).await;
    let refused = within("the refusal", through_a.get()).await;
    assert_error(refused, 400, 1, "Session ID unknown").await;
    // A sid of a node that never was, and one of no node at all.
    let made_up = roomcast::engineio::NodeTag::generate().sid();
    for sid in [made_up.as_str(), "AAAAAAAAAAAAAAAAAAAAAA"] {
        let response = reqwest::get(format!("{}{SIO}?EIO=4&transport=polling&sid={sid}", a.http()))
            .await
            .unwrap();
        assert_error(response, 400, 1, "Session ID unknown").await;
    }
    assert!(
        metric(
            &a,
            r#"roomcast_forwarded_requests_total{kind="poll_get",outcome="gone"}"#
        )
        .await
            >= 2
    );

    // A node that drains takes its entry away when its sessions are gone
    // (B's stays until it expires, then the next reader removes it after
    // a minute).
    let on_c = Polling::open(&c, SIO).await;
    c.shutdown.run().await;
    assert_eq!(directory_len(&redis).await, 2);
    assert_error(via(&on_c, &a).get().await, 400, 1, "Session ID unknown").await;
}

#[actix_web::test]
async fn a_node_started_later_is_found_at_its_first_forwarded_request() {
    let redis = PrivateRedis::start();
    // A reads the directory only every 10 s: finding B is up to the miss.
    let a = node(&redis, |s| {
        s.cluster.heartbeat_ms = 10_000;
        s.cluster.node_ttl_ms = 30_000;
    });
    nodes_known(&redis, 1).await;
    let b = node(&redis, |_| {});
    nodes_known(&redis, 2).await;
    let on_b = Polling::open(&b, SIO).await;
    via(&on_b, &a).post_ok("40").await;
    assert!(on_b.get_ok().await.starts_with("40{"));
}

#[actix_web::test]
async fn forwarding_is_bounded_and_never_forwarded_twice() {
    let redis = PrivateRedis::start();
    let a = node(&redis, |_| {});
    let b = node(&redis, |s| s.cluster.max_forwarded = 1);
    nodes_known(&redis, 2).await;
    let on_a = Polling::open(&a, SIO).await;
    let through_b = via(&on_a, &b);
    through_b.post_ok("40").await;
    assert!(on_a.get_ok().await.starts_with("40{"));
    // One long-poll held through B takes its one place…
    let mut held = actix_web::rt::spawn(through_b.get());
    common::eio::assert_held(&mut held).await;
    // …so the next request through B is refused, to be retried.
    let refused = through_b.post("40/x,").await;
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        metric(
            &b,
            r#"roomcast_forwarded_requests_total{kind="poll_post",outcome="busy"}"#
        )
        .await,
        1
    );
    on_a.post_ok("1").await;
    let _ = within("the held GET", held).await;

    // A request marked as forwarded is answered where it lands.
    let response = reqwest::Client::new()
        .get(through_b.url())
        .header("roomcast-forwarded", "elsewhere")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, 1, "Session ID unknown").await;
}

#[actix_web::test]
async fn a_sticky_node_never_forwards() {
    let redis = PrivateRedis::start();
    let sticky = |s: &mut roomcast::config::Settings| s.redis.url = redis.url();
    let (a, b) = (spawn(settings(sticky)), spawn(settings(sticky)));
    let on_a = Polling::open(&a, SIO).await;
    let response = via(&on_a, &b).get().await;
    assert_error(response, 400, 1, "Session ID unknown").await;
    let refused = metric(
        &b,
        r#"roomcast_forwarded_requests_total{kind="poll_get",outcome="gone"}"#,
    )
    .await;
    assert_eq!(refused, 0);
}
