//! The scenarios: `connect` (idle sessions) and fan-out at a rate, stepped
//! by `max` to the highest rate that keeps p99 and loss within bounds.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::{spawn_local, JoinHandle};

use crate::client::{self, Scratch, Session, Target, Writer};
use crate::stats::{listen_overflows, new_histogram, quantiles_ms, read_proc, read_redis, ProcReading, RedisReading};
use crate::tungstenite;

/// Most steps a `max` run may take (delivery counters are kept per step).
pub const MAX_STEPS: usize = 40;

/// Microseconds since the first call: the clock of publish timestamps.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Keeps a session alive (answering pings) until its task is aborted or
/// the server closes it; each text frame other than a ping goes to
/// `on_frame` with the time it was read.
async fn hold(mut s: Session, scratch: Scratch, mut on_frame: impl FnMut(&[u8], u64)) {
    while let Ok(true) = s.read_some(&scratch, now_us, &mut on_frame).await {}
}

/// Tasks that end with their owner.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// An error naming how many of `n` sessions failed, and the first failure.
fn none_failed(n: usize, failures: &[anyhow::Error]) -> Result<()> {
    match failures.first() {
        Some(first) => bail!("{} of {n} sessions failed; first: {first:#}", failures.len()),
        None => Ok(()),
    }
}

/// Opens `n` sessions, at most `concurrency` handshakes at a time, the
/// `i`th on `targets[i % len]`; `setup` runs on each before it counts.
async fn open_many<F, Fut>(targets: &[Target], n: usize, concurrency: usize, setup: F) -> Result<Vec<(Session, usize)>>
where
    F: Fn(Session, usize, Scratch) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<Session>>,
{
    let gate = Rc::new(Semaphore::new(concurrency.max(1)));
    let scratch = client::scratch();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = targets[i % targets.len()].clone();
        let gate = gate.clone();
        let setup = setup.clone();
        let scratch = scratch.clone();
        tasks.push(spawn_local(async move {
            let _permit = gate.acquire().await?;
            let s = client::connect(&target, i, &scratch).await?;
            Ok::<_, anyhow::Error>((setup(s, i, scratch).await?, i))
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(s) => sessions.push(s),
            Err(e) => failures.push(e),
        }
    }
    none_failed(n, &failures)?;
    Ok(sessions)
}

/// The shortest time between two wakes of the publishers' timer: at
/// rates above one publish per publisher per 200 µs, publishes leave in
/// batches that often.
const MIN_WAKE_GAP: Duration = Duration::from_micros(200);

/// `connect`: `n` idle sessions.
pub async fn connect(
    targets: &[Target],
    n: usize,
    concurrency: usize,
    pid: Option<u32>,
    settle: Duration,
) -> Result<Value> {
    let before = read_proc(pid)?;
    let overflows = listen_overflows();
    let started = Instant::now();
    let sessions = open_many(targets, n, concurrency, |s, _, _| async { Ok(s) }).await?;
    let elapsed = started.elapsed();
    let mut handshakes = new_histogram();
    for (s, _) in &sessions {
        handshakes.saturating_record(s.handshake.as_micros() as u64);
    }
    // Let the server finish what the last handshakes started, then read it
    // while every session is still open.
    let scratch = client::scratch();
    let holders = Tasks(
        sessions
            .into_iter()
            .map(|(s, _)| spawn_local(hold(s, scratch.clone(), |_, _| {})))
            .collect(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = read_proc(pid)?;
    let (p50, p99, max) = quantiles_ms(&handshakes);
    let mut out = json!({
        "scenario": "connect",
        "sessions": n,
        "sessions_per_s": n as f64 / elapsed.as_secs_f64(),
        "handshake_p50_ms": p50,
        "handshake_p99_ms": p99,
        "handshake_max_ms": max,
    });
    if let (Some(b), Some(a)) = (overflows, listen_overflows()) {
        out["listen_overflows"] = json!(a.saturating_sub(b));
    }
    let per_session_kib = |b: ProcReading, a: ProcReading| a.rss.saturating_sub(b.rss) as f64 / 1024.0 / n as f64;
    if let (Some(b), Some(a)) = (before, after) {
        out["rss_per_session_kib"] = json!(per_session_kib(b, a));
        out["server_cpu_us_per_handshake"] = json!((a.cpu.saturating_sub(b.cpu)).as_micros() as f64 / n as f64);
        out["server_rss_mib"] = json!(a.rss as f64 / 1024.0 / 1024.0);
    }
    if !settle.is_zero() {
        tokio::time::sleep(settle).await;
        if let (Some(b), Some(a)) = (before, read_proc(pid)?) {
            out["rss_per_session_settled_kib"] = json!(per_session_kib(b, a));
        }
    }
    drop(holders);
    Ok(out)
}

/// How subscribers read (`--generator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// The generator's own sessions: every queued byte of a socket in one
    /// read through a shared buffer, one clock read per read.
    Own,
    /// tokio-tungstenite clients, a task each, message by message through
    /// a 4 KiB buffer (see `tungstenite`).
    Tungstenite,
}

/// A fan-out shape: `rooms` × `subscribers` per room, `publishers` extra
/// sessions publishing into the rooms in turn.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rooms: usize,
    pub subscribers: usize,
    pub publishers: usize,
}

/// Connected subscribers and publishers, reused across steps.
pub struct Fleet {
    shape: Shape,
    /// Deliveries per step.
    delivered: Rc<Vec<Cell<u64>>>,
    /// When each step's last delivery was read (µs on [`now_us`]' clock).
    last_delivery: Rc<Vec<Cell<u64>>>,
    latencies: Rc<RefCell<hdrhistogram::Histogram<u64>>>,
    /// From a publish's due time to its ack's arrival at the publisher.
    acks: Rc<RefCell<hdrhistogram::Histogram<u64>>>,
    /// Each step's publishing clock: its start (µs) and the rate per
    /// publisher, from which an ack id gives its publish's due time.
    clocks: Rc<RefCell<Vec<(u64, f64)>>>,
    publishers: Vec<Writer>,
    tasks: Tasks,
    pid: Option<u32>,
    /// The cluster's Redis (host:port), whose counters each step reads.
    pub redis: Option<String>,
}

/// One step's figures.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: f64,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The publisher's ack: from the publish's due time to its ack's
    /// arrival, p50 and p99 (what a client that waits for `{ok:true}` sees).
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub server_cpu_s: Option<f64>,
    /// The load generator's own CPU seconds (to tell when it, not the
    /// server, is the bound).
    pub generator_cpu_s: f64,
    /// The server's resident memory after the step, MiB.
    pub server_rss_mib: Option<f64>,
    /// Redis's counters before and after the step (a cluster with `--redis`).
    pub redis: Option<(RedisReading, RedisReading)>,
}

