//! `streams` mode's I/O (`@socket.io/redis-streams-adapter` 0.3.1, npm: its
//! `lib/adapter.ts` and `lib/util.ts`; the wire format is [`streams`]).
//!
//! Four kinds of task, none of which a connection or the broker waits on:
//! - the appender drains a bounded queue and pipelines `XADD <stream>
//!   MAXLEN ~ <max_len> * uid … nsp … type … data …` in queue order, one
//!   round trip per batch with a timeout, once every reader knows where it
//!   starts (else an entry could fall before a reader's start). An entry Redis did not take
//!   (unreachable, timed out, queue full) is lost for the other nodes,
//!   counted and logged; if it is this node's broadcast it goes straight
//!   back to the broker ([`Sequenced`] without an offset) so that this
//!   node's members still get it. Once Redis has failed, batches fail at
//!   once (connection attempts run in the background, [`OnDemand`]) until
//!   the node has reconnected: only a batch in flight when Redis stops
//!   answering holds this node's own broadcasts back, for up to the command
//!   timeout. A batch that timed out may still have been added: its
//!   broadcasts then reach this node's members twice (once handed back,
//!   once read), the price of not holding local delivery hostage to a hung
//!   Redis;
//! - one reader per stream, on a connection of its own (a blocking `XREAD`
//!   holds its connection for up to `block`), hands every entry to the
//!   broker in stream order: broadcasts, this node's own included, as
//!   [`Sequenced`] with their entry id; joins, leaves and disconnects of
//!   other nodes as [`RemoteOperation`]. At start it reads back
//!   `backfill` (`XRANGE`, for the broker's recovery log only) and goes on
//!   after the last entry of it (or the window's start), or else after the
//!   stream's last id (`XREVRANGE … COUNT 1`), so that nothing added after
//!   its start falls before its first `XREAD`; after a loss of Redis
//!   it reconnects with capped backoff and resumes after the last id it
//!   saw (what the stream trimmed meanwhile is lost);
//! - the subscriber holds `SUBSCRIBE {key}#{nsp}#` and `{key}#{nsp}#{uid}#`
//!   for the requests and answers (fetches, server-side emits, broadcasts
//!   with acks), answered through the pub/sub publish queue;
//! - the session writer drains a bounded queue of `SET key value PX ms` and
//!   `DEL key`, fire and forget: what Redis fails is dropped and counted.
//!
//! The node is connected ([`AdapterStatus::connected`]) while the
//! subscriber and every reader are: it then logs "redis adapter subscribed".

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use redis::Value;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::super::sharded::Message;
use super::super::streams::{self, Entry};
use super::super::wire::{Broadcast, WireError};
use super::link::{Conn, Connector};
use super::{
    collect, deliver, hold_subscription, malformed, remote_operation, serve, Node, Reconnect, RedisConfig,
    StreamsConfig, BACKOFF_START, BATCH,
};
use crate::adapter::{AdapterStatus, Offset, Sequenced, StreamRead};

/// An entry for the appender.
pub(in crate::adapter) struct Append {
    /// The stream of its namespace.
    stream: String,
    entry: Entry,
    /// This node's broadcast, handed back to the broker if Redis does not
    /// take it.
    pub(super) broadcast: Option<Broadcast>,
    /// Told whether the stream took it (its publisher's ack waits for it).
    stored: Option<tokio::sync::oneshot::Sender<bool>>,
}

impl Append {
    pub(super) fn new(s: &StreamsConfig, entry: Entry, broadcast: Option<Broadcast>) -> Self {
        Self {
            stream: streams::stream_of(&s.stream_name, s.stream_count, &entry.nsp),
            entry,
            broadcast,
            stored: None,
        }
    }

    /// The same entry, whose fate `stored` is told.
    pub(super) fn stored(mut self, stored: Option<tokio::sync::oneshot::Sender<bool>>) -> Self {
        self.stored = stored;
        self
    }

    /// Tells whoever waits whether the stream took it.
    pub(super) fn settle(&mut self, stored: bool) {
        if let Some(tx) = self.stored.take() {
            let _ = tx.send(stored);
        }
    }
}

/// A write for the session writer.
pub(in crate::adapter) enum SessionWrite {
    /// `SET key value PX ttl_ms`.
    Keep { key: String, value: String, ttl_ms: u64 },
    /// `DEL key`.
    Drop { key: String },
}

