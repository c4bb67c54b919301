//! How the adapter reaches Redis: one server, or a Redis Cluster, in the
//! clear (`redis://`) or over TLS (`rediss://`).
//!
//! Both kinds of connection are multiplexed and cheap to clone; [`Conn`]
//! lets the publisher, the counters and the sharded subscriber run the
//! same commands on either. A connection made with a push sender speaks
//! RESP3 and hands `smessage` pushes (and its own loss) to that sender.
//!
//! TLS is rustls. The server's certificate is checked against the CA of
//! `redis.tls_ca_file` when it is set (a managed Redis with a private CA, a
//! self-hosted one), else against the public web roots built into the
//! binary (webpki-roots: the same in a container without a CA bundle). An
//! ACL user and password travel in the URL (`rediss://user:pass@host:port`)
//! and are sent with HELLO (RESP3) or AUTH on every connection, a Redis
//! Cluster's included. A failure names the server and the cause
//! ([`LinkError`]), since "connection refused" alone does not say which of
//! several URLs, nor that the certificate was the problem.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisError,
    RedisFuture, TlsCertificates, Value,
};

/// Why the adapter's settings cannot make a Redis client (caught when the
/// settings are validated, before anything listens).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL does not parse, or names a scheme this build lacks.
    #[error("not a Redis URL (redis://host:port/db, rediss://user:password@host:port/db for TLS): {0}")]
    Url(RedisError),
    /// The CA file cannot be read, or holds no certificate.
    #[error("{path}: {why}")]
    CaFile {
        /// The file named by `redis.tls_ca_file`.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A CA file for a URL in the clear: almost surely a `redis://` that
    /// should be `rediss://`, refused rather than silently sent in the clear.
    #[error("redis.tls_ca_file is set but redis.url is not a TLS URL: use rediss://")]
    CaWithoutTls,
}

impl SetupError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            SetupError::Url(_) => "redis.url",
            SetupError::CaFile { .. } | SetupError::CaWithoutTls => "redis.tls_ca_file",
        }
    }
}

/// Redis could not be reached, or refused this node: the server (host and
/// port, and whether over TLS) and the cause, with a hint for the causes
/// that are a matter of settings.
#[derive(Debug, thiserror::Error)]
#[error("Redis at {addr}: {source}{}", hint(.source))]
pub(crate) struct LinkError {
    /// `host:port`, ` (TLS)` when it is `rediss://`.
    addr: String,
    /// What redis-rs said (for TLS, rustls's reason, e.g. an unknown issuer).
    source: RedisError,
}

/// What to check when the cause is a setting.
fn hint(e: &RedisError) -> &'static str {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("CertNotValidForName") {
        " (the server's certificate is not trusted: redis.tls_ca_file must hold the CA that signed it, \
         for the host name or address in redis.url)"
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        " (the server does not speak TLS on this port: use redis:// or the server's tls-port)"
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed || text.contains("WRONGPASS") {
        " (check the user and password in redis.url)"
    } else if text.contains("NOPERM") {
        " (the ACL user lacks a command or channel the adapter needs)"
    } else {
        ""
    }
}

/// Where to connect.
#[derive(Clone)]
pub(crate) enum Connector {
    /// One Redis server (a standalone node, or any node for classic pub/sub).
    Single(redis::Client),
    /// A Redis Cluster, found from a seed node; the CA its TLS trusts.
    Cluster(Vec<redis::ConnectionInfo>, Option<TlsCertificates>),
}

