// Helpers for the socket.io-client compatibility tests (tests/clients/js):
// start and stop a real roomcast process, wait for events with timeouts, and
// wrap a test so that it always cleans up and shows the server log on failure.
//
// The binary comes from env ROOMCAST_BIN (tests/client_compat.rs passes
// env!("CARGO_BIN_EXE_roomcast")); when the suite is run by hand it falls
// back to target/release/roomcast.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { io as ioClient } from "socket.io-client";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, "..", "..", "..");
export const CONFIG = resolve(here, "..", "roomcast-test.toml");
// The pub/sub profile (pubsub, auth, api and slow_consumer tests).
export const PUBSUB_CONFIG = resolve(here, "..", "roomcast-pubsub.toml");

// Values of roomcast-pubsub.toml, for the tests that depend on them.
export const PUBSUB = Object.freeze({
  config: PUBSUB_CONFIG,
  jwtSecret: "roomcast-pubsub-tests-secret-0123456789abcdef",
  jwtAudience: "roomcast-tests",
  apiKey: "roomcast-test-api-key-0123456789",
  maxPerSocket: 5,
  maxBufferedPackets: 128,
  notifyNamespaces: ["/other", "/private"],
});

// Timings of roomcast-test.toml, for the assertions that depend on them.
export const PING_INTERVAL_MS = 500;
export const PING_TIMEOUT_MS = 400;
export const ACK_TIMEOUT_MS = 500;

// Client options that make reconnection fast and deterministic.
export const FAST_RECONNECT = { reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0 };

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
const LISTENING = /roomcast listening on http:\/\/127\.0\.0\.1:(\d+)\/socket\.io\//;

function roomcastBin() {
  const bin = process.env.ROOMCAST_BIN || resolve(REPO_ROOT, "target", "release", "roomcast");
  if (!existsSync(bin)) {
    throw new Error(`roomcast binary not found at ${bin}: set ROOMCAST_BIN or run cargo build --release --bin roomcast`);
  }
  return bin;
}

const live = new Set();
process.on("exit", () => {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch {}
  }
});

/**
 * Starts roomcast with tests/clients/roomcast-test.toml (or the profile at
 * `config`) on `port` (0 = any free port), with `env` added to the
 * environment, and resolves once it logs that it listens.
 */