/// The queues of the tasks started.
pub(super) struct Started {
    pub(super) appends: mpsc::Sender<Append>,
    pub(super) sessions: mpsc::Sender<SessionWrite>,
}

/// Starts the appender, a reader per stream of `node`'s namespaces, the
/// subscriber and the session writer.
pub(super) fn start(connector: Connector, node: Node, s: StreamsConfig) -> Started {
    let names: BTreeSet<String> = node
        .config
        .namespaces
        .iter()
        .map(|nsp| streams::stream_of(&s.stream_name, s.stream_count, nsp))
        .collect();
    let health = Arc::new(Health::new(1 + names.len(), node.status.clone()));
    let (appends, queued) = mpsc::channel(node.config.queue);
    let link = OnDemand::new(connector.clone(), &node.config, health.clone());
    actix_rt::spawn(appender(link, queued, node.clone(), s.max_len));
    for (i, stream) in names.into_iter().enumerate() {
        let reader = Reader {
            connector: connector.clone(),
            node: node.clone(),
            stream,
            s: s.clone(),
            health: health.clone(),
            part: 1 + i,
        };
        actix_rt::spawn(reader.run());
    }
    let (sessions, writes) = mpsc::channel(node.config.queue);
    let link = OnDemand::new(connector.clone(), &node.config, health.clone());
    actix_rt::spawn(session_writer(link, writes, node.status.clone()));
    let key = node.config.key.clone();
    let mut channels = Vec::new();
    for nsp in &node.config.namespaces {
        channels.push(streams::public_channel(&key, nsp));
        channels.push(streams::private_channel(&key, nsp, &node.uid));
    }
    let up = move |up: bool| health.set(0, up);
    actix_rt::spawn(hold_subscription(connector, node, vec![], channels, route, up));
    Started { appends, sessions }
}

/// Whether each part (the subscriber, then each reader) is up; the node
/// is connected while all are.
struct Health {
    parts: Mutex<Vec<bool>>,
    status: Arc<AdapterStatus>,
    /// Times the node became connected.
    ups: std::sync::atomic::AtomicU64,
    /// Every reader has found where it starts (once is enough: after that
    /// each one resumes after the last entry it read).
    positioned: tokio::sync::watch::Sender<bool>,
    /// The readers that have.
    seen: Mutex<Vec<bool>>,
    /// Where each reader's knowledge of its stream starts; once every
    /// reader has one, the highest goes to the broker ([`StreamRead`]).
    floors: Mutex<Vec<Option<Offset>>>,
}

impl Health {
    fn new(parts: usize, status: Arc<AdapterStatus>) -> Self {
        Self {
            parts: Mutex::new(vec![false; parts]),
            status,
            ups: Default::default(),
            positioned: tokio::sync::watch::Sender::new(false),
            seen: Mutex::new(vec![false; parts]),
            floors: Mutex::new(vec![None; parts.saturating_sub(1)]),
        }
    }

    /// Reader `part` knows its stream from after `floor` on: once every
    /// reader does, the broker is told the highest (a namespace's log is
    /// complete after its own stream's floor, so after the highest).
    fn floor(&self, part: usize, floor: Offset, broker: &Recipient<StreamRead>) {
        // unwrap: the lock is only held to set and read the floors.
        let mut floors = self.floors.lock().unwrap();
        if let Some(f) = floors.get_mut(part.wrapping_sub(1)) {
            *f = Some(floor);
        }
        if floors.iter().all(Option::is_some) {
            let highest = floors.iter().flatten().max().copied().unwrap_or_default();
            let _ = broker.try_send(StreamRead { floor: highest });
        }
    }

    fn ups(&self) -> u64 {
        self.ups.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, part: usize, up: bool) {
        if up && part > 0 {
            // unwrap: the lock is only held to flip a flag.
            let mut seen = self.seen.lock().unwrap();
            if let Some(s) = seen.get_mut(part) {
                *s = true;
            }
            if seen.iter().skip(1).all(|s| *s) {
                self.positioned.send_replace(true);
            }
        }
        // unwrap: the lock is only held to flip a flag.
        let mut parts = self.parts.lock().unwrap();
        if let Some(p) = parts.get_mut(part) {
            *p = up;
        }
        let all = parts.iter().all(|p| *p);
        let was = self.status.connected.swap(all, std::sync::atomic::Ordering::Relaxed);
        if all && !was {
            self.ups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                streams = parts.len() - 1,
                "redis adapter subscribed (streams mode: its channels, and a reader on every stream)"
            );
        }
    }
}

