//! roomcast-bench: a load generator for Socket.IO servers that speak
//! roomcast's application protocol (`docs/protocol.md`: `subscribe`,
//! `publish` with acks) over Engine.IO v4 / Socket.IO v5 WebSockets, and
//! over long-polling for `poll-rtt`.
//!
//! ```text
//! roomcast-bench connect --url http://127.0.0.1:3000 -n 10000 --server-pid PID
//! roomcast-bench fanout  --url … --rooms 1 --subscribers 1000 --publishers 1 --rate 100
//! roomcast-bench max     --url … --rooms 1000 --subscribers 10 --publishers 100
//! roomcast-bench fanout  --url http://A --url http://B …   (cluster: subscribers on both)
//! roomcast-bench poll-rtt --url http://LB --sessions 60 --rate 300   (long-polling round trips)
//! roomcast-bench floor-send --port P --rate 100000 & roomcast-bench floor-read --port P
//! ```
//!
//! Every run is bounded in time and count, and starts with one unmeasured
//! second of publishing. It prints a table, then one JSON line with every
//! figure (the last line of its output).

mod admin;
mod client;
mod floor;
mod polling;
mod scenarios;
mod stats;
mod tungstenite;

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use scenarios::{Fleet, Shape, MAX_STEPS};

#[derive(Parser)]
#[command(name = "roomcast-bench", about = "Load generator for Socket.IO pub/sub servers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// Server URL (repeat for a cluster: subscribers are spread over them).
    #[arg(long, required = true)]
    url: Vec<String>,
    /// The server's pid, for its memory and CPU time (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for the server in the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1…N);
    /// 0 = one per 20,000 connections.
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Keep an Admin UI socket logged in to `/admin` (user "admin", this
    /// password) on the first URL, reading every update, for the run.
    #[arg(long)]
    admin_ui: Option<String>,
    /// How the fan-out scenarios' subscribers read: `own` (the generator's
    /// sessions) or `tungstenite` (tokio-tungstenite clients, a task each,
    /// a 4 KiB read buffer: a second, differently built generator).
    #[arg(long, value_enum, default_value = "own")]
    generator: scenarios::Generator,
    /// The cluster's Redis (host:port): each fan-out step reports what its
    /// publishes cost Redis (commands, bytes, CPU; from `INFO`).
    #[arg(long)]
    redis: Option<String>,
}

#[derive(Args, Clone, Copy)]
struct FanoutShape {
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publishing sessions (not subscribed).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Longest wait for the deliveries after the last publish, in seconds.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
}

#[derive(Subcommand)]
enum Scenario {
    /// N idle sessions: handshakes per second, handshake latency, server
    /// memory and CPU per session.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Sessions.
        #[arg(short, long, default_value_t = 10_000)]
        n: usize,
        /// Seconds the sessions stay idle before the server's memory is
        /// read a second time (`rss_per_session_settled_kib`): what the
        /// server holds once the handshakes' transient memory is returned.
        #[arg(long, default_value_t = 0.0)]
        settle: f64,
    },
    /// Publishes at a fixed total rate: deliveries per second, loss,
    /// latency, server CPU per million deliveries.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        shape: FanoutShape,
        /// Publishes per second, all publishers together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Steps the publish rate up to the highest whose p99 and loss stay
    /// within bounds (a rate that misses them is tried twice).
    Max {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        shape: FanoutShape,
        /// First rate (publishes per second).
        #[arg(long, default_value_t = 20.0)]
        start_rate: f64,
        /// Rate multiplier per step.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Highest acceptable p99 latency, ms.
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        /// Highest acceptable loss (0.001 = 0.1 %).
        #[arg(long, default_value_t = 0.001)]
        max_loss: f64,
    },
    /// Long-polling sessions publishing with acks at a fixed total rate:
    /// the round trip from a POST to the GET that brings its ack back.
    PollRtt {
        #[command(flatten)]
        common: Common,
        /// Polling sessions (each two keep-alive connections, as a browser).
        #[arg(long, default_value_t = 60)]
        sessions: usize,
        /// Publishes per second, all sessions together.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        /// Seconds measured (after one unmeasured second).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// No server: writes small messages round robin to many loopback
    /// sockets and reports its own CPU per write, the floor under any
    /// server's cost per delivery (run `floor-read` on the other core).
    FloorSend {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        /// Seconds of writing.
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        /// Bytes per write (a delivery of the fan-out scenarios is about 100).
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// The reading side of `floor-send`: opens its connections and reads
    /// them until it closes them.
    FloorRead {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
    },
}

fn targets(common: &Common, sessions: usize) -> Result<Vec<client::Target>> {
    let sources = if common.sources == 0 {
        sessions.div_ceil(20_000).max(1)
    } else {
        common.sources
    };
    common.url.iter().map(|u| client::Target::parse(u, sources)).collect()
}

/// Raises the soft limit of open files to the hard limit.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("roomcast-bench: could not raise the open-file limit: {e}");
    }
}

fn print(label: &str, result: &Value) {
    println!("{:<28} {}", "server", label);
    if let Value::Object(map) = result {
        for (k, v) in map {
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
                other => other.to_string(),
            };
            println!("{k:<28} {shown}");
        }
    }
    println!("{}", json!({"server": label, "result": result}));
}

/// One thread: the generator is pinned to one core, and its sessions share
/// buffers and counters without locks (`spawn_local`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    raise_fd_limit();
    let cli = Cli::parse();
    tokio::task::LocalSet::new().run_until(run(cli)).await
}

