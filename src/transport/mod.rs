//! Transports: bytes in and out of a session. `polling` speaks HTTP
//! long-polling, `websocket` owns the actix-ws handles.

pub mod polling;
pub mod websocket;
