//! The internal listener (`admin.address`): with it set, the public
//! listener serves the Socket.IO endpoint, its client bundle and health,
//! and nothing an operator alone should reach (`/metrics`, `/dashboard`,
//! `/api/v1`); the admin listener serves all of it. Without it, everything
//! stays on the one listener.
#![cfg(unix)]

mod common;

use common::eio::{next_text, open, send};
use common::SIO;

async fn status(url: String) -> u16 {
    reqwest::get(url).await.expect("a response").status().as_u16()
}

#[actix_web::test]
async fn operators_routes_move_to_the_admin_listener() {
    let server = common::spawn(common::settings(|s| {
        s.admin.address = "127.0.0.1:0".into();
        s.api.keys = vec!["admin-listener-test-key".into()];
    }));
    let public = server.http();
    let admin = format!("http://127.0.0.1:{}", server.admin_port.expect("an admin port"));
    assert_ne!(admin, public);
    for path in [
        "/metrics",
        "/dashboard",
        "/dashboard.js",
        "/api/v1/rooms",
        "/api/v1/audit",
    ] {
        assert_eq!(status(format!("{public}{path}")).await, 404, "public {path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(format!("{public}{path}")).await, 200, "public {path}");
        assert_eq!(status(format!("{admin}{path}")).await, 200, "admin {path}");
    }
    assert_eq!(status(format!("{admin}/metrics")).await, 200);
    assert_eq!(status(format!("{admin}/dashboard")).await, 200);
    assert_eq!(
        status(format!("{admin}/api/v1/rooms")).await,
        401,
        "the API, behind its key"
    );
    let rooms = reqwest::Client::new()
        .get(format!("{admin}/api/v1/rooms"))
        .bearer_auth("admin-listener-test-key")
        .send()
        .await
        .unwrap();
    assert_eq!(rooms.status(), 200);
    // Clients still connect on the public listener.
    let (mut ws, _) = open(&server, SIO).await;
    send(&mut ws, "40").await;
    assert!(next_text(&mut ws).await.starts_with("40{"));
}

#[actix_web::test]
async fn without_an_admin_address_everything_is_on_one_listener() {
    let server = common::spawn(common::settings(|_| {}));
    assert_eq!(server.admin_port, None);
    for path in ["/metrics", "/dashboard", "/healthz", "/readyz"] {
        assert_eq!(status(format!("{}{path}", server.http())).await, 200, "{path}");
    }
    assert_eq!(status(format!("{}/api/v1/rooms", server.http())).await, 401);
}

#[test]
fn a_bad_admin_address_names_the_key() {
    let mut settings = roomcast::config::Settings::defaults();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.admin.address = "not-an-address".into();
    let problems = settings.problems();
    assert!(
        problems.iter().any(|p| p.to_string().contains("admin.address")),
        "{problems:?}"
    );
    let err = actix_web::rt::System::new()
        .block_on(async { roomcast::startup::Application::build(settings).err().expect("refused") });
    assert!(err.to_string().contains("admin.address"), "{err}");
}
