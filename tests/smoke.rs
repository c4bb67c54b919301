//! Covers: the server starts on port 0 and answers a polling handshake.
mod common;

#[actix_web::test]
async fn polling_handshake_returns_open_packet() {
    let server = common::spawn(common::settings(|_| {}));
    let body = reqwest::get(format!("{}/socket.io/?EIO=4&transport=polling", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("0{"), "{body}");
    let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
}