export async function startRoomcast({ port = 0, startTimeoutMs = 10000, config = CONFIG, env = {} } = {}) {
  // The audit log of this process: a SQLite file and spill file of its own.
  const auditDir = mkdtempSync(join(tmpdir(), "roomcast-audit-"));
  const child = spawn(roomcastBin(), ["--config", config], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      ROOMCAST__SERVER__PORT: String(port),
      NO_COLOR: "1",
      RUST_LOG: "info",
      ROOMCAST__DATABASE__URL: `sqlite://${join(auditDir, "audit.db")}`,
      ROOMCAST__AUDIT__SPILL_FILE: join(auditDir, "spill.jsonl"),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(child);
  const lines = [];
  let exited = false;
  const exitPromise = new Promise((resolveExit) => {
    child.on("exit", (code, signal) => {
      exited = true;
      live.delete(child);
      lines.push(`[roomcast exited: code=${code} signal=${signal}]`);
      rmSync(auditDir, { recursive: true, force: true });
      resolveExit({ code, signal });
    });
  });

  let onLine = () => {};
  // Pending server.waitForLog calls: { re, resolve }.
  const logWaiters = new Set();
  const collect = (stream) => {
    let rest = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop();
      for (const raw of parts) {
        const line = raw.replace(ANSI, "");
        lines.push(line);
        onLine(line);
        for (const waiter of logWaiters) {
          if (waiter.re.test(line)) waiter.resolve(line);
        }
      }
    });
  };
  collect(child.stdout);
  collect(child.stderr);

  const server = {
    child,
    pid: child.pid,
    /** The SQLite file of its audit log. */
    auditDb: join(auditDir, "audit.db"),
    port: 0,
    url: "",
    exited: exitPromise,
    log: () => lines.join("\n"),
    /** The log lines so far (stdout and stderr, without ANSI colours). */
    lines: () => lines.slice(),
    /**
     * Resolves with the first log line (past or future) matching `re`, or
     * rejects after `timeoutMs`.
     */
    waitForLog(re, timeoutMs = 3000) {
      const found = lines.find((line) => re.test(line));
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolveLine, rejectLine) => {
        const waiter = {
          re,
          resolve: (line) => {
            clearTimeout(timer);
            logWaiters.delete(waiter);
            resolveLine(line);
          },
        };
        const timer = setTimeout(() => {
          logWaiters.delete(waiter);
          rejectLine(new Error(`timed out after ${timeoutMs} ms waiting for a log line matching ${re}`));
        }, timeoutMs);
        logWaiters.add(waiter);
      });
    },
    /** Sends a signal (SIGSTOP, SIGCONT, SIGKILL, ...) to the process. */
    signal(sig) {
      if (!exited) process.kill(child.pid, sig);
    },
    /** SIGKILLs the process and waits until it is gone. */
    async kill() {
      if (!exited) {
        try {
          process.kill(child.pid, "SIGCONT");
        } catch {}
        child.kill("SIGKILL");
      }
      await exitPromise;
    },
  };

  await new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rejectStart(new Error(`roomcast did not log its port within ${startTimeoutMs} ms:\n${server.log()}`));
    }, startTimeoutMs);
    onLine = (line) => {
      const m = LISTENING.exec(line);
      if (m) {
        clearTimeout(timer);
        server.port = Number(m[1]);
        server.url = `http://127.0.0.1:${server.port}`;
        onLine = () => {};
        resolveStart();
      }
    };
    exitPromise.then(() => {
      clearTimeout(timer);
      rejectStart(new Error(`roomcast exited before listening:\n${server.log()}`));
    });
  });
  return server;
}

/**
 * Resolves with the arguments of the next `event` on `emitter` (as an array),
 * or rejects after `timeoutMs`.
 */
export function once(emitter, event, timeoutMs = 3000) {
  return new Promise((resolveEvent, rejectEvent) => {
    const handler = (...args) => {
      clearTimeout(timer);
      resolveEvent(args);
    };
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      rejectEvent(new Error(`timed out after ${timeoutMs} ms waiting for "${event}"`));
    }, timeoutMs);
    emitter.once(event, handler);
  });
}

