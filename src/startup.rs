//! The composition root: the one place that knows every concrete type.
//! `main` loads config and calls [`Application::build`]; tests do the same
//! with port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::dev::{AppConfig, Server};
use actix_web::{web, App as WebApp};

use crate::adapter::directory::Directory;
use crate::adapter::redis::directory::{DirectoryConfig, Presence};
use crate::adapter::redis::{BrokerPorts, Mode, RedisAdapter, RedisConfig, StreamsConfig};
use crate::adapter::AdapterStatus;
use crate::api;
use crate::audit::reader::AuditReader;
use crate::audit::spill::Spill;
use crate::audit::store::Store;
use crate::audit::writer::{AuditWriter, Cutoff, Flush, WriterConfig};
use crate::audit::{AuditHandle, AuditStats, Recording};
use crate::auth::Verifier;
use crate::broker::{AttachCluster, Broker, BrokerConfig};
use crate::cluster::Cluster;
use crate::config::{ConfigError, RedisMode, Settings, SubscriptionMode};
use crate::conn::events::SocketEvent;
use crate::conn::{App, EngineShared, Registry, SioConfig};
use crate::engineio::TransportKind;
use crate::http::forward::{ForwardSettings, Forwarder};
use crate::http::{self, Endpoint};
use crate::metrics::Metrics;
use crate::net::IpRanges;
use crate::ops::{self, OpsState};
use crate::socketio::DecodeLimits;

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    admin_port: Option<u16>,
    server: Server,
    shutdown: Shutdown,
    /// The Socket.IO endpoint's sessions.
    pub registry: Registry,
    events: Option<tokio::sync::broadcast::Sender<SocketEvent>>,
    /// The cluster adapter's state (never connected on a single node).
    pub cluster: Arc<AdapterStatus>,
    /// This process's id: the Redis adapter's uid, by which a node tells
    /// its own messages apart, so unique per start (two processes may share
    /// a name).
    pub node_id: Arc<str>,
    /// This node's name (`server.node_name`): the audit rows' `node`, a
    /// field of every log line, the `node` label of `roomcast_build_info`.
    pub node_name: Arc<str>,
    /// Where audit events go.
    pub audit: AuditHandle,
}

/// The audit log's actors, on an arbiter (thread) of their own.
struct Audit {
    handle: AuditHandle,
    writer: Addr<AuditWriter>,
    reader: Addr<AuditReader>,
    arbiter: actix::ArbiterHandle,
    /// The shutdown's deadline for the writer's database work.
    cutoff: Cutoff,
}

