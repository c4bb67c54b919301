// Processes of the cluster tests (tests/cluster): a private redis-server,
// roomcast nodes and a Node.js socket.io 4.8 server with the official
// @socket.io/redis-adapter, each on a free port of 127.0.0.1.
//
// Every process started here is remembered and SIGKILLed when the test
// process exits, whatever happens; tests also stop them in their `after`
// hooks. Each process keeps its output so that a failing test can show it.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const CLUSTER_DIR = resolve(here, "..");
export const REPO_ROOT = resolve(CLUSTER_DIR, "..", "..");
/** The roomcast profile of these tests (layered on config/default.toml). */
export const ROOMCAST_CONFIG = resolve(CLUSTER_DIR, "roomcast-cluster.toml");
/** The API key every roomcast node of these tests accepts (ROOMCAST__API__KEYS). */
export const API_KEY = "roomcast-cluster-api-key-0123456789";

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
const LISTENING = /roomcast listening on http:\/\/127\.0\.0\.1:(\d+)\/socket\.io\//;

const live = new Set();

/** SIGKILLs a child, continuing it first (a stopped process must not linger). */
function forceKill(child) {
  try {
    process.kill(child.pid, "SIGCONT");
  } catch {}
  try {
    child.kill("SIGKILL");
  } catch {}
}

process.on("exit", () => {
  for (const child of live) forceKill(child);
});
// A test file ended by a signal (the runner's timeout, Ctrl-C) still takes
// its processes down, through the "exit" handler above.
for (const [sig, n] of [["SIGHUP", 1], ["SIGINT", 2], ["SIGTERM", 15]]) process.once(sig, () => process.exit(128 + n));

/** A port that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Spawns `cmd args` and keeps its output (stdout and stderr, without ANSI
 * colours) as lines; `proc.waitForLine(re)` waits for a past or future line.
 */
export function spawnLogged(name, cmd, args, options) {
  const child = spawn(cmd, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
  live.add(child);
  const lines = [];
  const waiters = new Set();
  let exited = false;
  const exitPromise = new Promise((resolveExit) => {
    child.on("error", (err) => lines.push(`[${name}: spawn error: ${err.message}]`));
    child.on("close", (code, signal) => {
      exited = true;
      live.delete(child);
      lines.push(`[${name} exited: code=${code} signal=${signal}]`);
      for (const w of waiters) w.check();
      resolveExit({ code, signal });
    });
  });
  const push = (line) => {
    lines.push(line);
    for (const w of waiters) w.check();
  };
  for (const stream of [child.stdout, child.stderr]) {
    let rest = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop();
      for (const raw of parts) push(raw.replace(ANSI, ""));
    });
  }
  return {
    name,
    child,
    get pid() {
      return child.pid;
    },
    get exited() {
      return exited;
    },
    exit: exitPromise,
    lines,
    /** The last `max` lines of output, prefixed with the process name. */
    log(max = 200) {
      const shown = lines.slice(-max);
      const cut = lines.length - shown.length;
      return [`--- ${name} (pid ${child.pid}) ---`, ...(cut ? [`[... ${cut} earlier lines]`] : []), ...shown].join("\n");
    },
    /**
     * Resolves with the first line at index >= `from` matching `re`; rejects
     * after `timeoutMs` or when the process exits first.
     */
    waitForLine(re, { timeoutMs = 5000, from = 0 } = {}) {
      return new Promise((resolveLine, rejectLine) => {
        const w = {
          check: () => {
            const found = lines.slice(from).find((l) => re.test(l));
            if (found !== undefined) {
              done();
              resolveLine(found);
            } else if (exited) {
              done();
              rejectLine(new Error(`${name} exited before logging a line matching ${re}`));
            }
          },
        };
        const timer = setTimeout(() => {
          done();
          rejectLine(new Error(`${name}: no line matching ${re} within ${timeoutMs} ms`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(w);
        };
        waiters.add(w);
        w.check();
      });
    },
    signal(sig) {
      if (!exited) process.kill(child.pid, sig);
    },
    /** SIGKILLs the process (continuing it first if stopped) and waits for its end. */
    async kill() {
      if (!exited) forceKill(child);
      await exitPromise;
    },
  };
}

/** Sends PING over a raw connection; resolves true on +PONG. */
function redisPing(port, timeoutMs = 500) {
  return new Promise((resolvePing) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    let data = "";
    const finish = (ok) => {
      clearTimeout(timer);
      sock.destroy();
      resolvePing(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.on("connect", () => sock.write("*1\r\n$4\r\nPING\r\n"));
    sock.on("data", (d) => {
      data += d;
      if (data.includes("\r\n")) finish(data.startsWith("+PONG"));
    });
    sock.on("error", () => finish(false));
  });
}

/**
 * A private redis-server on a free port (no persistence, loopback only).
 * `redis.kill()` SIGKILLs it, `redis.restart()` starts a new one on the same
 * port, `redis.signal("SIGSTOP")` pauses it.
 */
export async function startRedis({ port } = {}) {
  port ??= await freePort();
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}/`,
    proc: null,
    runs: [],
    async start(timeoutMs = 5000) {
      const proc = spawnLogged(`redis-server :${port} (run ${this.runs.length + 1})`, "redis-server", [
        "--port", String(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
      ]);
      this.proc = proc;
      this.runs.push(proc);
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (proc.exited) throw new Error(`redis-server exited at start (is it installed?)\n${proc.log()}`);
        if (await redisPing(port)) return this;
        if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within ${timeoutMs} ms\n${proc.log()}`);
        await sleep(25);
      }
    },
    async kill() {
      await this.proc?.kill();
    },
    async restart() {
      await this.kill();
      return this.start();
    },
    signal(sig) {
      this.proc.signal(sig);
    },
    log() {
      return this.runs.map((p) => p.log(60)).join("\n");
    },
  };
  return redis.start();
}