/// Hands this node's own broadcast back to the broker at once, without an
/// offset (Redis did not take it).
pub(super) fn hand_back(broker: &Recipient<Sequenced>, broadcast: Broadcast, status: &AdapterStatus) {
    let back = Sequenced {
        broadcast,
        offset: None,
        backfill: false,
    };
    if broker.try_send(back).is_err() {
        AdapterStatus::add(&status.lost, 1);
        tracing::warn!("redis adapter: broker mailbox full, a broadcast of this node was not delivered here");
    }
}

/// Hands `msg` to the broker, waiting for room in its mailbox rather than
/// dropping it (a task's order is kept: it sends the next one after).
/// False: the broker is gone.
async fn to_broker(broker: &Recipient<Sequenced>, msg: Sequenced) -> bool {
    match broker.try_send(msg) {
        Ok(()) => true,
        Err(SendError::Full(msg)) => broker.send(msg).await.is_ok(),
        Err(SendError::Closed(_)) => false,
    }
}

/// A command connection made on demand, remade after a failure with capped
/// backoff, without making a writer wait on a Redis that is known to be
/// away: after a failure, until the node has reconnected (its subscriber
/// and readers, [`Health::ups`]), a write fails at once, and connection
/// attempts run in the background, one at a time, after each backoff. Only
/// a write already in flight when Redis stops answering waits, for the
/// command timeout.
struct OnDemand {
    connector: Connector,
    conn: Option<Conn>,
    /// A connection attempt running in the background.
    attempt: Option<tokio::task::JoinHandle<Result<Conn, String>>>,
    health: Arc<Health>,
    limit: Duration,
    max: Duration,
    backoff: Duration,
    retry_at: Instant,
    /// [`Health::ups`] at the last failure; `None` before any.
    failed_at: Option<u64>,
    /// Why the last attempt failed, for the warnings meanwhile.
    why: String,
}

impl OnDemand {
    fn new(connector: Connector, config: &RedisConfig, health: Arc<Health>) -> Self {
        Self {
            connector,
            conn: None,
            attempt: None,
            health,
            limit: config.command_timeout,
            max: config.reconnect_max,
            backoff: BACKOFF_START,
            retry_at: Instant::now(),
            failed_at: None,
            why: "not connected yet".into(),
        }
    }

    async fn get(&mut self) -> Result<Conn, String> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        // No failure yet, or the node has reconnected since: Redis is
        // likely there, a connection worth waiting for.
        let hopeful = self.failed_at.is_none_or(|ups| ups != self.health.ups());
        if self.attempt.is_none() && (hopeful || Instant::now() >= self.retry_at) {
            let (connector, limit) = (self.connector.clone(), self.limit);
            self.attempt = Some(tokio::spawn(async move {
                let made = async {
                    let mut c = connector.command(limit).await.map_err(|e| e.to_string())?;
                    // A round trip: a Redis that accepts connections but
                    // does not answer (paused) is not a connection.
                    let pong = redis::cmd("PING").query_async::<Value>(&mut c).await;
                    pong.map(|_| c).map_err(|e| connector.error(e).to_string())
                };
                match timeout(limit, made).await {
                    Ok(made) => made,
                    Err(_) => Err(format!("Redis at {}: no answer within {limit:?}", connector.addr())),
                }
            }));
        }
        let finished = self.attempt.as_ref().is_some_and(|a| a.is_finished());
        let Some(attempt) = self.attempt.as_mut().filter(|_| hopeful || finished) else {
            return Err(format!("Redis unreachable ({})", self.why));
        };
        let made = attempt.await.unwrap_or_else(|e| Err(e.to_string()));
        self.attempt = None;
        match made {
            Ok(c) => {
                self.backoff = BACKOFF_START;
                self.failed_at = None;
                self.conn = Some(c.clone());
                Ok(c)
            }
            Err(why) => {
                self.why = why;
                self.failed();
                Err(format!("Redis unreachable ({})", self.why))
            }
        }
    }

    /// The connection failed: writes fail at once until the node has
    /// reconnected, a new one is tried after the backoff.
    fn failed(&mut self) {
        self.conn = None;
        self.failed_at = Some(self.health.ups());
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.max);
    }

    /// Runs `pipe` in one round trip within the command timeout. A kept
    /// connection that Redis closed while it was idle (a restart) fails
    /// before anything is sent: the pipeline is then tried once more, on a
    /// new connection.
    async fn run(&mut self, pipe: &redis::Pipeline) -> Result<(), String> {
        let mut again = true;
        loop {
            let kept = self.conn.is_some();
            let mut conn = self.get().await?;
            match timeout(self.limit, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if kept && again && e.is_connection_dropped() => {
                    self.conn = None;
                    again = false;
                }
                Ok(Err(e)) => {
                    self.why = e.to_string();
                    self.failed();
                    return Err(e.to_string());
                }
                Err(_) => {
                    self.why = "timed out".into();
                    self.failed();
                    return Err("timed out".into());
                }
            }
        }
    }
}

