//! The kernel's floor under any server's cost per delivery: small writes,
//! one per socket in turn, to many loopback TCP sockets whose reader runs
//! on the other core. No Socket.IO, no server: what is left is the cost of
//! `write(2)` itself (on loopback that includes the receiving side's TCP
//! processing and the reader's wake-up, which run on the writer's CPU).
//!
//! `floor-send` listens, takes `sockets` connections, then writes
//! `payload`-byte messages round robin at `rate` per second and reports its
//! own user and system CPU per write. `floor-read` opens the connections
//! and reads them the way the load generator reads deliveries.

use std::io::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

use crate::stats::read_proc;

/// User and system CPU seconds of this process.
fn cpu() -> Result<(f64, f64)> {
    let r = read_proc(Some(std::process::id()))?.unwrap_or_default();
    Ok(((r.cpu - r.system).as_secs_f64(), r.system.as_secs_f64()))
}

pub fn send(port: u16, sockets: usize, rate: f64, duration: Duration, payload: usize) -> Result<Value> {
    let listener = TcpListener::bind(("127.0.0.1", port)).context("floor-send: bind")?;
    let mut conns = Vec::with_capacity(sockets);
    while conns.len() < sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let message = vec![b'x'; payload];
    let (user0, sys0) = cpu()?;
    let started = Instant::now();
    let (mut written, mut next) = (0u64, 0usize);
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while written < due {
            conns[next].write_all(&message)?;
            next = (next + 1) % sockets;
            written += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (user1, sys1) = cpu()?;
    let per_write_us = |s: f64| s * 1e6 / written.max(1) as f64;
    Ok(json!({
        "scenario": "write-floor",
        "sockets": sockets,
        "payload": payload,
        "rate": rate,
        "writes_per_s": written as f64 / seconds,
        "user_us_per_write": per_write_us(user1 - user0),
        "sys_us_per_write": per_write_us(sys1 - sys0),
        "core_busy": (user1 - user0 + sys1 - sys0) / seconds,
    }))
}

pub async fn read(port: u16, sockets: usize) -> Result<()> {
    let mut tasks = Vec::with_capacity(sockets);
    // `floor-send` may still be starting: the first connection waits for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..sockets {
        let mut s = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(_) if i == 0 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("floor-read: connect"),
            }
        };
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
