//! Transports: bytes in and out of a session. `polling` speaks HTTP
//! long-polling, `websocket` owns the actix-ws read side, `outbox` is a
//! WebSocket's write queue (the broker writes broadcasts to it directly),
//! `handover` takes a WebSocket's socket over from actix-http after the
//! handshake; `ws_echo` is the raw WebSocket echo endpoint for the
//! Autobahn|Testsuite.

pub mod frame_guard;
pub mod handover;
pub mod outbox;
pub mod polling;
pub mod relay;
pub mod websocket;
pub mod ws_echo;