/// Takes what waits in `rx` after `first`, up to [`BATCH`].
fn batch<T>(first: T, rx: &mut mpsc::Receiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    batch
}

/// Appends in queue order. Not before every reader knows where it starts:
/// an entry added before a reader looked for the stream's end would never
/// come back. The first batch waits for that (up to the command timeout);
/// until it is so, batches are not appended.
async fn appender(mut link: OnDemand, mut rx: mpsc::Receiver<Append>, node: Node, max_len: usize) {
    let status = &node.status;
    let mut positioned = link.health.positioned.subscribe();
    let mut waited = false;
    while let Some(first) = rx.recv().await {
        let batch = batch(first, &mut rx);
        let n = batch.len() as u64;
        if !waited && !*positioned.borrow() {
            waited = true;
            let _ = timeout(link.limit, positioned.wait_for(|p| *p)).await;
        }
        let ready = *positioned.borrow();
        let added = if ready {
            link.run(&xadd(&batch, max_len)).await
        } else {
            Err("the stream readers have not started yet".to_owned())
        };
        let Err(why) = added else {
            AdapterStatus::add(&status.published, n);
            for mut append in batch {
                append.settle(true);
            }
            continue;
        };
        AdapterStatus::add(&status.lost, n);
        tracing::warn!(
            lost = n,
            "redis adapter: entries not added to the stream ({why}): the other nodes miss them; \
             this node's own broadcasts among them are delivered here without an offset"
        );
        for mut append in batch {
            append.settle(false);
            if let Some(broadcast) = append.broadcast {
                let back = Sequenced {
                    broadcast,
                    offset: None,
                    backfill: false,
                };
                if !to_broker(&node.broker.sequenced, back).await {
                    return;
                }
            }
        }
    }
}

/// One pipeline of `XADD`s, in queue order.
fn xadd(batch: &[Append], max_len: usize) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for a in batch {
        let e = &a.entry;
        pipe.cmd("XADD")
            .arg(&a.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("uid")
            .arg(&e.uid)
            .arg("nsp")
            .arg(&e.nsp)
            .arg("type")
            .arg(e.kind)
            .arg("data")
            .arg(&e.data)
            .ignore();
    }
    pipe
}

async fn session_writer(mut link: OnDemand, mut rx: mpsc::Receiver<SessionWrite>, status: Arc<AdapterStatus>) {
    while let Some(first) = rx.recv().await {
        let batch = batch(first, &mut rx);
        let mut pipe = redis::pipe();
        for write in &batch {
            match write {
                SessionWrite::Keep { key, value, ttl_ms } => {
                    pipe.cmd("SET").arg(key).arg(value).arg("PX").arg(*ttl_ms).ignore();
                }
                SessionWrite::Drop { key } => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
            }
        }
        if let Err(why) = link.run(&pipe).await {
            AdapterStatus::add(&status.sessions_dropped, batch.len() as u64);
            tracing::warn!(
                dropped = batch.len(),
                "redis adapter: recovery sessions not written ({why})"
            );
        }
    }
}