function roomcastBin() {
  const bin = process.env.ROOMCAST_BIN || resolve(REPO_ROOT, "target", "release", "roomcast");
  if (!existsSync(bin)) {
    throw new Error(`roomcast binary not found at ${bin}: set ROOMCAST_BIN or run cargo build --release --bin roomcast`);
  }
  return bin;
}

/**
 * A roomcast node with tests/cluster/roomcast-cluster.toml on a free port,
 * joined to the Redis at `redisUrl`. Resolves once it listens and its
 * adapter has subscribed (it logs "redis adapter subscribed" after a round
 * trip that proves the PSUBSCRIBE is in place).
 */
export async function startRoomcast(name, redisUrl, { env = {}, timeoutMs = 10000 } = {}) {
  // The audit log of this node: a SQLite file and spill file of its own.
  const auditDir = mkdtempSync(join(tmpdir(), "roomcast-audit-"));
  const proc = spawnLogged(`roomcast ${name}`, roomcastBin(), ["--config", ROOMCAST_CONFIG], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      NO_COLOR: "1",
      RUST_LOG: process.env.ROOMCAST_TEST_LOG || "info",
      ROOMCAST__SERVER__HOST: "127.0.0.1",
      ROOMCAST__SERVER__PORT: "0",
      ROOMCAST__REDIS__URL: redisUrl,
      ROOMCAST__API__KEYS: API_KEY,
      ROOMCAST__DATABASE__URL: `sqlite://${join(auditDir, "audit.db")}`,
      ROOMCAST__AUDIT__SPILL_FILE: join(auditDir, "spill.jsonl"),
      ...env,
    },
  });
  proc.exit.then(() => rmSync(auditDir, { recursive: true, force: true }));
  const node = { name, proc, kind: "roomcast", url: "", port: 0, log: (max) => proc.log(max), kill: () => proc.kill() };
  try {
    const line = await proc.waitForLine(LISTENING, { timeoutMs });
    node.port = Number(LISTENING.exec(line)[1]);
    node.url = `http://127.0.0.1:${node.port}`;
    await proc.waitForLine(/redis adapter subscribed/, { timeoutMs });
  } catch (err) {
    await proc.kill();
    throw new Error(`${err.message}\n${proc.log()}`);
  }
  return node;
}

/**
 * A Node.js socket.io 4.8 server with @socket.io/redis-adapter 8.x, or
 * (`streams`) @socket.io/redis-streams-adapter 0.3 (lib/node-server.mjs),
 * on `port` (0 = a free one), with connectionStateRecovery on with
 * `recovery`; `args` are more of its options (e.g. "--api-key"). Resolves once it listens and its adapter's subscriptions
 * (and stream reader) are in place.
 */
export async function startNodeServer(name, redisUrl, { timeoutMs = 10000, sharded, streams = false, recovery = false, port = 0, args: more = [] } = {}) {
  const args = [
    resolve(here, "node-server.mjs"),
    "--redis", redisUrl,
    "--port", String(port),
    ...(sharded ? ["--sharded", sharded] : []),
    ...(streams ? ["--streams"] : []),
    ...(recovery ? ["--recovery"] : []),
    ...more,
  ];
  const proc = spawnLogged(`node socket.io server ${name}`, process.execPath, args, {
    cwd: CLUSTER_DIR,
    env: { ...process.env, NO_COLOR: "1" },
  });
  const node = { name, proc, kind: "node", url: "", port: 0, uid: "", log: (max) => proc.log(max), kill: () => proc.kill() };
  try {
    const line = await proc.waitForLine(/^READY \d+ \S+$/, { timeoutMs });
    const [, port, uid] = line.split(" ");
    node.port = Number(port);
    node.uid = uid;
    node.url = `http://127.0.0.1:${port}`;
  } catch (err) {
    await proc.kill();
    throw new Error(`${err.message}\n${proc.log()}`);
  }
  return node;
}
