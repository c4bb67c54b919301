//! Everything "across the nodes", behind one handle: publish, presence,
//! room lists, kick, join and leave. This node's part is the broker's; the
//! other nodes' part goes through the adapter, which only this module and
//! the composition root name. The HTTP API and the connection hold a
//! [`Cluster`] and never see Redis, so another adapter (or a store of
//! recent broadcasts) plugs in here.
//!
//! Each operation asks this node first, then the others: a socket is on
//! one node only, and this node answers at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::dev::Request;
use actix::Addr;
use serde_json::json;

use crate::adapter::redis::{DisconnectRemote, FetchSockets, MembershipRemote, OperateRemote, RedisAdapter};
use crate::adapter::{LocalSockets, RemoteOp, RemoteOperation, Session, SessionStoreDown, TakeSession};
use crate::broker::{
    BackendPublish, Broker, Join, JoinError, Kick, Leave, ListRooms, Members, Publish, Register, RegisterBatch, Routed,
};

/// The broker is gone (the node is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker is not running")]
pub struct Unavailable;

thread_local! {
    /// Registrations this thread gathered, per broker (a process may run
    /// several nodes, as the tests do), not yet sent.
    static PENDING: std::cell::RefCell<Vec<(Addr<Broker>, Vec<Register>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends the registrations this thread gathered.
fn flush_registrations() {
    // (Taking an empty list allocates nothing: the common case.)
    for (broker, batch) in PENDING.with_borrow_mut(std::mem::take) {
        broker.do_send(RegisterBatch(batch));
    }
}

/// The cluster as one node sees it.
#[derive(Clone)]
pub struct Cluster {
    broker: Addr<Broker>,
    remote: Option<Addr<RedisAdapter>>,
    /// Where recovery sessions are kept (`streams` mode); none: in the
    /// broker, on this node only.
    store: Option<actix::Recipient<TakeSession>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("spans_nodes", &self.spans_nodes())
            .finish_non_exhaustive()
    }
}

/// A room's members across the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterMembers {
    /// Members on every node that answered.
    pub count: usize,
    /// `(socket id, user)`, up to the limit: this node's first.
    pub members: Vec<(String, Option<String>)>,
    /// A node did not answer in time (`None` on a single node).
    pub partial: Option<bool>,
}

impl ClusterMembers {
    /// `{count, members:[{id, user}]}`, and `partial` in a cluster.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let members: Vec<_> = self
            .members
            .iter()
            .map(|(id, user)| json!({"id": id, "user": user}))
            .collect();
        let mut out = serde_json::Map::new();
        out.insert("count".into(), json!(self.count));
        out.insert("members".into(), json!(members));
        if let Some(partial) = self.partial {
            out.insert("partial".into(), json!(partial));
        }
        out
    }
}

/// The rooms of a namespace across the cluster, with their member counts.
#[derive(Debug, Clone, Default)]
pub struct ClusterRooms {
    /// Room name → members, on every node that answered.
    pub counts: BTreeMap<String, usize>,
    /// A node did not answer in time (`None` on a single node).
    pub partial: Option<bool>,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// This node's members it reaches.
    pub recipients: usize,
    /// `streams` mode: whether the stream took it (`false`: only this
    /// node's members get it); `None` in the other modes, where a publish
    /// is handed to Redis pub/sub without an answer.
    pub stored: Option<bool>,
}

/// Waits for the broker's answer, then (`streams` mode) for the stream's.
async fn settle<M>(request: Request<Broker, M>) -> Result<Published, Unavailable>
where
    M: actix::Message<Result = Routed> + Send + 'static,
    Broker: actix::Handler<M>,
{
    let routed = request.await.map_err(|_| Unavailable)?;
    let stored = match routed.stored {
        Some(answer) => Some(answer.await.unwrap_or(false)),
        None => None,
    };
    Ok(Published {
        recipients: routed.recipients,
        stored,
    })
}

/// What became of a join or leave asked for a socket by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Done here, or asked of the node that has the socket.
    Done,
    /// A room limit refused the join (the socket is here).
    RoomLimit,
    /// No node has the socket.
    NotFound,
}

impl Cluster {
    /// This node's `broker`, and the other nodes through `remote` (none on
    /// a single node).
    pub fn new(broker: Addr<Broker>, remote: Option<Addr<RedisAdapter>>) -> Self {
        Self {
            broker,
            remote,
            store: None,
        }
    }

    /// The same cluster keeping recovery sessions in `store` (`streams`
    /// mode) rather than in the broker.
    pub fn with_session_store(mut self, store: actix::Recipient<TakeSession>) -> Self {
        self.store = Some(store);
        self
    }