/// A stream entry as `XREAD` / `XRANGE` return it.
struct RawEntry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// The entries of an `XRANGE` / `XREVRANGE` answer (`[[id, [field, value,
/// …]], …]`; a field list as a map too, RESP3's form).
fn entries(v: Value) -> Option<Vec<RawEntry>> {
    let items = match v {
        Value::Nil => return Some(vec![]),
        Value::Array(items) => items,
        _ => return None,
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else { return None };
        let mut pair = pair.into_iter();
        let id = text(pair.next()?)?;
        let fields = match pair.next()? {
            Value::Array(flat) => {
                let mut flat = flat.into_iter();
                let mut fields = Vec::with_capacity(flat.len() / 2);
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    fields.push((bytes(k)?, bytes(v)?));
                }
                fields
            }
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect::<Option<_>>()?,
            // An entry deleted under a pending list reads as nil.
            Value::Nil => vec![],
            _ => return None,
        };
        out.push(RawEntry { id, fields });
    }
    Some(out)
}

/// The entries of an `XREAD` of one stream: nil (nothing within the block
/// time), `[[stream, entries]]`, or RESP3's `{stream: entries}`.
fn xread_entries(v: Value) -> Option<Vec<RawEntry>> {
    match v {
        Value::Nil => Some(vec![]),
        Value::Array(streams) => match streams.into_iter().next() {
            None => Some(vec![]),
            Some(Value::Array(pair)) => entries(pair.into_iter().nth(1)?),
            Some(_) => None,
        },
        Value::Map(streams) => match streams.into_iter().next() {
            None => Some(vec![]),
            Some((_, v)) => entries(v),
        },
        _ => None,
    }
}

/// Milliseconds since the Unix epoch, as stream ids count them.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The reader of one stream.
struct Reader {
    connector: Connector,
    node: Node,
    stream: String,
    s: StreamsConfig,
    health: Arc<Health>,
    /// Its place in [`Health`].
    part: usize,
}