/// What an operator should hear at start about a node open to the network:
/// anonymous publishing, and sessions from any site's pages, on an address
/// other than loopback (the defaults suit one machine; see
/// config/production.toml).
fn exposure_warnings(settings: &Settings) -> Vec<String> {
    let host = settings.server.host.trim_matches(['[', ']']);
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Vec::new();
    }
    let auth = &settings.auth;
    let mut warnings = Vec::new();
    if !auth.anonymous_namespaces.is_empty() && !auth.anonymous_publish.is_empty() {
        warnings.push(format!(
            "anonymous sockets may publish (auth.anonymous_publish = {:?} in {:?}) on {host}, an address other than \
             loopback: anyone who reaches it can send to those rooms (config/production.toml turns it off)",
            auth.anonymous_publish, auth.anonymous_namespaces
        ));
    }
    if settings.server.allowed_origins.is_empty() {
        warnings.push(format!(
            "server.allowed_origins is empty on {host}: pages of any site may open sessions with your users' \
             cookies (list your sites, or set server.require_allowed_origins)"
        ));
    }
    warnings
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// Everything (no `admin.address`).
    Only,
    /// The public listener beside an admin one: the Socket.IO endpoint, its
    /// client bundle, health.
    Public,
    /// `admin.address`: everything, the operators' routes included.
    Admin,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting its owner refused; the error names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener, a file or a thread.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn invalid(key: &'static str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

/// What the owners make of the settings before anything starts, each made
/// once.
struct Parts {
    verifier: Verifier,
    /// `server.trusted_proxies`.
    trusted: IpRanges,
    /// `limits.exempt`.
    exempt: IpRanges,
}

impl Parts {
    /// The parts, or every problem with its key.
    fn of(settings: &Settings) -> Result<Parts, Vec<ConfigError>> {
        let verifier = Verifier::from_settings(&settings.auth).map_err(|e| invalid(e.key(), e));
        let trusted =
            IpRanges::parse(&settings.server.trusted_proxies).map_err(|e| invalid("server.trusted_proxies", e));
        let exempt = IpRanges::parse(&settings.limits.exempt).map_err(|e| invalid("limits.exempt", e));
        match (verifier, trusted, exempt) {
            (Ok(verifier), Ok(trusted), Ok(exempt)) => Ok(Parts {
                verifier,
                trusted,
                exempt,
            }),
            (verifier, trusted, exempt) => Err([verifier.err(), trusted.err(), exempt.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

/// The problems of `settings` that only their owners find (a key file that
/// does not read, a Redis URL or CA file its client refuses, a database
/// URL of no supported kind, an address range that does not parse), each
/// with its key: what [`Settings::validate`] and `roomcast config check`
/// add to the settings' own checks.
pub fn owner_problems(settings: &Settings) -> Vec<ConfigError> {
    let mut errors = Parts::of(settings).err().unwrap_or_default();
    let r = &settings.redis;
    if !r.url.is_empty() {
        if let Err(e) = crate::adapter::redis::check_settings(&r.url, r.cluster, &r.tls_ca_file) {
            errors.push(invalid(e.key(), e));
        }
    }
    if let Err(e) = crate::audit::store::Backend::of(&settings.database.url) {
        errors.push(invalid("database.url", e));
    }
    if let Err(e) = crate::adminui::check_settings(&settings.admin_ui) {
        errors.push(invalid(e.key(), e));
    }
    errors
}

impl Settings {
    /// Checks values that parse but make no sense, the settings' own
    /// ([`Settings::problems`]) and their owners' ([`owner_problems`]): the
    /// first problem, or all of them in one [`ConfigError::Several`].
    /// Defined here, with the composition root, because it asks every
    /// owner; `config` imports none of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = self.problems();
        errors.extend(owner_problems(self));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::of(errors))
        }
    }
}

/// Starts the audit writer and reader on a new arbiter, where the
/// database pool lives.
fn start_audit(settings: &Settings, node_name: Arc<str>) -> Result<Audit, StartError> {
    let a = &settings.audit;
    let stats = Arc::new(AuditStats::default());
    let spill = Arc::new(Spill::open(&a.spill_path(), a.spill_max_bytes, a.spill_fsync, &stats)?);
    let arbiter = actix::Arbiter::new().handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let database = settings.database.clone();
    arbiter.spawn_fn(move || {
        let _ = tx.send(Store::connect_lazy(&database));
    });
    let store = rx
        .recv()
        .map_err(|_| std::io::Error::other("the audit arbiter did not start"))?
        .map_err(|e| invalid("database.url", e))?;
    let cutoff = Cutoff::default();
    let config = WriterConfig {
        queue: a.queue,
        batch_size: a.batch_size,
        flush_interval: Duration::from_millis(a.flush_interval_ms),
        retry_interval: Duration::from_millis(a.retry_interval_ms),
        retention: (a.retention_days > 0).then(|| Duration::from_secs(a.retention_days * 86_400)),
        prune_interval: Duration::from_secs(a.prune_interval_s),
        cutoff: cutoff.clone(),
    };
    let (s, sp, st) = (store.clone(), spill.clone(), stats.clone());
    let queue = a.queue;
    let writer = AuditWriter::start_in_arbiter(&arbiter, move |ctx| {
        // The bound from the first message on (not only once started).
        ctx.set_mailbox_capacity(queue);
        AuditWriter::new(s, sp, st, config)
    });
    let reader = AuditReader::start_in_arbiter(&arbiter, move |_| AuditReader { store });
    let recording = Recording {
        disconnects: a.record_disconnects,
        handshake_refusals: a.record_handshake_refusals,
    };
    let handle = AuditHandle::new(writer.clone().recipient(), node_name, spill, stats, recording);
    Ok(Audit {
        handle,
        writer,
        reader,
        arbiter,
        cutoff,
    })
}

/// The public listener and, with `admin.address`, the admin one.
fn listeners(settings: &Settings) -> Result<(TcpListener, Option<TcpListener>), StartError> {
    let listener = bind(
        &settings.server.host,
        settings.server.port,
        settings.server.listen_backlog,
    )?;
    let admin = match settings.admin.address.trim() {
        "" => None,
        address => {
            let at: std::net::SocketAddr = address
                .parse()
                .map_err(|e| invalid("admin.address", format!("{address:?} is not host:port: {e}")))?;
            Some(bind(&at.ip().to_string(), at.port(), settings.server.listen_backlog)?)
        }
    };
    Ok((listener, admin))
}

/// The namespaces with connection state recovery (none when it is off).
fn recovering(settings: &Settings) -> Vec<String> {
    if settings.recovery.enabled {
        settings.recovery.namespaces.clone()
    } else {
        vec![]
    }
}

/// With `cluster.sticky = false`: this node's entry in the node directory
/// (kept in Redis by a task) and the forwarder that serves other nodes'
/// sessions through them.
fn start_forwarding(
    settings: &Settings,
    tag: crate::engineio::NodeTag,
    bound: u16,
    metrics: &Arc<Metrics>,
) -> Result<Option<(Arc<Forwarder>, Presence)>, StartError> {
    let c = &settings.cluster;
    if c.sticky {
        return Ok(None);
    }
    let address = c.advertised(bound);
    let directory = Arc::new(Directory::new(tag));
    let r = &settings.redis;
    let presence = crate::adapter::redis::directory::start(
        directory.clone(),
        DirectoryConfig {
            url: r.url.clone(),
            cluster: r.cluster,
            tls_ca_file: r.tls_ca_file.clone(),
            key: r.key.clone(),
            address,
            heartbeat: Duration::from_millis(c.heartbeat_ms),
            ttl: Duration::from_millis(c.node_ttl_ms),
            command_timeout: Duration::from_millis(r.command_timeout_ms),
        },
    )
    .map_err(|e| invalid(e.key(), e))?;
    let engine = &settings.engine;
    let keep_alive = Duration::from_millis(settings.limits.keep_alive_ms);
    let forwarder = Forwarder::new(
        directory,
        ForwardSettings {
            max_in_flight: c.max_forwarded,
            connect: Duration::from_millis(c.forward_connect_ms),
            hold: Duration::from_millis(engine.ping_interval_ms + engine.ping_timeout_ms) + Duration::from_secs(5),
            body_timeout: Duration::from_millis(settings.limits.body_timeout_ms),
            max_payload: engine.max_payload,
            // Half the owners' keep-alive: a connection is never reused as
            // the owner closes it.
            idle: (keep_alive / 2).max(Duration::from_millis(100)),
        },
        metrics.clone(),
    );
    Ok(Some((Arc::new(forwarder), presence)))
}

/// The namespaces this node has sockets in: `socketio.namespaces` and,
/// when the Admin UI is on, its namespace (whose updates every node
/// publishes to the others).
fn served_namespaces(settings: &Settings) -> Vec<String> {
    let mut namespaces = settings.socketio.namespaces.clone();
    if settings.admin_ui.enabled {
        namespaces.push(settings.admin_ui.namespace.clone());
    }
    namespaces
}

/// Starts this node's broker and, with `redis.url`, the adapter to the
/// other nodes: the cluster's handle, and the adapter's state (never
/// connected on a single node).
fn start_cluster(
    settings: &Settings,
    node_id: &str,
    metrics: &Arc<Metrics>,
    exempt: IpRanges,
) -> Result<(Cluster, Arc<AdapterStatus>), StartError> {
    let broker = Broker::new(BrokerConfig {
        max_rooms_per_socket: settings.rooms.max_per_socket,
        max_rooms: settings.rooms.max_total,
        notify_namespaces: settings.rooms.notify_namespaces.clone(),
        metrics: metrics.clone(),
        recovery: crate::broker::recovery::RecoveryConfig {
            namespaces: recovering(settings).iter().map(|n| n.as_str().into()).collect(),
            window: Duration::from_millis(settings.recovery.max_disconnection_ms),
            max_log_bytes: settings.recovery.max_log_bytes,
            max_sessions: settings.recovery.max_sessions,
            refresh: Duration::from_millis(settings.recovery.refresh_ms),
        },
    })
    .with_quotas(crate::broker::RoomQuotas::of(&settings.rooms, exempt))
    .start();
    let status = Arc::new(AdapterStatus::default());
    if settings.redis.url.is_empty() {
        return Ok((Cluster::new(broker, None), status));
    }
    let r = &settings.redis;
    let adapter = RedisAdapter::new(
        RedisConfig {
            node_id: node_id.to_owned(),
            url: r.url.clone(),
            tls_ca_file: r.tls_ca_file.clone(),
            key: r.key.clone(),
            namespaces: served_namespaces(settings),
            command_timeout: Duration::from_millis(r.command_timeout_ms),
            reconnect_max: Duration::from_millis(r.reconnect_max_ms),
            queue: r.queue,
            requests_timeout: Duration::from_millis(r.requests_timeout_ms),
            mode: match r.mode {
                RedisMode::Classic => Mode::Classic,
                RedisMode::Sharded => Mode::Sharded {
                    dynamic: r.subscription_mode == SubscriptionMode::Dynamic,
                    cluster: r.cluster,
                },
                RedisMode::Streams => Mode::Streams(StreamsConfig {
                    stream_name: r.stream_name.clone(),
                    stream_count: r.stream_count,
                    max_len: r.stream_max_len,
                    read_count: r.stream_read_count,
                    block: Duration::from_millis(r.stream_block_ms),
                    session_key_prefix: r.session_key_prefix.clone(),
                    // The broker's recovery log starts with what the
                    // stream still has of the window a client may recover.
                    backfill: if settings.recovery.enabled {
                        Duration::from_millis(settings.recovery.max_disconnection_ms)
                    } else {
                        Duration::ZERO
                    },
                }),
            },
        },
        BrokerPorts {
            inbound: broker.clone().recipient(),
            sockets: broker.clone().recipient(),
            rooms: broker.clone().recipient(),
            ops: broker.clone().recipient(),
            sequenced: broker.clone().recipient(),
            stream_read: broker.clone().recipient(),
        },
        status.clone(),
    )
    .map_err(|e| invalid(e.key(), e))?;
    let rooms = adapter.room_watch();
    let adapter = adapter.start();
    let streams = r.mode == RedisMode::Streams;
    // Streams mode: recovery sessions live in Redis, for every node.
    let store = streams.then(|| crate::broker::SessionStore {
        keep: adapter.clone().recipient(),
        drop: adapter.clone().recipient(),
    });
    broker.do_send(AttachCluster {
        adapter: adapter.clone().recipient(),
        rooms,
        sequenced: streams,
        store,
    });
    let cluster = Cluster::new(broker, Some(adapter.clone()));
    let cluster = match streams {
        true => cluster.with_session_store(adapter.recipient()),
        false => cluster,
    };
    Ok((cluster, status))
}

/// What the listeners route to.
#[derive(Clone)]
struct Routes {
    server: crate::config::ServerSettings,
    guards: web::Data<crate::limits::Guards>,
    ops: web::Data<OpsState>,
    api: web::Data<api::ApiState>,
    socketio: web::Data<Endpoint>,
    /// The Socket.IO endpoint of the admin listener (or the only one):
    /// with the Admin UI's namespace, when it is on.
    socketio_private: web::Data<Endpoint>,
    /// `admin_ui.path`, when the UI is on and served.
    admin_ui_path: Option<String>,
    echo: Option<web::Data<Endpoint>>,
    ws_echo: web::Data<crate::transport::ws_echo::WsEcho>,
    max_payload: usize,
}

impl Routes {
    /// The App of a listener with `role`.
    fn app(
        &self,
        role: Listener,
    ) -> WebApp<
        impl actix_service::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        let server = &self.server;
        // CORS headers only where origins are configured; without them a
        // cross-site page gets none (same-origin requests are unaffected).
        let cors = actix_web::middleware::Condition::new(
            !server.cors_allowed_origins.is_empty(),
            cors(&server.cors_allowed_origins),
        );
        let private = role != Listener::Public;
        let mut app = WebApp::new()
            .app_data(self.guards.clone())
            .wrap(cors)
            .wrap(actix_web::middleware::from_fn(http::head_limits))
            .configure(ops::configure(
                self.ops.clone(),
                &server.path,
                server.serve_client,
                private,
            ));
        if private {
            app = app.service(api::scope(self.api.clone(), self.max_payload));
            if let Some(path) = &self.admin_ui_path {
                app = app.configure(crate::adminui::assets::configure(path));
            }
        }
        let socketio = if private {
            &self.socketio_private
        } else {
            &self.socketio
        };
        for (path, data) in [(&server.path, Some(socketio)), (&server.echo_path, self.echo.as_ref())] {
            let Some(data) = data else { continue };
            let bare = path.trim_end_matches('/').to_string();
            app = app.service(
                web::resource([path.clone(), bare])
                    .app_data(data.clone())
                    .default_service(web::to(http::handle)),
            );
        }
        if !server.ws_echo_path.is_empty() {
            let path = &server.ws_echo_path;
            app = app.service(
                web::resource([path.clone(), path.trim_end_matches('/').to_string()])
                    .app_data(self.ws_echo.clone())
                    .route(web::get().to(crate::transport::ws_echo::handle)),
            );
        }
        app
    }
}

/// Runs the HTTP server on `listener` (and `admin`): one HTTP service per
/// listener, the App of its role, and upgrade requests through the
/// handover (src/transport/handover.rs).
fn serve(
    routes: Routes,
    settings: &Settings,
    worker_cap: usize,
    listener: TcpListener,
    admin: Option<TcpListener>,
) -> Result<Server, StartError> {
    let request_head = Duration::from_millis(settings.limits.request_head_timeout_ms);
    let keep_alive = Duration::from_millis(settings.limits.keep_alive_ms);
    // Signals are handled by `run_until_stopped`, which closes sessions
    // with "server shutting down" before the workers stop.
    // actix-server's own cap (25,600 connections per worker unless set)
    // makes a worker stop accepting, without an answer, /healthz included:
    // set above what sessions can reach (see `worker_connection_cap`),
    // roomcast's own cap binds first and answers 503.
    let mut server = Server::build().disable_signals().max_concurrent_connections(worker_cap);
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    let service = move |role: Listener, local: std::net::SocketAddr| {
        let routes = routes.clone();
        move || {
            use actix_service::IntoServiceFactory as _;
            // Nothing reads the App's host or local address from its
            // config: requests carry their own.
            let config = AppConfig::default();
            let upgrade = crate::transport::handover::factory(routes.app(role).into_factory(), config.clone());
            actix_http::HttpService::build()
                // Nagle off: roomcast coalesces its own writes (the
                // outbox), and with Nagle a small write (an ack) waits for
                // the client's ACK of the previous one, which a client may
                // hold back until it next sends (tests/socket_options.rs).
                .tcp_nodelay(true)
                // Slow headers and idle connections (`[limits]`).
                .client_request_timeout(request_head)
                .keep_alive(keep_alive)
                .local_addr(local)
                .on_connect_ext(crate::transport::websocket::record_fd)
                // Upgrade requests: the same App, then the socket is
                // taken over (src/transport/handover.rs).
                .upgrade(upgrade)
                .finish(actix_service::map_config(routes.app(role).into_factory(), move |_| {
                    config.clone()
                }))
                .tcp()
        }
    };
    let public = if admin.is_some() {
        Listener::Public
    } else {
        Listener::Only
    };
    let local = listener.local_addr()?;
    let mut server = server.listen("roomcast", listener, service(public, local))?;
    if let Some(admin) = admin {
        let admin_local = admin.local_addr()?;
        tracing::info!(address = %admin_local, "admin listener: /metrics, /dashboard, /api/v1");
        server = server.listen("roomcast-admin", admin, service(Listener::Admin, admin_local))?;
    }
    Ok(server.run())
}

impl Application {
    /// Binds the listener and assembles the server. Must run inside an actix
    /// system (`#[actix_web::main]` or `#[actix_web::test]`).
    pub fn build(settings: Settings) -> Result<Application, StartError> {
        Self::assemble(settings, false)
    }

    /// [`Application::build`], with the [`SocketEvent`] stream of
    /// [`Application::events`] (tests watch it; a server has no use for it).
    pub fn build_watched(settings: Settings) -> Result<Application, StartError> {
        Self::assemble(settings, true)
    }

    fn assemble(settings: Settings, watched: bool) -> Result<Application, StartError> {
        for warning in exposure_warnings(&settings) {
            tracing::warn!("{warning}");
        }
        let Parts {
            verifier,
            trusted,
            exempt,
        } = Parts::of(&settings).map_err(ConfigError::of)?;
        let (listener, admin_listener) = listeners(&settings)?;
        let port = listener.local_addr()?.port();
        let admin_port = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?
            .map(|a| a.port());

        let node_id: Arc<str> = crate::engineio::generate_sid().into();
        let node_tag = crate::engineio::NodeTag::generate();
        let node_name: Arc<str> = settings.server.node_name.as_str().into();
        let Audit {
            handle: audit,
            writer: audit_writer,
            reader: audit_reader,
            arbiter: audit_arbiter,
            cutoff: audit_cutoff,
        } = start_audit(&settings, node_name.clone())?;
        let events = watched.then(|| tokio::sync::broadcast::channel(4096).0);
        let metrics = Arc::new(Metrics::for_node(&node_name));
        metrics.declare_namespaces(&settings.socketio.namespaces);
        let (cluster_handle, cluster) = start_cluster(&settings, &node_id, &metrics, exempt.clone())?;
        let (forward, presence) = start_forwarding(&settings, node_tag, admin_port.unwrap_or(port), &metrics)?.unzip();
        let admin_ui = settings.admin_ui.enabled.then(|| {
            if !settings.admin_ui.auth {
                tracing::warn!(
                    "admin_ui.auth = false: anyone who reaches the listener may list and disconnect every socket \
                     through the Admin UI's namespace"
                );
            }
            let ui = crate::adminui::AdminUi::start(
                &settings.admin_ui,
                &settings.socketio.namespaces,
                settings.rooms.max_name_len,
                &node_name,
                cluster_handle.clone(),
                metrics.clone(),
            );
            cluster_handle
                .broker()
                .do_send(crate::broker::WatchMemberships(ui.watch()));
            // Every update is a broadcast to the whole admin namespace.
            let nsp = settings.admin_ui.namespace.as_str().into();
            cluster_handle.broker().do_send(crate::broker::IndexNamespace(nsp));
            ui
        });
        let cluster_status = cluster_handle.spans_nodes().then(|| cluster.clone());
        if let Some(status) = &cluster_status {
            metrics.watch_cluster(status.clone());
        }
        metrics.watch_audit(audit.clone());
        let ops = web::Data::new(
            OpsState::new(metrics.clone(), cluster_status)
                .with_audit(audit.stats().clone())
                .with_locations(
                    crate::config::location(&settings.redis.url),
                    crate::config::location(&settings.database.url),
                ),
        );
        let api = web::Data::new(api::ApiState {
            cluster: cluster_handle.clone(),
            keys: settings.api.keys.clone(),
            namespaces: settings.socketio.namespaces.clone(),
            max_room_len: settings.rooms.max_name_len,
            presence_limit: settings.rooms.presence_limit,
            audit: audit_reader,
        });
        let max_payload = settings.engine.max_payload;
        let sio = SioConfig {
            namespaces: settings.socketio.namespaces.clone(),
            connect_timeout: Duration::from_millis(settings.socketio.connect_timeout_ms),
            limits: DecodeLimits {
                max_attachments: settings.socketio.max_attachments,
                max_namespace_len: settings.socketio.max_namespace_len,
                max_attachment_bytes: settings.socketio.max_attachment_bytes,
            },
            ack_timeout: Duration::from_millis(settings.socketio.ack_timeout_ms),
            hooks: settings.testing.hooks,
            verifier,
            cluster: cluster_handle,
            max_room_len: settings.rooms.max_name_len,
            presence_limit: settings.rooms.presence_limit,
            coalesce: Duration::from_micros(settings.websocket.broadcast_coalesce_us),
            max_namespaces: settings.socketio.max_namespaces,
            recovery: crate::conn::RecoveryPolicy {
                namespaces: recovering(&settings),
                verify_token: settings.recovery.verify_token,
                // Room for the CONNECT, acks and pings written beside it.
                max_frames: settings.engine.max_buffered_packets.saturating_sub(16).max(1),
            },
            server_namespace: None,
            observer: admin_ui.as_ref().map(|ui| ui.observer()),
            publish_window: crate::conn::PublishBounds {
                count: settings.limits.publish_window,
                bytes: settings.limits.publish_window_bytes,
            },
        };
        let guards =
            crate::limits::Guards::new(&settings.limits, trusted, exempt, metrics.clone(), Some(audit.clone()));
        // Every endpoint's sessions count against one cap.
        let (sio_registry, echo_registry) = (Registry::default(), Registry::default());
        let open_files = open_file_limit();
        let max_connections = match settings.server.max_connections {
            0 => derived_max_connections(open_files),
            n => n,
        };
        let worker_cap = worker_connection_cap(max_connections, open_files);
        tracing::info!(
            max_connections,
            derived = settings.server.max_connections == 0,
            open_files,
            worker_connection_cap = worker_cap,
            "session cap (server.max_connections)"
        );
        let cap = Arc::new(crate::http::cap::SessionCap::new(
            max_connections,
            vec![sio_registry.clone(), echo_registry.clone()],
        ));
        // `/readyz` is 503 at the cap (and while draining), never for Redis
        // or the database (see `ops`); the watcher logs their changes.
        let counted = cap.clone();
        ops.watch_sessions(Box::new(move || (counted.open(), counted.max())));
        actix_web::rt::spawn(ops::watch(
            Arc::downgrade(&ops.clone().into_inner()),
            Duration::from_secs(1),
        ));
        let endpoint = |app: App, registry: Registry, sio: Option<SioConfig>| {
            let upgrades = if settings.engine.allows(TransportKind::WebSocket) {
                vec![TransportKind::WebSocket.as_str()]
            } else {
                vec![]
            };
            web::Data::new(Endpoint {
                shared: Arc::new(EngineShared {
                    limits: Arc::new(settings.engine.limits()),
                    max_payload: settings.engine.max_payload,
                    max_packets_per_payload: settings.engine.max_packets_per_payload,
                    upgrades,
                    app,
                    sio,
                    events: events.clone(),
                    registry,
                    audit: audit.clone(),
                    metrics: metrics.clone(),
                    guards: guards.clone(),
                    node_tag,
                }),
                engine: settings.engine.clone(),
                websocket: settings.websocket.clone(),
                allowed_origins: settings.server.allowed_origins.clone(),
                cap: cap.clone(),
                draining: ops.draining_flag(),
                forward: forward.clone(),
            })
        };
        let socketio = endpoint(App::SocketIo, sio_registry.clone(), Some(sio.clone()));
        // The admin listener's endpoint shares the sessions (one registry,
        // one cap) and adds the Admin UI's namespace; without an admin
        // listener the only one is it.
        let socketio_private = match &admin_ui {
            Some(ui) => {
                let mut with_ui = sio.clone();
                with_ui.server_namespace = Some(ui.namespace());
                endpoint(App::SocketIo, sio_registry, Some(with_ui))
            }
            None => socketio.clone(),
        };
        let socketio = if admin_listener.is_some() {
            socketio
        } else {
            socketio_private.clone()
        };
        let registry = socketio.shared.registry.clone();
        let echo = (!settings.server.echo_path.is_empty()).then(|| endpoint(App::Echo, echo_registry, None));
        let mut registries = vec![registry.clone()];
        registries.extend(echo.as_ref().map(|e| e.shared.registry.clone()));

        let ws_echo = web::Data::new(crate::transport::ws_echo::WsEcho {
            limits: crate::transport::websocket::ReadLimits::of(&settings.websocket, max_payload),
        });

        let ops_state = ops.clone().into_inner();
        let routes = Routes {
            server: settings.server.clone(),
            guards: web::Data::from(guards),
            ops,
            api,
            socketio,
            socketio_private,
            admin_ui_path: admin_ui
                .as_ref()
                .map(|_| settings.admin_ui.path.clone())
                .filter(|p| !p.is_empty()),
            echo,
            ws_echo,
            max_payload,
        };
        let server = serve(routes, &settings, worker_cap, listener, admin_listener)?;
        Ok(Application {
            port,
            admin_port,
            shutdown: Shutdown {
                registries,
                server: server.handle(),
                ops: ops_state,
                drain_window: Duration::from_millis(settings.server.drain_window_ms),
                drain_batches: settings.server.drain_batches.max(1),
                flush_window: Duration::from_millis(settings.audit.shutdown_flush_ms),
                audit: audit_writer,
                audit_cutoff,
                audit_arbiter,
                presence: presence.map(Arc::new),
            },
            server,
            registry,
            events,
            cluster,
            node_id,
            node_name,
            audit,
        })
    }

    /// Namespace sockets joining and leaving, with their reasons: only for
    /// an application from [`Application::build_watched`] (otherwise the
    /// receiver is closed at once).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SocketEvent> {
        match &self.events {
            Some(events) => events.subscribe(),
            None => tokio::sync::broadcast::channel(1).1,
        }
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when `admin.address` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// Runs until the server is stopped. SIGINT or SIGTERM runs
    /// [`Shutdown::run`].
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = self.shutdown.clone();
        actix_web::rt::spawn(async move {
            if wait_for_signal().await.is_ok() {
                tracing::info!("signal received: shutting down");
                shutdown.run().await;
            }
        });
        self.server.await
    }

    /// A handle to stop the server.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// A handle for a graceful shutdown.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

/// Stops the server, within one bound ([`Shutdown::bound`]).
#[derive(Clone)]
pub struct Shutdown {
    registries: Vec<Registry>,
    server: actix_web::dev::ServerHandle,
    ops: Arc<OpsState>,
    drain_window: Duration,
    drain_batches: usize,
    /// `audit.shutdown_flush_ms`: the flush's part of the bound.
    flush_window: Duration,
    audit: Addr<AuditWriter>,
    /// Reaches a database write in flight, which holds the writer.
    audit_cutoff: Cutoff,
    audit_arbiter: actix::ArbiterHandle,
    /// This node's entry in the node directory (`cluster.sticky = false`).
    presence: Option<Arc<Presence>>,
}

/// The end of the flush window kept for appending what the database did
/// not take to the spill file (at most `queue + batch_size` rows: a few
/// MB, written in milliseconds), at most a quarter of the window.
const SPILL_MARGIN: Duration = Duration::from_millis(300);

impl Shutdown {
    /// The longest [`Self::run`] takes: `server.drain_window_ms +
    /// audit.shutdown_flush_ms` (12 s by default). What stops the process
    /// must wait longer before it kills it: compose's `stop_grace_period`
    /// and `scripts/cluster stop` wait 15 s (`docker stop` alone waits
    /// 10 s: give it `-t 15`).
    pub fn bound(&self) -> Duration {
        self.drain_window + self.flush_window
    }

    /// Drains the server and flushes the audit log within [`Self::bound`]:
    /// 1. new sessions are refused (503) and `/readyz` turns false at once;
    /// 2. the open sessions are closed with "server shutting down" in
    ///    `server.drain_batches` batches spread over the first three
    ///    quarters of `server.drain_window_ms` (no Socket.IO DISCONNECT is
    ///    sent, so clients reconnect, behind a balancer to another node, and
    ///    not all at the same moment). Each close records its audit row at
    ///    once. A WebSocket gets what was queued and a close frame; a
    ///    polling GET that is pending is answered at once (with what is
    ///    buffered, else the close packet); a polling session with no GET
    ///    out keeps its last answer for its client's next GET;
    /// 3. the drain ends when every session is gone, a quarter of the
    ///    window after the last batch at the latest (so within the window):
    ///    a polling client that never polls again holds nothing past it;
    /// 4. the audit log is flushed: the database gets until
    ///    `audit.shutdown_flush_ms` after the drain (less a margin to
    ///    spill); what it has not taken by then, or at all when it is
    ///    known to be down, goes to the spill file, for the next start;
    /// 5. the HTTP server stops at once (forced: a graceful stop would wait
    ///    for every connection to end, idle keep-alive ones included,
    ///    `limits.keep_alive_ms`, or up to actix's 30 s for one that does
    ///    not; the sessions are closed and their last answers written by
    ///    now), rows recorded meanwhile are spilled, and the audit arbiter
    ///    stops.
    pub async fn run(&self) {
        use crate::conn::messages::CloseSession;
        use crate::engineio::CloseCause;
        use crate::reason::DisconnectReason;
        let started = tokio::time::Instant::now();
        self.ops.start_draining();
        let sessions: Vec<_> = self.registries.iter().flat_map(|r| r.addrs()).collect();
        tracing::info!(
            sessions = sessions.len(),
            window = ?self.drain_window,
            batches = self.drain_batches,
            bound = ?self.bound(),
            "draining"
        );
        let per_batch = sessions.len().div_ceil(self.drain_batches).max(1);
        let gap = self.drain_window * 3 / 4 / self.drain_batches as u32;
        let mut last_batch = started;
        for (i, batch) in sessions.chunks(per_batch).enumerate() {
            last_batch = started + gap * i as u32;
            tokio::time::sleep_until(last_batch).await;
            for addr in batch {
                let cause = CloseCause::new(DisconnectReason::ServerShuttingDown, "server shutting down");
                addr.do_send(CloseSession(cause));
            }
        }
        // A quarter of the window after the last batch: time for a polling
        // client to come for its last answer, which a live one does at once.
        let deadline = (last_batch + self.drain_window / 4).min(started + self.drain_window);
        while self.registries.iter().any(|r| !r.is_empty()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its sessions are gone: the other nodes stop forwarding to it.
        if let Some(presence) = &self.presence {
            presence.leave().await;
        }
        let end = tokio::time::Instant::now() + self.flush_window;
        let margin = SPILL_MARGIN.min(self.flush_window / 4);
        self.audit_cutoff.set(end - margin);
        let flushed = self.flush_audit_until(end - margin / 2).await;
        self.server.stop(false).await;
        // Sessions the stop ended may have recorded rows: the cutoff is
        // (nearly) past, so they go to the spill file if not yet written.
        let swept = self.flush_audit_until(end).await;
        self.audit_arbiter.stop();
        tracing::info!(took = ?started.elapsed(), audit_flushed = flushed && swept, "shut down");
    }

    /// Writes every audit row accepted so far to the database (or the spill
    /// file if it is down); whether the database took them all.
    pub async fn flush_audit(&self) -> bool {
        match self.audit.send(Flush).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!("audit database unavailable: rows kept in the spill file");
                false
            }
            Err(_) => false,
        }
    }

    /// [`Self::flush_audit`], given up at `deadline` (the writer answers
    /// before it: the cutoff stops its database work earlier).
    async fn flush_audit_until(&self, deadline: tokio::time::Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.audit.send(Flush)).await {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                tracing::warn!("audit database unavailable at shutdown: rows kept in the spill file");
                false
            }
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::error!("audit flush did not finish within audit.shutdown_flush_ms");
                false
            }
        }
    }
}