/** Resolves like `promise`, or rejects with `what` after `timeoutMs`. */
export function within(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${typeof what === "function" ? what() : what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves after `ms` milliseconds (only for deliberate observation windows). */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Defines a node:test test that gets a fresh roomcast process and a `client`
 * factory; every socket made with it is closed and the process is killed at
 * the end, pass or fail. On failure the server log is added to the error.
 */
export function serverTest(name, fn, { timeout = 20000, config, env } = {}) {
  test(name, { timeout }, async (t) => {
    const server = await startRoomcast({ config, env });
    const sockets = [];
    const ctx = {
      t,
      server,
      /** io(url + nsp, opts), remembered for cleanup. */
      client(nsp = "/", opts = {}) {
        const socket = ioClient(`${server.url}${nsp}`, { forceNew: true, ...opts });
        sockets.push(socket);
        return socket;
      },
      /** io(...) on an explicit URL/manager; remembered for cleanup. */
      track(socket) {
        sockets.push(socket);
        return socket;
      },
    };
    try {
      await fn(ctx);
    } catch (err) {
      const log = server.log();
      if (err && typeof err === "object") {
        err.message = `${err.message}\n--- roomcast log (pid ${server.pid}) ---\n${log}`;
        throw err;
      }
      throw new Error(`${err}\n--- roomcast log (pid ${server.pid}) ---\n${log}`);
    } finally {
      for (const socket of sockets) {
        socket.io.reconnection(false);
        socket.disconnect();
        socket.io.engine?.close();
      }
      for (const extra of ctx.extraServers ?? []) await extra.kill();
      await server.kill();
    }
  });
}

/**
 * Waits for `socket` to connect or be refused: resolves with
 * `{ connected: true }` or `{ error }`, rejects after `timeoutMs`.
 */
function connectOutcome(socket, timeoutMs) {
  return new Promise((resolveOutcome, rejectOutcome) => {
    const timer = setTimeout(() => {
      cleanup();
      rejectOutcome(new Error(`neither connect nor connect_error within ${timeoutMs} ms`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolveOutcome({ connected: true });
    };
    const onError = (error) => {
      cleanup();
      resolveOutcome({ error });
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Resolves once `socket` is connected (or rejects on timeout / connect_error). */
export async function connected(socket, timeoutMs = 3000) {
  if (socket.connected) return;
  const outcome = await connectOutcome(socket, timeoutMs).catch(() => {
    throw new Error(`socket did not connect within ${timeoutMs} ms`);
  });
  if (outcome.error) throw new Error(`connect_error: ${outcome.error?.message}`);
}

/**
 * Emits `event` with `arg` and resolves with the server's ack (the first
 * argument), or rejects after `timeoutMs`.
 */
export function ack(socket, event, arg, timeoutMs = 3000) {
  return socket.timeout(timeoutMs).emitWithAck(event, arg);
}

/**
 * Resolves with the next `connect_error` of `socket` (an Error with
 * `message` and `data`), or rejects if it connects instead or after
 * `timeoutMs`.
 */
export async function connectError(socket, timeoutMs = 3000) {
  const outcome = await connectOutcome(socket, timeoutMs).catch(() => {
    throw new Error(`no connect_error within ${timeoutMs} ms`);
  });
  if (outcome.connected) throw new Error(`expected connect_error, but the socket connected (id ${socket.id})`);
  return outcome.error;
}

/**
 * Counts the arguments of every `event` on `socket` into `list`, and lets a
 * test wait until a predicate over the list holds.
 *
 *     const inbox = collect(socket, "msg");
 *     await inbox.until((list) => list.length === 3, 3000, "3 messages");
 */
export function collect(socket, event) {
  const list = [];
  const waiters = new Set();
  socket.on(event, (...args) => {
    list.push(args.length <= 1 ? args[0] : args);
    for (const w of waiters) w();
  });
  return {
    list,
    until(predicate, timeoutMs = 3000, what = `"${event}" condition`) {
      if (predicate(list)) return Promise.resolve(list);
      return new Promise((resolveUntil, rejectUntil) => {
        const check = () => {
          if (predicate(list)) {
            clearTimeout(timer);
            waiters.delete(check);
            resolveUntil(list);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          rejectUntil(new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what} (got ${list.length} "${event}")`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
  };
}

/**
 * A request to roomcast's HTTP API (`path` under /api/v1) with Node's fetch.
 * `key` defaults to PUBSUB.apiKey (null = no Authorization header);
 * `authorization` sets that header verbatim. Resolves with
 * `{ status, headers, text, json }` (`json` is undefined if the body is not
 * JSON).
 */
export async function apiRequest(server, method, path, { body, key = PUBSUB.apiKey, authorization, headers = {}, rawBody } = {}) {
  const h = { ...headers };
  if (authorization !== undefined) h.authorization = authorization;
  else if (key !== null) h.authorization = `Bearer ${key}`;
  let payload;
  if (rawBody !== undefined) payload = rawBody;
  else if (body !== undefined) {
    payload = JSON.stringify(body);
    h["content-type"] ??= "application/json";
  }
  const res = await fetch(`${server.url}/api/v1${path}`, { method, headers: h, body: payload, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, text, json };
}