impl Reader {
    async fn run(self) {
        let limit = self.node.config.command_timeout;
        let mut retry = Reconnect::new(self.node.config.reconnect_max);
        // The last entry id seen: where every read continues.
        let mut cursor: Option<String> = None;
        let mut backfill = !self.s.backfill.is_zero();
        // The start of the window read back (fixed once: an interrupted
        // backfill goes on after the last entry it handed over).
        let back = u64::try_from(self.s.backfill.as_millis()).unwrap_or(u64::MAX);
        let window = Offset {
            ms: now_ms().saturating_sub(back),
            seq: 0,
        };
        // Where this reader's knowledge of the stream starts: the newest
        // entry before the window (every later one is read back), or (no
        // backfill) the stream's end.
        let mut floor: Option<Offset> = None;
        let mut reported = false;
        loop {
            // A connection of its own: a blocking XREAD holds it.
            let mut conn = match timeout(limit, self.connector.command(limit)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    retry.failed(&e.to_string());
                    retry.pause().await;
                    continue;
                }
                Err(_) => {
                    retry.failed(&format!("Redis at {}: timed out", self.connector.addr()));
                    retry.pause().await;
                    continue;
                }
            };
            if backfill && floor.is_none() {
                match self.before(&mut conn, window).await {
                    Ok(before) => floor = Some(before),
                    Err(why) => {
                        retry.failed(&why);
                        retry.pause().await;
                        continue;
                    }
                }
            }
            if backfill {
                // Interrupted, it goes on after the last entry it handed over.
                match self.backfill(&mut conn, &mut cursor, window).await {
                    Ok(()) => backfill = false,
                    Err(why) => {
                        retry.failed(&why);
                        retry.pause().await;
                        continue;
                    }
                }
            }
            if cursor.is_none() {
                match self.last_id(&mut conn).await {
                    Ok(id) => cursor = Some(id),
                    Err(why) => {
                        retry.failed(&why);
                        retry.pause().await;
                        continue;
                    }
                }
            }
            // Entries trimmed that were never read here (the window's
            // oldest, or, after an outage, some this reader missed): no
            // recovery may count on them.
            let trimmed = self.max_deleted(&mut conn).await;
            let known = cursor.as_deref().and_then(|c| c.parse::<Offset>().ok());
            if !reported {
                let start = floor.or(known).unwrap_or_default();
                let start = trimmed.map_or(start, |t| start.max(t));
                floor = Some(start);
                self.health.floor(self.part, start, &self.node.broker.stream_read);
                reported = true;
            } else if let (Some(t), Some(k)) = (trimmed, known) {
                if t > k {
                    tracing::warn!(stream = %self.stream, after = %k, trimmed = %t, "redis adapter: entries were trimmed from the stream before this node read them; recoveries from before them are refused");
                    let _ = self.node.broker.stream_read.try_send(StreamRead { floor: t });
                }
            }
            self.health.set(self.part, true);
            retry.connected();
            // unwrap: set just above when it was not.
            let why = self.follow(&mut conn, cursor.as_mut().unwrap()).await;
            self.health.set(self.part, false);
            tracing::warn!(
                stream = %self.stream,
                after = cursor.as_deref().unwrap_or_default(),
                "redis adapter lost its stream reader ({why}): degraded, reconnecting"
            );
            retry.pause().await;
        }
    }

    /// Reads on from `cursor` until the connection fails; why it did.
    async fn follow(&self, conn: &mut Conn, cursor: &mut String) -> String {
        let wait = self.s.block + self.node.config.command_timeout;
        let block = u64::try_from(self.s.block.as_millis()).unwrap_or(u64::MAX).max(1);
        loop {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(self.s.read_count)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(&*cursor);
            let got = match timeout(wait, read.query_async::<Value>(conn)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return e.to_string(),
                Err(_) => return format!("no answer to XREAD within {wait:?}"),
            };
            let Some(entries) = xread_entries(got) else {
                return "unexpected XREAD answer".into();
            };
            for e in entries {
                let id = e.id.clone();
                self.on_entry(e, false).await;
                *cursor = id;
            }
        }
    }

    /// The newest entry id before `window` ("0-0" when there is none): a
    /// node that reads the stream back from `window` knows every entry
    /// after it (and a client whose last offset, or whose socket's start,
    /// is that entry or later missed nothing before the window).
    async fn before(&self, conn: &mut Conn, window: Offset) -> Result<Offset, String> {
        let mut cmd = redis::cmd("XREVRANGE");
        // Exclusive ranges ("(id") need Redis 6.2, as GETDEL does.
        cmd.arg(&self.stream)
            .arg(format!("({window}"))
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let limit = self.node.config.command_timeout;
        match timeout(limit, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(v)) => match entries(v) {
                Some(e) => Ok(e.first().and_then(|e| e.id.parse().ok()).unwrap_or_default()),
                None => Err("unexpected XREVRANGE answer".into()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("XREVRANGE timed out".into()),
        }
    }

    /// The highest id trimmed or deleted from the stream
    /// (`max-deleted-entry-id` of `XINFO STREAM`, Redis 7); none when the
    /// stream is absent or Redis does not say.
    async fn max_deleted(&self, conn: &mut Conn) -> Option<Offset> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(&self.stream);
        let limit = self.node.config.command_timeout;
        let info = timeout(limit, cmd.query_async::<Value>(conn)).await.ok()?.ok()?;
        let pairs: Vec<(Value, Value)> = match info {
            Value::Map(pairs) => pairs,
            Value::Array(items) => {
                let mut items = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            _ => return None,
        };
        pairs
            .into_iter()
            .find(|(k, _)| text(k.clone()).as_deref() == Some("max-deleted-entry-id"))
            .and_then(|(_, v)| text(v))
            .and_then(|id| id.parse().ok())
            .filter(|o: &Offset| *o != Offset::default())
    }

    /// The stream's last id, "0-0" when it is empty or absent.
    async fn last_id(&self, conn: &mut Conn) -> Result<String, String> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.stream).arg("+").arg("-").arg("COUNT").arg(1);
        let limit = self.node.config.command_timeout;
        match timeout(limit, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(v)) => match entries(v) {
                Some(e) => Ok(e.into_iter().next().map_or_else(|| "0-0".to_owned(), |e| e.id)),
                None => Err("unexpected XREVRANGE answer".into()),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("XREVRANGE timed out".into()),
        }
    }

    /// Hands the broadcasts of the last `backfill` to the broker's recovery
    /// log, in chunks of `read_count`, from the start of that window or
    /// after `cursor`; `cursor` follows the entries handed over. It ends
    /// as the last one's id, or (none in the window) as the window's start,
    /// which no later entry can precede: the live reads go on from there
    /// without a gap.
    async fn backfill(&self, conn: &mut Conn, cursor: &mut Option<String>, window: Offset) -> Result<(), String> {
        let limit = self.node.config.command_timeout;
        let mut read = 0usize;
        loop {
            // Exclusive ranges ("(id") need Redis 6.2: start after the last.
            let start = match cursor.as_deref().map(str::parse::<Offset>) {
                Some(Ok(last)) => last.next(),
                Some(Err(())) => return Err(format!("an entry id that is not <ms>-<seq>: {cursor:?}")),
                None => window,
            };
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.stream)
                .arg(start.to_string())
                .arg("+")
                .arg("COUNT")
                .arg(self.s.read_count);
            let got = match timeout(limit, cmd.query_async::<Value>(conn)).await {
                Ok(Ok(v)) => entries(v).ok_or("unexpected XRANGE answer")?,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("XRANGE timed out".into()),
            };
            let full = got.len() >= self.s.read_count;
            for e in got {
                let id = e.id.clone();
                read += 1;
                self.on_entry(e, true).await;
                *cursor = Some(id);
            }
            if !full {
                break;
            }
        }
        if cursor.is_none() {
            *cursor = Some(window.to_string());
        }
        tracing::info!(stream = %self.stream, entries = read, "redis adapter read the stream back for recovery");
        Ok(())
    }

    /// One entry: a broadcast for the broker in stream order; a join, leave
    /// or disconnect of another node applied (not when backfilling: those
    /// are past).
    async fn on_entry(&self, e: RawEntry, backfill: bool) {
        let node = &self.node;
        let decoded = streams::decode_entry(e.fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let (uid, nsp, message) = match decoded {
            Ok(d) => d,
            Err(why) => return malformed(&node.status, &why),
        };
        if !node.config.namespaces.contains(&nsp) {
            return;
        }
        let own = uid == node.uid;
        match message {
            Message::Broadcast(broadcast) => {
                let Ok(offset) = e.id.parse::<Offset>() else {
                    return malformed(&node.status, &WireError::Shape("an entry id that is not <ms>-<seq>"));
                };
                if !own && !backfill {
                    AdapterStatus::add(&node.status.received, 1);
                }
                let msg = Sequenced {
                    broadcast,
                    offset: Some(offset),
                    backfill,
                };
                if !to_broker(&node.broker.sequenced, msg).await {
                    AdapterStatus::add(&node.status.lost, 1);
                }
            }
            Message::Request(r) if !own && !backfill => {
                if let Some(op) = remote_operation(&nsp, &r) {
                    let _ = node.broker.ops.try_send(op);
                }
            }
            _ => {}
        }
    }
}

