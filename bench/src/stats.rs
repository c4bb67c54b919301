//! Server readings from `/proc` and latency histograms.

use std::time::Duration;

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;

/// Clock ticks per second of `/proc/<pid>/stat` (Linux fixes USER_HZ at 100).
const USER_HZ: u64 = 100;

/// A reading of the server process (and its threads).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReading {
    /// Resident set size, bytes.
    pub rss: u64,
    /// User + system CPU time.
    pub cpu: Duration,
    /// The system (kernel) part of `cpu`.
    pub system: Duration,
}

/// Reads `/proc/<pid>`; `None` without a pid.
pub fn read_proc(pid: Option<u32>) -> Result<Option<ProcReading>> {
    let Some(pid) = pid else { return Ok(None) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("server pid {pid}"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / USER_HZ);
    Ok(Some(ProcReading {
        rss: rss_kib * 1024,
        cpu: time(ticks(11) + ticks(12)),
        system: time(ticks(12)),
    }))
}

/// The kernel's count of connections refused because a listen queue was
/// full (`ListenOverflows` in `/proc/net/netstat`: every socket of the
/// machine's network namespace, so a run on a quiet machine tells).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let i = names.split_whitespace().position(|k| k == "ListenOverflows")?;
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// A latency histogram in microseconds: up to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// p50 / p99 / max of a histogram, in milliseconds.
pub fn quantiles_ms(h: &Histogram<u64>) -> (f64, f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let ms = |us: u64| us as f64 / 1000.0;
    (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
}

/// Redis's own counters (`INFO`), for what a cluster costs Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisReading {
    /// Commands processed (`total_commands_processed`).
    pub commands: u64,
    /// Bytes read from and written to clients (`total_net_input_bytes`,
    /// `total_net_output_bytes`).
    pub net_in: u64,
    pub net_out: u64,
    /// Redis's CPU seconds, user and system (`used_cpu_user` + `used_cpu_sys`).
    pub cpu_s: f64,
}

/// Reads `INFO` from the Redis at `addr` (host:port). The reading itself
/// counts one command (and, on Redis 7.2 or later, the two `CLIENT
/// SETINFO` of its connection): noise against a step's thousands.
pub async fn read_redis(addr: &str) -> Result<RedisReading> {
    let client = redis::Client::open(format!("redis://{addr}/")).with_context(|| format!("Redis at {addr}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("Redis at {addr}"))?;
    let info: redis::InfoDict = redis::cmd("INFO")
        .query_async(&mut conn)
        .await
        .with_context(|| format!("INFO from Redis at {addr}"))?;
    let field = |name: &str| info.get::<f64>(name).unwrap_or(0.0);
    Ok(RedisReading {
        commands: field("total_commands_processed") as u64,
        net_in: field("total_net_input_bytes") as u64,
        net_out: field("total_net_output_bytes") as u64,
        cpu_s: field("used_cpu_user") + field("used_cpu_sys"),
    })
}
