//! `websocket.broadcast_coalesce_us`: broadcast frames bound for one
//! WebSocket wait (at most that long) to be written together. Nothing may be
//! lost or reordered by the wait, and whatever the connection writes in the
//! meantime (an ack) leaves after the frames queued before it.
mod common;

use common::eio::{member, next_text, send};

#[actix_web::test]
async fn coalesced_broadcasts_arrive_complete_and_in_order() {
    let server = common::spawn(common::settings(|s| {
        common::quiet(s);
        // Long enough that publishes sent back to back share a write.
        s.websocket.broadcast_coalesce_us = 50_000;
    }));
    let mut subscribers = vec![member(&server, "c").await, member(&server, "c").await];
    let mut publisher = member(&server, "other").await;
    let n = 200;
    for i in 0..n {
        send(
            &mut publisher,
            format!(r#"42{}["publish",{{"room":"c","event":"m","data":{i}}}]"#, 10 + i),
        )
        .await;
    }
    // Every publish is acked (in any order: a publisher with many publishes
    // waiting on the broker may see a later one answered first).
    let mut acks = Vec::new();
    for _ in 0..n {
        acks.push(next_text(&mut publisher).await);
    }
    acks.sort();
    let mut expected: Vec<String> = (0..n)
        .map(|i| format!(r#"43{}[{{"ok":true,"recipients":2}}]"#, 10 + i))
        .collect();
    expected.sort();
    assert_eq!(acks, expected);
    for ws in &mut subscribers {
        for i in 0..n {
            assert_eq!(next_text(ws).await, format!(r#"42["m",{i}]"#));
        }
    }
    // Once the publishes are answered, every delivery is queued at the
    // subscriber: a request it sends now is answered after all of them
    // even if the timer has not fired yet.
    for i in 0..n {
        send(
            &mut publisher,
            format!(r#"42{}["publish",{{"room":"c","event":"m","data":{i}}}]"#, 10 + i),
        )
        .await;
        next_text(&mut publisher).await;
    }
    let ws = &mut subscribers[0];
    send(ws, r#"429["presence",{"room":"c"}]"#).await;
    for i in 0..n {
        assert_eq!(next_text(ws).await, format!(r#"42["m",{i}]"#));
    }
    assert!(
        next_text(ws).await.starts_with("439[{"),
        "the ack comes after the broadcasts"
    );
}