    /// Takes the recovery session `pid` from the cluster's store: `None`
    /// when the store is the broker's own (it takes it when the socket
    /// resumes), or the store has no such session.
    pub async fn take_session(&self, pid: &str) -> Result<Option<Session>, SessionStoreDown> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let take = TakeSession { pid: pid.to_owned() };
        store.send(take).await.map_err(|_| SessionStoreDown)?
    }

    /// Whether sessions are kept in the cluster's store.
    pub fn stores_sessions(&self) -> bool {
        self.store.is_some()
    }

    /// Whether other nodes may exist (an adapter is configured).
    pub fn spans_nodes(&self) -> bool {
        self.remote.is_some()
    }

    /// This node's broker, for what concerns this node's sockets only
    /// (subscribe, leave, unregister). Registrations this thread gathered
    /// go first, so that nothing a connection sends overtakes its own
    /// [`Cluster::register`].
    pub fn broker(&self) -> &Addr<Broker> {
        flush_registrations();
        &self.broker
    }

    /// Registers a namespace socket with this node's broker. The
    /// registrations of a worker's turn go together, in one message and
    /// one wake-up of the broker's thread, once the worker's other ready
    /// tasks had their turn (a burst of handshakes woke the broker once
    /// per CONNECT); anything this thread sends the broker after it waits
    /// for them (see [`Cluster::broker`]).
    pub fn register(&self, register: Register) {
        let first = PENDING.with_borrow_mut(|pending| {
            let first = pending.is_empty();
            match pending.iter_mut().find(|(to, _)| *to == self.broker) {
                Some((_, batch)) => batch.push(register),
                None => pending.push((self.broker.clone(), vec![register])),
            }
            first
        });
        if first {
            actix_rt::spawn(async { flush_registrations() });
        }
    }

    /// A client's publish, here and on the other nodes (the broker hands
    /// it to the adapter). It is with the broker when this returns (so a
    /// connection's publishes keep their order); the future resolves to
    /// what became of it.
    pub fn publish(&self, publish: Publish) -> impl std::future::Future<Output = Result<Published, Unavailable>> {
        settle(self.broker().send(publish))
    }

    /// A backend's publish (see [`BackendPublish`]).
    pub async fn backend_publish(&self, publish: Publish) -> Result<Published, Unavailable> {
        settle(self.broker().send(BackendPublish(publish))).await
    }

    /// The members of `room`: this node's (from the broker) and the other
    /// nodes' (a REMOTE_FETCH), up to `limit` listed.
    pub async fn room_members(
        &self,
        nsp: Arc<str>,
        room: Arc<str>,
        limit: usize,
    ) -> Result<ClusterMembers, Unavailable> {
        let local = self
            .broker
            .send(Members {
                nsp: nsp.clone(),
                room: room.clone(),
                limit,
            })
            .await
            .map_err(|_| Unavailable)?;
        let mut out = ClusterMembers {
            count: local.count,
            members: local
                .members
                .iter()
                .map(|(id, u)| (id.to_string(), u.as_deref().map(str::to_owned)))
                .collect(),
            partial: None,
        };
        if let Some(remote) = &self.remote {
            let fetch = FetchSockets {
                nsp: nsp.to_string(),
                rooms: vec![room.to_string()],
            };
            let answer = remote.send(fetch).await.unwrap_or_default();
            out.partial = Some(answer.partial);
            out.count += answer.sockets.len();
            let room_left = limit.saturating_sub(out.members.len());
            out.members
                .extend(answer.sockets.into_iter().take(room_left).map(|s| (s.id, s.user)));
        }
        Ok(out)
    }

    /// The rooms of `nsp` with their members, counted over every node
    /// (the other nodes' sockets with their rooms).
    pub async fn rooms(&self, nsp: Arc<str>) -> Result<ClusterRooms, Unavailable> {
        let local = self
            .broker
            .send(ListRooms { nsp: nsp.clone() })
            .await
            .map_err(|_| Unavailable)?;
        let mut out = ClusterRooms {
            counts: local.iter().map(|(name, n)| (name.to_string(), *n)).collect(),
            partial: None,
        };
        if let Some(remote) = &self.remote {
            let fetch = FetchSockets {
                nsp: nsp.to_string(),
                rooms: vec![],
            };
            let answer = remote.send(fetch).await.unwrap_or_default();
            for room in answer.sockets.iter().flat_map(|s| s.rooms.iter()) {
                *out.counts.entry(room.clone()).or_default() += 1;
            }
            out.partial = Some(answer.partial);
        }
        Ok(out)
    }

    /// Disconnects the socket `id` wherever it is: here, or (when `nsp` is
    /// known) on the node that reports having it. Whether a node had it.
    pub async fn kick(&self, id: &str, nsp: Option<Arc<str>>, detail: String) -> Result<bool, Unavailable> {
        let here = self
            .broker
            .send(Kick {
                socket_id: id.into(),
                detail,
            })
            .await
            .map_err(|_| Unavailable)?;
        if here {
            return Ok(true);
        }
        let (Some(remote), Some(nsp)) = (&self.remote, nsp) else {
            return Ok(false);
        };
        // A socket id is also the name of its own room.
        if !self.remote_has(remote, &nsp, id).await {
            return Ok(false);
        }
        remote.do_send(DisconnectRemote {
            nsp: nsp.to_string(),
            socket_id: id.to_owned(),
        });
        Ok(true)
    }

    /// Makes the socket `id` join (or leave) `room`, here or on the node
    /// that has it.
    pub async fn membership(
        &self,
        nsp: Arc<str>,
        id: Arc<str>,
        room: Arc<str>,
        join: bool,
    ) -> Result<Membership, Unavailable> {
        let here = LocalSockets {
            nsp: nsp.clone(),
            rooms: vec![id.clone()],
            except: vec![],
        };
        let local = !self.broker().send(here).await.map_err(|_| Unavailable)?.is_empty();
        if local && join {
            let joined = self.broker().send(Join {
                socket_id: id.clone(),
                room: room.clone(),
            });
            if let Err(JoinError::TooManyRooms | JoinError::TooManyRoomsInTotal) =
                joined.await.map_err(|_| Unavailable)?
            {
                return Ok(Membership::RoomLimit);
            }
            return Ok(Membership::Done);
        }
        if local {
            let left = self.broker().send(Leave {
                socket_id: id.clone(),
                room: room.clone(),
            });
            left.await.map_err(|_| Unavailable)?;
            return Ok(Membership::Done);
        }
        let Some(remote) = &self.remote else {
            return Ok(Membership::NotFound);
        };
        if !self.remote_has(remote, &nsp, &id).await {
            return Ok(Membership::NotFound);
        }
        remote.do_send(MembershipRemote {
            nsp: nsp.to_string(),
            socket_id: id.to_string(),
            room: room.to_string(),
            join,
        });
        Ok(Membership::Done)
    }

    /// Whether another node reports the socket `id` in `nsp`.
    async fn remote_has(&self, remote: &Addr<RedisAdapter>, nsp: &str, id: &str) -> bool {
        let fetch = FetchSockets {
            nsp: nsp.to_owned(),
            rooms: vec![id.to_owned()],
        };
        let answer = remote.send(fetch).await.unwrap_or_default();
        answer.sockets.iter().any(|s| s.id == id)
    }
}

