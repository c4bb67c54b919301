//! Covers: the server starts on port 0 and answers a polling handshake.
mod common;

#[actix_web::test]
async fn polling_handshake_returns_open_packet() {
    let server = common::spawn(common::settings(|_| {}));
    let body = reqwest::get(format!("{}{}?EIO=4&transport=polling", server.http(), common::SIO))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = common::eio::parse_open(&body);
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
}