async fn run(cli: Cli) -> Result<()> {
    let (label, result) = match cli.scenario {
        Scenario::FloorSend {
            port,
            sockets,
            rate,
            duration,
            payload,
        } => (
            "kernel".to_string(),
            floor::send(port, sockets, rate, secs(duration), payload)?,
        ),
        Scenario::FloorRead { port, sockets } => return floor::read(port, sockets).await,
        Scenario::Connect { common, n, settle } => {
            let t = targets(&common, n)?;
            let r = scenarios::connect(&t, n, common.concurrency, common.server_pid, secs(settle)).await?;
            (common.label, r)
        }
        Scenario::PollRtt {
            common,
            sessions,
            rate,
            duration,
        } => {
            let t = targets(&common, sessions)?;
            let r = polling::poll_rtt(&t, sessions, rate, secs(duration)).await?;
            (common.label, r)
        }
        Scenario::Fanout { common, shape, rate } => {
            let admin = admin_watch(&common).await?;
            let fleet = start(&common, shape).await?;
            warm_up(&fleet, rate, shape).await?;
            let step = fleet.step(1, rate, secs(shape.duration), secs(shape.drain)).await?;
            fleet.stop().await;
            let mut r = step.to_json();
            if let Some(admin) = admin {
                r["admin_ui"] = admin.finish();
            }
            r["scenario"] = json!("fanout");
            r["shape"] = shape_json(shape, common.url.len());
            (common.label, r)
        }
        Scenario::Max {
            common,
            shape,
            start_rate,
            factor,
            p99_ms,
            max_loss,
        } => {
            let admin = admin_watch(&common).await?;
            let fleet = start(&common, shape).await?;
            warm_up(&fleet, start_rate, shape).await?;
            let mut rate = start_rate;
            let mut best: Option<scenarios::Step> = None;
            let mut steps = Vec::new();
            // A rate that misses its bounds is tried once more before the
            // search ends: on a 2-core machine one scheduling hiccup (a
            // background service waking on the server's core) can cost a
            // 5-second step its p99, and the search would stop there.
            let mut retried = false;
            // The last step that missed its bounds: what bound it.
            let mut over: Option<Value> = None;
            for i in 1..MAX_STEPS {
                let step = match fleet.step(i, rate, secs(shape.duration), secs(shape.drain)).await {
                    Ok(step) => step,
                    // The server dropped a session (a publisher, say): this
                    // rate is over what it takes; the lower ones stand.
                    Err(e) => {
                        eprintln!("step {i}: rate {rate:.0}/s failed: {e:#}");
                        steps.push(json!({"rate": rate, "error": format!("{e:#}")}));
                        break;
                    }
                };
                let ok = step.p99_ms <= p99_ms && step.loss() <= max_loss;
                eprintln!(
                    "step {i}: rate {rate:.0}/s, {:.0} deliveries/s, p99 {:.1} ms, ack p99 {:.1} ms, loss {:.4}, CPU server {} generator {:.2} s {}",
                    step.deliveries_per_s(),
                    step.p99_ms,
                    step.ack_p99_ms,
                    step.loss(),
                    step.server_cpu_s.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
                    step.generator_cpu_s,
                    if ok { "ok" } else { "over" }
                );
                steps.push(step.to_json());
                if !ok {
                    over = Some(step.to_json());
                    if retried {
                        break;
                    }
                    retried = true;
                    continue;
                }
                best = Some(step);
                rate *= factor;
                retried = false;
            }
            fleet.stop().await;
            let mut r = best
                .map(|b| b.to_json())
                .unwrap_or_else(|| json!({"deliveries_per_s": 0}));
            if let Some(admin) = admin {
                r["admin_ui"] = admin.finish();
            }
            if let Some(over) = over {
                // Top level, so scripts/bench can take their medians.
                for key in ["server_core_busy", "generator_core_busy", "p99_ms", "rate"] {
                    r[format!("over_{key}")] = over[key].clone();
                }
            }
            r["scenario"] = json!("max");
            r["shape"] = shape_json(shape, common.url.len());
            r["steps"] = json!(steps);
            (common.label, r)
        }
    };
    print(&label, &result);
    Ok(())
}

/// With `--admin-ui`, the Admin UI socket of the run (logged in before the
/// fleet connects, so it is sent their updates too).
async fn admin_watch(common: &Common) -> Result<Option<admin::Watch>> {
    let Some(password) = &common.admin_ui else {
        return Ok(None);
    };
    let t = targets(common, 1)?;
    Ok(Some(admin::watch(&t[0], password).await?))
}

/// One unmeasured second at `rate` (step 0): JIT compilers, allocators and
/// socket buffers settle before the figures are taken.
async fn warm_up(fleet: &Fleet, rate: f64, shape: FanoutShape) -> Result<()> {
    fleet.step(0, rate, Duration::from_secs(1), secs(shape.drain)).await?;
    Ok(())
}

async fn start(common: &Common, shape: FanoutShape) -> Result<Fleet> {
    let sessions = shape.rooms * shape.subscribers + shape.publishers;
    let t = targets(common, sessions)?;
    let s = Shape {
        rooms: shape.rooms,
        subscribers: shape.subscribers,
        publishers: shape.publishers,
    };
    let mut fleet = Fleet::start(&t, s, common.concurrency, common.server_pid, common.generator)
        .await
        .context("connecting the subscribers and publishers")?;
    fleet.redis = common.redis.clone();
    Ok(fleet)
}

fn shape_json(shape: FanoutShape, nodes: usize) -> Value {
    json!({"rooms": shape.rooms, "subscribers": shape.subscribers, "publishers": shape.publishers, "nodes": nodes})
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}
