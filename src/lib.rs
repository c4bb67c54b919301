//! roomcast: a realtime pub/sub server speaking Engine.IO v4 / Socket.IO v5.
//!
//! # Layout / data flow
//!
//! ```text
//! HTTP request ──▶ http (RequestInfo::parse, one match to a transport, errors → JSON)
//!   (an upgrade request runs the same App from transport::handover, which
//!    then keeps the socket and drops actix-http's per-connection buffers)
//!              ──▶ transport::{polling, websocket}   (bytes in/out: actix-ws reads,
//!                     │                               transport::outbox writes)
//!              ──▶ conn::Connection actor            (one per Engine.IO session: life cycle,
//!                     │  engineio::Session (sans-IO)   heartbeat, single close path; its
//!                     │  conn::SioState                Socket.IO state: namespaces, acks,
//!                     │  socketio::Decoder (sans-IO)   the pub/sub protocol)
//!                     ▼
//!              cluster::Cluster                      (one handle for "across the nodes":
//!                     │                               publish, presence, rooms, kick, join,
//!                     │                               leave; this node first, then the others)
//!                     ▼
//!              broker::Broker actor                  (rooms → members; fan-out of frames
//!                     │                               encoded once, appended to each member's
//!                     │                               outbox (a broker::DirectSink) or sent to
//!                     │                               its connection)
//!              adapter::redis::RedisAdapter          (other nodes: @socket.io/redis-adapter
//!                                                     wire format, requests with timeouts;
//!                                                     or @socket.io/redis-streams-adapter's,
//!                                                     broadcasts in Redis streams)
//! api (/api/v1) ──▶ cluster                          (backends: publish, rooms, kick, join)
//! adminui ──▶ cluster                               (the Admin UI's namespace: a conn::service
//!                                                    seam; its updates published to it)
//!
//! side sinks: audit (forced closes and parse errors → writer actor → SQL,
//!             spill file while the database is down), tracing.
//! api GET /api/v1/audit, `roomcast audit` ──▶ audit::store (SQL)
//! ```
//!
//! A publish is made in one place, [`broker::Publish::event`], whether a
//! client or the HTTP API sends it. Settings are checked by
//! [`config`] on their own, and by each owner where [`startup`] builds it
//! ([`config::Settings::validate`] runs both).
//!
//! # Layers
//!
//! From the top. A module imports only modules on lines below its own
//! (`tests/layering.rs` checks every `crate::` path against this list);
//! messages travelling back up are defined downstream and reach their actor
//! through a `Recipient`, and the one thing the broker writes to directly, a
//! WebSocket's outbox, is a trait the broker defines (`broker::DirectSink`)
//! and the transport implements.
//!
//! 1. `startup`: the composition root, the one module that knows every
//!    concrete type (and the checks that need the owners: [`config::Settings::validate`]).
//! 2. `api`, `ops`, `adminui`: the backends' and the operators' HTTP routes,
//!    the Socket.IO Admin UI's namespace and files.
//! 3. `http`: request parsing, dispatch, the session cap.
//! 4. `transport`: long-polling and WebSocket plumbing.
//! 5. `conn`: the connection actor.
//! 6. `cluster`: everything "across the nodes", one handle over the broker and the adapter.
//! 7. `broker`: this node's rooms and fan-out.
//! 8. `auth`: JWT verification, room permissions.
//! 9. `limits`: rate limits, quotas, the input budget.
//! 10. `metrics`: the Prometheus registry.
//! 11. `adapter`: the Redis adapter and its wire format.
//! 12. `audit`: audit events, the writer, the spill file, the SQL store.
//! 13. `telemetry`: logging.
//! 14. `config`: typed settings, checked on their own.
//! 15. `net`: IP addresses and ranges.
//! 16. `engineio`, `socketio`: the protocols, pure (no actix, tokio, redis).
//! 17. `reason`: close reasons with Socket.IO's exact strings.

#![warn(missing_docs)]

pub mod adapter;
pub mod adminui;
pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod engineio;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod reason;
pub mod socketio;
pub mod startup;
pub mod telemetry;
pub mod transport;