/// The open-file limit, raised to its hard limit first: each WebSocket
/// session holds two descriptors (its socket and a duplicate used to abort
/// a slow consumer), so take every file the hard limit allows rather than
/// the usual soft 1024.
fn open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            let soft = rlimit::Resource::NOFILE.get().map_or(1024, |(soft, _)| soft);
            tracing::warn!(open_files = soft, "could not raise the open-file limit: {e}");
            soft
        }
    }
}

/// Descriptors kept back from sessions, at least: the listener, the audit
/// database and spill file, Redis, logs, and the requests that are not
/// sessions (`/healthz`, `/metrics`, the API).
const RESERVED_FILES_MIN: u64 = 64;

/// What `server.max_connections = 0` stands for, from the open-file limit:
/// an eighth of it (at least [`RESERVED_FILES_MIN`]) is kept for everything
/// that is not a session, and the rest halved, as a session may hold two
/// descriptors (a WebSocket and its duplicate, a polling GET and a POST).
fn derived_max_connections(open_files: u64) -> usize {
    let reserve = (open_files / 8).max(RESERVED_FILES_MIN);
    let sessions = open_files.saturating_sub(reserve) / 2;
    usize::try_from(sessions).unwrap_or(usize::MAX).max(1)
}

/// Connections beyond sessions' that one worker may hold (the operations
/// endpoints, the API, idle keep-alive connections).
const WORKER_HEADROOM: usize = 1024;

