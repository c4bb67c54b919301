// Helpers of the cluster tests: a Cluster owns a private Redis, the server
// processes and the socket.io-client sockets of one test file, stops them
// all at the end, and adds their logs to a failing test's error.
//
// Synchronisation is always on events or acks with timeouts. Absence
// ("nothing else arrived") is proven with a positive control: after the
// messages under test, a marker is published from every node (or from the
// emitter) and the test waits until each receiver has every marker. Redis
// delivers a publisher's messages in order, and every marker is published
// after the messages under test have reached Redis, so any duplicate or
// stray copy that went through Redis would have arrived before the markers.

import assert from "node:assert/strict";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";
import { io as ioClient } from "socket.io-client";
import { API_KEY, startNodeServer, startRedis, startRoomcast } from "./procs.mjs";

export { API_KEY, sleep } from "./procs.mjs";
/** socket.io-client's `io`, for test files outside tests/cluster (no node_modules of their own). */
export { ioClient };

let counter = 0;
/** A string unique within this test process. */
export const uniq = (prefix = "m") => `${prefix}-${process.pid}-${++counter}`;

/** Resolves like `promise`, or rejects with `what` after `timeoutMs`. */
export function within(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${typeof what === "function" ? what() : what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Every event a socket receives, with a way to wait for a condition on
 * them. Anything with `onAny(listener)` can feed one (a client of another
 * library, driven from a test).
 */
export class Inbox {
  constructor(socket) {
    this.events = [];
    this.waiters = new Set();
    socket.onAny((event, ...args) => {
      this.events.push({ event, args, at: Date.now() });
      for (const w of this.waiters) w();
    });
  }

  /** The first arguments of every `event` received so far. */
  of(event) {
    return this.events.filter((e) => e.event === event).map((e) => e.args[0]);
  }

  /** Resolves once `predicate(inbox)` holds; rejects after `timeoutMs`. */
  until(predicate, timeoutMs, what) {
    if (predicate(this)) return Promise.resolve();
    return new Promise((resolveUntil, rejectUntil) => {
      const check = () => {
        if (predicate(this)) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolveUntil();
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        const seen = this.events.map((e) => e.event).join(", ");
        rejectUntil(new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}; received so far: [${seen}]`));
      }, timeoutMs);
      this.waiters.add(check);
    });
  }
}

/** Emits `event` with `arg` and resolves with the ack, or rejects after `timeoutMs`. */
export function ack(socket, event, arg, timeoutMs = 3000) {
  return socket.timeout(timeoutMs).emitWithAck(event, arg);
}

/** Publishes through `socket` and asserts the ack is `{ok: true, ...}`; resolves with it. */
export async function publish(socket, room, event, data, timeoutMs = 3000) {
  const reply = await ack(socket, "publish", { room, event, data }, timeoutMs);
  assert.equal(reply?.ok, true, `${socket.label}: publish to ${room} refused: ${JSON.stringify(reply)}`);
  return reply;
}

/**
 * How many times each `from` appears in the `event` payloads that `socket`
 * received with `tag` (payloads are `{tag, from, ...}`), as a sorted object.
 */
export function countsFrom(socket, event, tag) {
  const counts = {};
  for (const p of socket.inbox.of(event)) {
    if (p && p.tag === tag) counts[p.from] = (counts[p.from] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)));
}

/** `{label: 1, ...}` for the labels of `sockets`, sorted like countsFrom. */
export function onceEach(sockets) {
  return Object.fromEntries(sockets.map((s) => [s.label, 1]).sort(([a], [b]) => a.localeCompare(b)));
}

/** The bytes of a value that must have arrived as binary (Buffer / ArrayBuffer / typed array). */
export function binaryBytes(value, what) {
  if (Buffer.isBuffer(value)) return [...value];
  if (value instanceof ArrayBuffer) return [...new Uint8Array(value)];
  if (ArrayBuffer.isView(value)) return [...new Uint8Array(value.buffer, value.byteOffset, value.byteLength)];
  assert.fail(`${what} did not arrive as binary: ${JSON.stringify(value)?.slice(0, 200)}`);
}

/**
 * The adapter protocols a cluster can speak: the classic one, and the
 * sharded one (Redis 7 sharded pub/sub) in its two subscription modes.
 */
export const MODES = ["classic", "dynamic", "static"];
/**
 * And @socket.io/redis-streams-adapter's (Redis streams; roomcast's
 * `redis.mode = "streams"`), which the emitter does not speak.
 */
export const STREAMS = "streams";

export class Cluster {
  /**
   * `mode`: one of MODES, or STREAMS; every node of the cluster speaks it.
   * `env`: more ROOMCAST__* settings for every roomcast node.
   */
  constructor(name, { mode = "classic", env = {} } = {}) {
    assert.ok(MODES.includes(mode) || mode === STREAMS, `unknown mode ${mode}`);
    this.name = name;
    this.mode = mode;
    this.env = env;
    this.redis = null;
    this.nodes = {};
    this.sockets = [];
    this.closers = [];
  }

  /** Starts the private redis-server. */
  async startRedis() {
    this.redis = await startRedis();
    return this.redis;
  }

  /** Starts roomcast nodes named `names`, in parallel. */
  async startRoomcast(...names) {
    const env =
      this.mode === "classic"
        ? {}
        : this.mode === STREAMS
          ? { ROOMCAST__REDIS__MODE: "streams" }
          : { ROOMCAST__REDIS__MODE: "sharded", ROOMCAST__REDIS__SUBSCRIPTION_MODE: this.mode };
    Object.assign(env, this.env);
    const nodes = await Promise.all(names.map((n) => startRoomcast(n, this.redis.url, { env })));
    for (const node of nodes) this.nodes[node.name] = node;
    return nodes;
  }

  /**
   * Starts a Node.js socket.io server with the cluster's adapter (and,
   * with `recovery`, connectionStateRecovery on; `args`: more of
   * lib/node-server.mjs's options).
   */
  async startNodeServer(name, { recovery = false, args = [] } = {}) {
    const streams = this.mode === STREAMS;
    const sharded = this.mode === "classic" || streams ? undefined : this.mode;
    const node = await startNodeServer(name, this.redis.url, { sharded, streams, recovery, args });
    this.nodes[name] = node;
    return node;
  }

  /** Runs `fn` at cleanup (before the processes are killed). */
  onClose(fn) {
    this.closers.push(fn);
  }

  /** An `@socket.io/redis-emitter` on the cluster's Redis (closed at cleanup). */
  async emitter() {
    const redis = createClient({ url: this.redis.url });
    redis.on("error", () => {});
    await redis.connect();
    this.onClose(() => redis.quit());
    return new Emitter(redis);
  }

  /**
   * A connected socket.io-client socket on `node`, subscribed to `rooms`.
   * `transport` is "websocket", "polling" (never upgrades) or "upgrade"
   * (polling first, then the WebSocket upgrade, as a browser does).
   * Reconnection is off unless `reconnect` is set, so a lost connection
   * stays visible in `socket.disconnects`; with `reconnect` the socket
   * reconnects quickly, subscribes to `rooms` again as an application
   * would, and `socket.resubscribed` lists when each reconnection had done
   * so (`socket.resubscribedOnce` resolves at the first). `cookies` keeps cookies (a balancer's stickiness cookie) as a
   * browser does. `socket.inbox` holds everything it received;
   * `socket.transportErrors` every Engine.IO error (`{message, status,
   * body}`, failed upgrades included), e.g. a "Session ID unknown".
   */
  async client(node, label, { transport = "websocket", rooms = [], reconnect = false, cookies = false } = {}) {
    const transports = { websocket: ["websocket"], polling: ["polling"], upgrade: ["polling", "websocket"] }[transport];
    assert.ok(transports, `unknown transport ${transport}`);
    const socket = ioClient(node.url, {
      forceNew: true,
      transports,
      reconnection: reconnect,
      reconnectionDelay: 100,
      reconnectionDelayMax: 1000,
      withCredentials: cookies,
      timeout: 5000,
    });
    socket.label = label;
    socket.node = node;
    socket.transport = transport;
    socket.disconnects = [];
    socket.resubscribed = [];
    socket.transportErrors = [];
    socket.inbox = new Inbox(socket);
    socket.on("disconnect", (reason) => socket.disconnects.push(reason));
    const transportError = (err) =>
      socket.transportErrors.push({
        message: String(err?.message ?? err),
        status: err?.description,
        body: String(err?.context?.responseText ?? err?.description?.message ?? ""),
      });
    socket.io.on("error", transportError);
    socket.io.on("open", () => socket.io.engine.on("upgradeError", transportError));
    this.sockets.push(socket);
    await within(
      new Promise((resolveConn, rejectConn) => {
        socket.once("connect", resolveConn);
        socket.once("connect_error", (err) => rejectConn(new Error(`${label}: connect_error ${err.message}`)));
      }),
      5000,
      `${label} connecting to ${node.name} (${transport})`,
    );
    if (transport === "upgrade") {
      const engine = socket.io.engine;
      if (engine.transport.name !== "websocket") {
        await within(new Promise((r) => engine.once("upgrade", r)), 5000, `${label} upgrading to websocket`);
      }
    }
    const subscribe = async () => {
      for (const room of rooms) {
        const reply = await ack(socket, "subscribe", { room });
        assert.deepEqual(reply, { ok: true }, `${label}: subscribe ${room}`);
      }
    };
    await subscribe();
    if (reconnect) {
      let backAgain;
      /** Resolves once the socket has reconnected and subscribed again. */
      socket.resubscribedOnce = new Promise((r) => (backAgain = r));
      // Every later "connect" is a reconnection (a new session).
      socket.on("connect", () =>
        subscribe().then(
          () => {
            socket.resubscribed.push(Date.now());
            backAgain();
          },
          (err) => socket.transportErrors.push({ message: `subscribing again: ${err.message}` }),
        ),
      );
    }
    return socket;
  }

  /** Sockets that saw a disconnect, as `label: reasons`. */
  disconnected() {
    return this.sockets.filter((s) => s.disconnects.length).map((s) => `${s.label}: ${s.disconnects.join(", ")}`);
  }

  /**
   * Positive control. Each of `controls` publishes a marker to each group's
   * room; resolves once every receiver of each group has every marker.
   * `groups` is `[{room, receivers: [socket]}]`.
   */
  async settle(controls, groups, timeoutMs = 5000) {
    const id = uniq("marker");
    for (const g of groups) {
      for (const c of controls) await publish(c, g.room, "marker", { id, from: c.label });
    }
    await Promise.all(
      groups.flatMap((g) =>
        g.receivers.map((r) =>
          r.inbox.until(
            (inbox) => controls.every((c) => inbox.of("marker").some((m) => m?.id === id && m.from === c.label)),
            timeoutMs,
            `markers ${id} from ${controls.map((c) => c.label).join(", ")} at ${r.label} (room ${g.room})`,
          ),
        ),
      ),
    );
  }

  /**
   * A request to `node`'s HTTP API (`path` under /api/v1) with the test API
   * key: on its admin listener where it has one (`admin.address`).
   */
  async api(node, method, path, body) {
    const base = node.admin ?? node.url;
    const request = () =>
      fetch(`${base}/api/v1${path}`, {
        method,
        headers: { authorization: `Bearer ${API_KEY}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
    let res;
    try {
      res = await request();
    } catch (err) {
      // fetch's network failure ("fetch failed"), not its timeout: a pooled
      // keep-alive connection that the balancer closed as the request went
      // out on it (it closes those that were bound to a node that was just
      // killed), so the request was never read. One retry, on another
      // connection. Had the first one got through after all, the test's
      // exactly-once checks would see the publish twice.
      if (!(err instanceof TypeError)) throw err;
      res = await request();
    }
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.status, text, json };
  }

  /** The logs of every process, for a failure report. */
  logs() {
    const parts = Object.values(this.nodes).map((n) => n.log(150));
    if (this.redis) parts.push(this.redis.log());
    return parts.join("\n");
  }

  /** Wraps a test body so that a failure carries the logs of the cluster. */
  wrap(fn) {
    return async (t) => {
      try {
        await fn(t);
      } catch (err) {
        const logs = `\n===== logs of cluster "${this.name}" =====\n${this.logs()}`;
        if (err && typeof err === "object") {
          err.message = `${err.message}${logs}`;
          throw err;
        }
        throw new Error(`${err}${logs}`);
      }
    };
  }

  /**
   * Closes every socket and client, kills every process. Never throws.
   * With CLUSTER_TEST_LOGS=1 the logs are printed even when all passed.
   */
  async close() {
    for (const socket of this.sockets) {
      try {
        socket.io.reconnection(false);
        socket.disconnect();
        socket.io.engine?.close();
      } catch {}
    }
    for (const fn of this.closers.splice(0)) {
      try {
        await within(Promise.resolve().then(fn), 2000, "closing a client");
      } catch {}
    }
    await Promise.allSettled(Object.values(this.nodes).map((n) => n.kill()));
    await this.redis?.kill();
    if (process.env.CLUSTER_TEST_LOGS) console.error(`===== logs of cluster "${this.name}" =====\n${this.logs()}`);
  }
}