/// A message on the channels: a request, an answer to one of this node's
/// requests (msgpack, [`streams::decode_message`]).
fn route(node: &Node, msg: &redis::Msg) {
    match streams::decode_message(msg.get_payload_bytes()) {
        Ok((uid, ..)) if uid == node.uid => {}
        Ok((_, nsp, _)) if !node.config.namespaces.contains(&nsp) => {}
        // Node.js sends none without a requestId here; delivered anyway.
        Ok((_, _, Message::Broadcast(b))) => deliver(b, &node.broker.inbound, &node.status),
        Ok((_, nsp, Message::Request(r))) => serve(node, nsp, r),
        Ok((_, _, Message::Response(answer))) => collect(&node.pending, &answer),
        Ok((_, _, Message::Ignored)) => {}
        Err(e) => malformed(&node.status, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_answers_are_read_in_resp2_and_resp3_forms() {
        let entry = |id: &str| Value::Array(vec![bulk(id), Value::Array(vec![bulk("uid"), bulk("u1")])]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("socket.io"),
            Value::Array(vec![entry("1-0"), entry("1-1")]),
        ])]);
        let got = xread_entries(resp2).unwrap();
        assert_eq!(got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1-0", "1-1"]);
        assert_eq!(got[0].fields, vec![(b"uid".to_vec(), b"u1".to_vec())]);
        let resp3 = Value::Map(vec![(bulk("socket.io"), Value::Array(vec![entry("2-0")]))]);
        assert_eq!(xread_entries(resp3).unwrap()[0].id, "2-0");
        assert!(xread_entries(Value::Nil).unwrap().is_empty());
        assert!(entries(Value::Array(vec![])).unwrap().is_empty());
        assert!(xread_entries(Value::Int(3)).is_none());
        assert!(entries(Value::Array(vec![Value::Array(vec![Value::Int(1)])])).is_none());
    }
}