impl Step {
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        1.0 - (self.delivered.min(self.expected) as f64 / self.expected as f64)
    }

    pub fn deliveries_per_s(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "rate": self.rate,
            "published": self.published,
            "seconds": self.seconds,
            "expected": self.expected,
            "delivered": self.delivered,
            "deliveries_per_s": self.deliveries_per_s(),
            "loss": self.loss(),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "ack_p50_ms": self.ack_p50_ms,
            "ack_p99_ms": self.ack_p99_ms,
        });
        if let Some(rss) = self.server_rss_mib {
            v["server_rss_mib"] = json!(rss);
        }
        if self.delivered > 0 {
            v["generator_cpu_s_per_million"] = json!(self.generator_cpu_s / (self.delivered as f64 / 1e6));
        }
        if let (Some((before, after)), true) = (self.redis, self.published > 0) {
            // What one publish costs Redis, the step's whole traffic
            // (subscriptions' keep-alives, other nodes' heartbeats) included.
            let per = |a: f64, b: f64| (a - b) / self.published as f64;
            v["redis_commands_per_publish"] = json!(per(after.commands as f64, before.commands as f64));
            v["redis_in_bytes_per_publish"] = json!(per(after.net_in as f64, before.net_in as f64));
            v["redis_out_bytes_per_publish"] = json!(per(after.net_out as f64, before.net_out as f64));
            v["redis_cpu_us_per_publish"] = json!(per(after.cpu_s, before.cpu_s) * 1e6);
            v["redis_core_busy"] = json!((after.cpu_s - before.cpu_s) / self.seconds);
        }
        if self.seconds > 0.0 {
            // How busy each core was: a step whose latency misses while
            // the server's core is not (and the generator's is) measured
            // the generator.
            v["generator_core_busy"] = json!(self.generator_cpu_s / self.seconds);
            if let Some(cpu) = self.server_cpu_s {
                v["server_core_busy"] = json!(cpu / self.seconds);
            }
        }
        if let Some(cpu) = self.server_cpu_s {
            v["server_cpu_s"] = json!(cpu);
            if self.delivered > 0 {
                v["server_cpu_s_per_million"] = json!(cpu / (self.delivered as f64 / 1e6));
            }
        }
        v
    }
}