/// actix-server's cap on one worker's connections. It must never be the
/// one that binds, as it refuses by not accepting at all: it is at least
/// the open-file limit (no worker can hold more connections than the
/// process has descriptors) and at least twice `max_connections` with some
/// headroom (every session on one worker, a polling one with its GET and
/// its POST, when `max_connections` is set above the file limit).
fn worker_connection_cap(max_connections: usize, open_files: u64) -> usize {
    let files = usize::try_from(open_files).unwrap_or(usize::MAX);
    max_connections
        .saturating_mul(2)
        .saturating_add(WORKER_HEADROOM)
        .max(files)
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Binds the listening socket with an explicit listen(2) backlog (std's
/// `TcpListener::bind` picks its own), trying each address the host resolves
/// to, as `bind` does. An error names the address (a port in use says which
/// one), keeping its kind.
fn bind(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    bind_any(host, port, backlog)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}")))
}

fn bind_any(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs as _;
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let attempt = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
            Ok::<_, std::io::Error>(TcpListener::from(socket))
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")))
}

fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allow_any_method()
        .allow_any_header()
        .supports_credentials()
        .max_age(86_400);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_node_on_a_public_address_is_warned_about() {
        let mut s = Settings::defaults();
        s.server.host = "127.0.0.1".into();
        assert!(exposure_warnings(&s).is_empty(), "loopback: one machine");
        s.server.host = "0.0.0.0".into();
        let warnings = exposure_warnings(&s);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("auth.anonymous_publish"));
        assert!(warnings[1].contains("server.allowed_origins"));
        s.auth.anonymous_publish.clear();
        s.server.allowed_origins = vec!["https://app.example.com".into()];
        assert!(exposure_warnings(&s).is_empty());
    }

    #[test]
    fn the_derived_cap_leaves_a_reserve_and_two_files_per_session() {
        assert_eq!(derived_max_connections(1024), (1024 - 128) / 2);
        assert_eq!(derived_max_connections(20_000), (20_000 - 2_500) / 2);
        assert_eq!(derived_max_connections(256), (256 - 64) / 2);
        assert_eq!(derived_max_connections(10), 1);
        assert!(derived_max_connections(u64::MAX) > 0);
    }

    #[test]
    fn actix_cap_is_never_the_one_that_binds() {
        for files in [10, 1024, 20_000, 1 << 20] {
            let ours = derived_max_connections(files);
            let actix = worker_connection_cap(ours, files);
            assert!(actix >= files as usize && actix > 2 * ours, "{files}: {actix}");
        }
        // Set above the file limit: still twice as many, and headroom.
        assert_eq!(worker_connection_cap(100_000, 1024), 200_000 + WORKER_HEADROOM);
        assert_eq!(worker_connection_cap(usize::MAX, 1024), usize::MAX);
    }
}
