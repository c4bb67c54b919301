//! roomcast: a realtime pub/sub server speaking Engine.IO v4 / Socket.IO v5.
//!
//! # Layout / data flow
//!
//! ```text
//! HTTP request ──▶ http (RequestInfo::parse, one match to a transport, errors → JSON)
//!              ──▶ transport::{polling, websocket}   (bytes in/out; actix-ws lives here)
//!              ──▶ conn::Connection actor            (one per Engine.IO session: life cycle,
//!                     │  engineio::Session (sans-IO)   heartbeat, single close path)
//!                     ▼
//!              audit (forced closes and parse errors), tracing
//! ```
//!
//! - [`engineio`]: packets, polling payloads, the session state machine; pure.
//! - [`reason`]: close reasons with Socket.IO's exact strings.
//! - [`http`]: request parsing, dispatch, Engine.IO HTTP errors.
//! - [`transport`]: long-polling and WebSocket plumbing.
//! - [`conn`]: the connection actor and the messages transports send it.
//! - [`audit`]: the audit sink.
//! - [`config`]: typed settings; [`telemetry`]: logging;
//!   [`startup`]: the composition root.
//!
//! Imports point downstream only (http → transport → conn → audit); things
//! travelling back up go through actix messages defined downstream.

#![warn(missing_docs)]

pub mod adapter;
pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod engineio;
pub mod http;
pub mod reason;
pub mod socketio;
pub mod startup;
pub mod telemetry;
pub mod transport;