/// A connection of either kind.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The trust anchors of `ca_file` (PEM), or `None` (the built-in public
/// roots) when it is empty.
fn certificates(ca_file: &str) -> Result<Option<TlsCertificates>, SetupError> {
    if ca_file.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| SetupError::CaFile {
        path: ca_file.to_owned(),
        why,
    };
    let pem = std::fs::read(ca_file).map_err(|e| bad(format!("cannot read it: {e}")))?;
    // redis-rs would take a file without any certificate as "trust nothing".
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl Connector {
    /// A connector for `url`; `cluster` treats it as a Redis Cluster seed;
    /// `ca_file` (PEM, empty = the public roots) is what TLS trusts.
    pub(crate) fn open(url: &str, cluster: bool, ca_file: &str) -> Result<Self, SetupError> {
        let info = url.into_connection_info().map_err(SetupError::Url)?;
        let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        let certs = certificates(ca_file)?;
        if certs.is_some() && !tls {
            return Err(SetupError::CaWithoutTls);
        }
        let connector = if cluster {
            let connector = Self::Cluster(vec![info], certs);
            // Parses the CA now rather than at the first connection.
            connector.cluster_builder().build().map_err(SetupError::Url)?;
            connector
        } else {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            };
            Self::Single(client.map_err(SetupError::Url)?)
        };
        Ok(connector)
    }

    /// The server (or the cluster's seed) for messages: `host:port`, and
    /// whether it is over TLS.
    pub(crate) fn addr(&self) -> String {
        let addr = match self {
            Self::Single(client) => &client.get_connection_info().addr,
            Self::Cluster(seeds, _) => match seeds.first() {
                Some(seed) => &seed.addr,
                None => return "(no seed)".into(),
            },
        };
        match addr {
            ConnectionAddr::TcpTls { .. } => format!("{addr} (TLS)"),
            _ => addr.to_string(),
        }
    }

    /// `e` with the server it came from.
    pub(crate) fn error(&self, e: RedisError) -> LinkError {
        LinkError {
            addr: self.addr(),
            source: e,
        }
    }

    fn cluster_builder(&self) -> redis::cluster::ClusterClientBuilder {
        let (seeds, certs) = match self {
            Self::Cluster(seeds, certs) => (seeds.clone(), certs.clone()),
            Self::Single(client) => (vec![client.get_connection_info().clone()], None),
        };
        let builder = redis::cluster::ClusterClientBuilder::new(seeds);
        match certs {
            Some(certs) => builder.certs(certs),
            None => builder,
        }
    }

    /// A RESP2 pub/sub connection (classic mode: PSUBSCRIBE and SUBSCRIBE
    /// on one server).
    pub(crate) async fn pubsub(&self) -> Result<PubSub, LinkError> {
        match self {
            Self::Single(client) => client.get_async_pubsub().await.map_err(|e| self.error(e)),
            Self::Cluster(..) => Err(self.error(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "classic pub/sub does not run on a Redis Cluster",
            )))),
        }
    }

    /// A command connection.
    pub(crate) async fn command(&self, limit: Duration) -> Result<Conn, LinkError> {
        self.connect::<fn(PushInfo) -> Result<(), ()>>(limit, None).await
    }

    /// A command connection, or (with `push`) a RESP3 one whose pushes go
    /// to `push`.
    pub(crate) async fn connect<F>(&self, limit: Duration, push: Option<F>) -> Result<Conn, LinkError>
    where
        F: Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    {
        self.try_connect(limit, push).await.map_err(|e| self.error(e))
    }

    async fn try_connect<F>(&self, limit: Duration, push: Option<F>) -> redis::RedisResult<Conn>
    where
        F: Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    {
        match self {
            Self::Single(client) => {
                let Some(push) = push else {
                    return Ok(Conn::Single(client.get_multiplexed_async_connection().await?));
                };
                // The clone keeps the TLS parameters (the CA) of the client.
                let mut info = client.get_connection_info().clone();
                info.redis.protocol = ProtocolVersion::RESP3;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(limit)
                    .set_response_timeout(limit)
                    .set_push_sender(push);
                let conn = redis::Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Single(conn))
            }
            Self::Cluster(..) => {
                let mut builder = self
                    .cluster_builder()
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(limit)
                    .response_timeout(limit);
                if let Some(push) = push {
                    builder = builder.push_sender(push);
                }
                Ok(Conn::Cluster(builder.build()?.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The subscriber count of `channel` in a `PUBSUB NUMSUB` / `SHARDNUMSUB`
/// answer: an array `[channel, n, …]` or (RESP3, or a cluster's combined
/// answer) a map; counts of several entries for the channel are summed.
pub(crate) fn subscriber_count(v: &Value, channel: &str) -> Option<usize> {
    let is_channel = |k: &Value| matches!(k, Value::BulkString(b) if b == channel.as_bytes());
    let count = |n: &Value| match n {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    };
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(items) => items.chunks(2).filter_map(|p| Some((p.first()?, p.get(1)?))).collect(),
        Value::Map(entries) => entries.iter().map(|(k, n)| (k, n)).collect(),
        _ => return None,
    };
    let mut total = None;
    for (k, n) in pairs {
        if is_channel(k) {
            *total.get_or_insert(0) += count(n)?;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_server_and_whether_it_is_tls() {
        // unwrap: valid URLs without a CA file.
        let tls = Connector::open("rediss://u:secret@127.0.0.1:6380/", false, "").unwrap();
        let clear = Connector::open("redis://127.0.0.1:6379/", false, "").unwrap();
        let seed = Connector::open("rediss://127.0.0.1:7000/", true, "").unwrap();
        assert_eq!(tls.addr(), "127.0.0.1:6380 (TLS)");
        assert_eq!(clear.addr(), "127.0.0.1:6379");
        assert_eq!(seed.addr(), "127.0.0.1:7000 (TLS)");
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let message = tls.error(RedisError::from(refused)).to_string();
        assert!(message.starts_with("Redis at 127.0.0.1:6380 (TLS): invalid peer certificate: UnknownIssuer (the server's certificate is not trusted: redis.tls_ca_file"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn a_ca_file_needs_a_tls_url_and_a_certificate() {
        let dir = std::env::temp_dir().join(format!("roomcast-link-{}", std::process::id()));
        // unwrap (three): the temporary directory is writable, its path UTF-8.
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let empty = empty.to_str().unwrap();
        assert!(matches!(
            Connector::open("redis://127.0.0.1:6379/", false, empty),
            Err(SetupError::CaFile { .. })
        ));
        assert!(matches!(
            Connector::open("rediss://127.0.0.1:6379/", false, "/nonexistent/ca.pem"),
            Err(SetupError::CaFile { .. })
        ));
        assert!(matches!(
            Connector::open("localhost:6379", false, ""),
            Err(SetupError::Url(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counts_are_read_from_arrays_and_maps() {
        let ch = || Value::BulkString(b"socket.io#/#".to_vec());
        assert_eq!(
            subscriber_count(&Value::Array(vec![ch(), Value::Int(3)]), "socket.io#/#"),
            Some(3)
        );
        assert_eq!(
            subscriber_count(&Value::Map(vec![(ch(), Value::Int(2))]), "socket.io#/#"),
            Some(2)
        );
        assert_eq!(
            subscriber_count(&Value::Array(vec![ch(), Value::Int(1)]), "other"),
            None
        );
        assert_eq!(subscriber_count(&Value::Nil, "socket.io#/#"), None);
    }
}
