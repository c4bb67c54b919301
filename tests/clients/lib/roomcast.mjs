// Helpers for the socket.io-client compatibility tests (tests/clients/js):
// start and stop a real roomcast process, wait for events with timeouts, and
// wrap a test so that it always cleans up and shows the server log on failure.
//
// The binary comes from env ROOMCAST_BIN (tests/client_compat.rs passes
// env!("CARGO_BIN_EXE_roomcast")); when the suite is run by hand it falls
// back to target/release/roomcast.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { io as ioClient } from "socket.io-client";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, "..", "..", "..");
export const CONFIG = resolve(here, "..", "roomcast-test.toml");

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
 * Starts roomcast with tests/clients/roomcast-test.toml on `port` (0 = any
 * free port) and resolves once it logs that it listens.
 */
export async function startRoomcast({ port = 0, startTimeoutMs = 10000 } = {}) {
  const child = spawn(roomcastBin(), ["--config", CONFIG], {
    cwd: REPO_ROOT,
    env: { ...process.env, ROOMCAST__SERVER__PORT: String(port), NO_COLOR: "1", RUST_LOG: "info" },
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
      resolveExit({ code, signal });
    });
  });

  let onLine = () => {};
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
      }
    });
  };
  collect(child.stdout);
  collect(child.stderr);

  const server = {
    child,
    pid: child.pid,
    port: 0,
    url: "",
    exited: exitPromise,
    log: () => lines.join("\n"),
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
export function serverTest(name, fn, { timeout = 20000 } = {}) {
  test(name, { timeout }, async (t) => {
    const server = await startRoomcast();
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

/** Resolves once `socket` is connected (or rejects on timeout / connect_error). */
export function connected(socket, timeoutMs = 3000) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolveConn, rejectConn) => {
    const timer = setTimeout(() => {
      cleanup();
      rejectConn(new Error(`socket did not connect within ${timeoutMs} ms`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolveConn();
    };
    const onError = (err) => {
      cleanup();
      rejectConn(new Error(`connect_error: ${err?.message}`));
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