impl Fleet {
    /// Connects and subscribes everyone: subscriber `i` joins room
    /// `i % rooms` on `targets[i % len]`; publishers go to `targets[0]`.
    pub async fn start(
        targets: &[Target],
        shape: Shape,
        concurrency: usize,
        pid: Option<u32>,
        generator: Generator,
    ) -> Result<Fleet> {
        let delivered: Rc<Vec<Cell<u64>>> = Rc::new((0..MAX_STEPS).map(|_| Cell::new(0)).collect());
        let last_delivery: Rc<Vec<Cell<u64>>> = Rc::new((0..MAX_STEPS).map(|_| Cell::new(0)).collect());
        let latencies = Rc::new(RefCell::new(new_histogram()));
        let acks = Rc::new(RefCell::new(new_histogram()));
        let clocks = Rc::new(RefCell::new(vec![(0u64, 0f64); MAX_STEPS]));
        let rooms = shape.rooms;
        let record = {
            let (delivered, last_delivery, latencies) = (delivered.clone(), last_delivery.clone(), latencies.clone());
            move || {
                let (delivered, last_delivery, latencies) =
                    (delivered.clone(), last_delivery.clone(), latencies.clone());
                move |frame: &[u8], at: u64| {
                    if let Some((sent, step)) = client::parse_delivery(frame) {
                        latencies.borrow_mut().saturating_record(at.saturating_sub(sent).max(1));
                        if let (Some(c), Some(last)) = (delivered.get(step), last_delivery.get(step)) {
                            c.set(c.get() + 1);
                            last.set(at);
                        }
                    }
                }
            }
        };
        let scratch = client::scratch();
        let mut tasks = Vec::new();
        match generator {
            Generator::Own => {
                let subs = open_many(
                    targets,
                    rooms * shape.subscribers,
                    concurrency,
                    move |mut s, i, scratch| async move {
                        s.subscribe(&scratch, &format!("bench-{}", i % rooms)).await?;
                        Ok(s)
                    },
                )
                .await?;
                for (s, _) in subs {
                    tasks.push(spawn_local(hold(s, scratch.clone(), record())));
                }
            }
            Generator::Tungstenite => {
                let n = rooms * shape.subscribers;
                let gate = Rc::new(Semaphore::new(concurrency.max(1)));
                let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
                for i in 0..n {
                    let (target, gate, ready_tx, record) = (
                        targets[i % targets.len()].clone(),
                        gate.clone(),
                        ready_tx.clone(),
                        record(),
                    );
                    tasks.push(spawn_local(async move {
                        let subscribed = {
                            let _permit = gate.acquire().await;
                            tungstenite::subscribe(&target, i, &format!("bench-{}", i % rooms)).await
                        };
                        match subscribed {
                            Ok(sub) => {
                                let _ = ready_tx.send(Ok(()));
                                sub.hold(now_us, record).await;
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    }));
                }
                drop(ready_tx);
                let mut failures = Vec::new();
                for _ in 0..n {
                    match ready.recv().await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => failures.push(e),
                        None => break,
                    }
                }
                none_failed(n, &failures)?;
            }
        }
        let pubs = open_many(&targets[..1], shape.publishers, concurrency, |s, _, _| async { Ok(s) }).await?;
        let mut publishers = Vec::new();
        for (s, _) in pubs {
            publishers.push(s.writer());
            // Acks are read as they come (the publisher never stops
            // reading); each one's id says which publish it answers.
            let (acks, clocks) = (acks.clone(), clocks.clone());
            tasks.push(spawn_local(hold(s, scratch.clone(), move |frame, at| {
                let Some((step, seq)) = client::parse_publish_ack(frame) else {
                    return;
                };
                let Some(&(started_us, per_publisher)) = clocks.borrow().get(step) else {
                    return;
                };
                if per_publisher > 0.0 {
                    let due_at = started_us + ((seq + 1) as f64 / per_publisher * 1e6) as u64;
                    acks.borrow_mut().saturating_record(at.saturating_sub(due_at).max(1));
                }
            })));
        }
        Ok(Fleet {
            shape,
            delivered,
            last_delivery,
            latencies,
            acks,
            clocks,
            publishers,
            tasks: Tasks(tasks),
            pid,
            redis: None,
        })
    }

    /// Publishes at `rate` messages/s in total for `duration`, then waits
    /// (up to `drain`) for the deliveries.
    pub async fn step(&self, step: usize, rate: f64, duration: Duration, drain: Duration) -> Result<Step> {
        self.latencies.borrow_mut().reset();
        self.acks.borrow_mut().reset();
        let before = read_proc(self.pid)?;
        let redis_before = match &self.redis {
            Some(addr) => Some(read_redis(addr).await?),
            None => None,
        };
        let generator_before = read_proc(Some(std::process::id()))?.map(|r| r.cpu).unwrap_or_default();
        let per_publisher = rate / self.shape.publishers as f64;
        let (rooms, publishers) = (self.shape.rooms, self.shape.publishers);
        let started = Instant::now();
        let started_us = now_us();
        if let Some(clock) = self.clocks.borrow_mut().get_mut(step) {
            *clock = (started_us, per_publisher);
        }
        // One task drives every publisher off one timer (a timer per
        // publisher would cost the generator more than the server a
        // publish, with 100 publishers). It is a timerfd: tokio's own
        // timers fire on a 1 ms grid, up to a millisecond after a publish
        // is due, which counted in every latency as if it were the
        // server's (a publisher's ack took 0.8 ms at the median from an
        // idle server). Every publisher is due at the same instants; at
        // high rates the timer fires at most every `MIN_WAKE_GAP` and each
        // wake sends whatever is due.
        let writers = self.publishers.clone();
        let sender = spawn_local(async move {
            let end = started + duration;
            let due_at = |k: u64| started + Duration::from_secs_f64(k as f64 / per_publisher);
            let mut sent = vec![0u64; writers.len()];
            let mut out = Vec::new();
            let mut timer = tokio_timerfd::Delay::new(started)?;
            let mut woke = started;
            loop {
                let next = due_at(sent.iter().copied().min().unwrap_or(0) + 1);
                if next > end {
                    break;
                }
                timer.reset(next.max(woke + MIN_WAKE_GAP));
                (&mut timer).await?;
                woke = Instant::now();
                let now = woke.min(end);
                for (p, tx) in writers.iter().enumerate() {
                    out.clear();
                    while due_at(sent[p] + 1) <= now {
                        let room = (p + sent[p] as usize * publishers) % rooms;
                        // Stamped with the time it was due, not the time it
                        // is written: when a server pushes back and a write
                        // waits, the wait counts in the latency (no
                        // coordinated omission).
                        let due_at_us = started_us + ((sent[p] + 1) as f64 / per_publisher * 1e6) as u64;
                        let ack_id = client::publish_ack_id(step, sent[p]);
                        client::publish_frame(ack_id, &format!("bench-{room}"), due_at_us, step, &mut out);
                        sent[p] += 1;
                    }
                    if !out.is_empty() {
                        tx.send_raw(&out).await?;
                    }
                }
            }
            Ok::<u64, anyhow::Error>(sent.iter().sum())
        });
        let published = sender.await??;
        let publishing = started.elapsed().as_secs_f64();
        let expected = published * self.shape.subscribers as u64;
        let deadline = Instant::now() + drain;
        while self.delivered[step].get() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = read_proc(self.pid)?;
        let redis = match (&self.redis, redis_before) {
            (Some(addr), Some(before)) => Some((before, read_redis(addr).await?)),
            _ => None,
        };
        let generator_after = read_proc(Some(std::process::id()))?.map(|r| r.cpu).unwrap_or_default();
        // Deliveries per second over the whole time they took: publishing,
        // and after it for as long as the server was still delivering.
        let delivering = self.last_delivery[step].get().saturating_sub(started_us) as f64 / 1e6;
        let seconds = publishing.max(delivering);
        let (p50_ms, p99_ms, max_ms) = quantiles_ms(&self.latencies.borrow());
        let (ack_p50_ms, ack_p99_ms, _) = quantiles_ms(&self.acks.borrow());
        Ok(Step {
            rate,
            published,
            expected,
            delivered: self.delivered[step].get(),
            seconds,
            p50_ms,
            p99_ms,
            max_ms,
            ack_p50_ms,
            ack_p99_ms,
            server_cpu_s: match (before, after) {
                (Some(b), Some(a)) => Some(a.cpu.saturating_sub(b.cpu).as_secs_f64()),
                _ => None,
            },
            server_rss_mib: after.map(|a| a.rss as f64 / 1024.0 / 1024.0),
            generator_cpu_s: generator_after.saturating_sub(generator_before).as_secs_f64(),
            redis,
        })
    }

    /// Closes every session.
    pub async fn stop(self) {
        drop(self.tasks);
        tokio::task::yield_now().await;
    }
}