/// The sockets of a namespace across the cluster (the Admin UI's list).
#[derive(Debug, Clone, Default)]
pub struct ClusterSockets {
    /// This node's sockets.
    pub local: Vec<crate::adapter::SocketInfo>,
    /// The other nodes' sockets, as they answered.
    pub remote: Vec<crate::adapter::SocketInfo>,
    /// A node did not answer in time (`None` on a single node).
    pub partial: Option<bool>,
}

/// Operations on a selection of sockets, wherever they are (Socket.IO's
/// `io.in(rooms).socketsJoin(…)`, `socketsLeave`, `disconnectSockets`).
/// Kept apart from the operations above so that they read as one group.
impl Cluster {
    /// The sockets of `nsp` here and on the other nodes (a REMOTE_FETCH).
    pub async fn sockets(&self, nsp: Arc<str>) -> Result<ClusterSockets, Unavailable> {
        let local = LocalSockets {
            nsp: nsp.clone(),
            rooms: vec![],
            except: vec![],
        };
        let local = self.broker().send(local).await.map_err(|_| Unavailable)?;
        let mut out = ClusterSockets {
            local,
            ..Default::default()
        };
        if let Some(remote) = &self.remote {
            let fetch = FetchSockets {
                nsp: nsp.to_string(),
                rooms: vec![],
            };
            let answer = remote.send(fetch).await.unwrap_or_default();
            out.remote = answer.sockets;
            out.partial = Some(answer.partial);
        }
        Ok(out)
    }

    /// Applies `op` to the sockets of `selection` in `nsp` (rooms, a
    /// socket id naming that socket; empty = the whole namespace) on this
    /// node and, through the adapter's REMOTE_JOIN, REMOTE_LEAVE and
    /// REMOTE_DISCONNECT requests, on the others. A disconnect without
    /// `close` ends the namespace socket only (its client sees `io server
    /// disconnect`).
    pub async fn operate(&self, nsp: Arc<str>, selection: Vec<Arc<str>>, op: RemoteOp) -> Result<(), Unavailable> {
        if let Some(remote) = &self.remote {
            remote.do_send(OperateRemote {
                nsp: nsp.to_string(),
                selection: selection.iter().map(|s| s.to_string()).collect(),
                op: op.clone(),
            });
        }
        let here = RemoteOperation {
            nsp,
            rooms: selection,
            except: vec![],
            op,
        };
        self.broker().send(here).await.map_err(|_| Unavailable)
    }
}
