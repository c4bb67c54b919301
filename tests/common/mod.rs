//! Shared by the integration tests: start a real roomcast on port 0.
#![allow(dead_code)]

use roomcast::config::Settings;
use roomcast::startup::Application;

/// A running server.
pub struct TestServer {
    /// Bound port.
    pub port: u16,
    /// Stops the server on drop.
    pub handle: actix_web::dev::ServerHandle,
    /// The Socket.IO endpoint's sessions.
    pub registry: roomcast::conn::Registry,
    /// Namespace sockets joining and leaving.
    pub events: tokio::sync::broadcast::Receiver<roomcast::conn::events::SocketEvent>,
    /// Graceful shutdown.
    pub shutdown: roomcast::startup::Shutdown,
}

impl TestServer {
    /// `http://127.0.0.1:PORT`
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `ws://127.0.0.1:PORT`
    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

/// Test settings: loopback, port 0, one worker, fast heartbeats, the echo
/// endpoint at `/engine.io/`; `tweak` adjusts them further.
pub fn settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings::defaults();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.workers = 1;
    s.server.echo_path = "/engine.io/".into();
    s.engine.ping_interval_ms = 300;
    s.engine.ping_timeout_ms = 200;
    tweak(&mut s);
    s.validate().expect("test settings are valid");
    s
}

/// Starts a server inside the current actix system (use `#[actix_web::test]`).
pub fn spawn(settings: Settings) -> TestServer {
    let app = Application::build(settings).expect("server starts");
    let port = app.port();
    let handle = app.handle();
    let registry = app.registry.clone();
    let events = app.events();
    let shutdown = app.shutdown();
    actix_web::rt::spawn(app.run_until_stopped());
    TestServer {
        port,
        handle,
        registry,
        events,
        shutdown,
    }
}
