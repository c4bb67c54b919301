//! How the adapter reaches Redis: one server, or a Redis Cluster.
//!
//! Both kinds of connection are multiplexed and cheap to clone; [`Conn`]
//! lets the publisher, the counters and the sharded subscriber run the
//! same commands on either. A connection made with a push sender speaks
//! RESP3 and hands `smessage` pushes (and its own loss) to that sender.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};

/// Where to connect.
#[derive(Clone)]
pub(crate) enum Connector {
    /// One Redis server (a standalone node, or any node for classic pub/sub).
    Single(redis::Client),
    /// A Redis Cluster, found from a seed node.
    Cluster(Vec<redis::ConnectionInfo>),
}

/// A connection of either kind.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connector {
    /// A connector for `url`; `cluster` treats it as a Redis Cluster seed.
    pub(crate) fn open(url: &str, cluster: bool) -> redis::RedisResult<Self> {
        Ok(if cluster {
            Self::Cluster(vec![url.into_connection_info()?])
        } else {
            Self::Single(redis::Client::open(url)?)
        })
    }

    /// A command connection.
    pub(crate) async fn command(&self, limit: Duration) -> redis::RedisResult<Conn> {
        self.connect::<fn(PushInfo) -> Result<(), ()>>(limit, None).await
    }

    /// A command connection, or (with `push`) a RESP3 one whose pushes go
    /// to `push`.
    pub(crate) async fn connect<F>(&self, limit: Duration, push: Option<F>) -> redis::RedisResult<Conn>
    where
        F: Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    {
        match self {
            Self::Single(client) => {
                let Some(push) = push else {
                    return Ok(Conn::Single(client.get_multiplexed_async_connection().await?));
                };
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
            Self::Cluster(seeds) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
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
