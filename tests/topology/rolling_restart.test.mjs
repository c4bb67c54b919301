// A rolling restart with nothing lost: the acceptance test of connection
// state recovery across a cluster. The local topology (scripts/cluster:
// HAProxy with deploy/haproxy.cfg in front of three roomcast nodes in
// `redis.mode = "streams"` with `[recovery]` on, Redis, PostgreSQL), used
// only as its users would:
// - 264 socket.io-client 4.8 receivers through the balancer (WebSocket
//   only, polling only, polling upgraded to WebSocket; cookies kept,
//   reconnection on with a fast backoff), each in one or two of 30 rooms;
//   an application's reconnect handler: subscribe again only when
//   `socket.recovered` is false;
// - a steady publish rate throughout (6 client publishers through the
//   balancer, `publish` with an ack, 3 s timeout; 2 backends POSTing to
//   /api/v1/publish on the nodes' admin listeners in turn, which the
//   balancer does not publish), each message `{pub, seq, room}`, one
//   publish at a time per publisher. Accepted = an `{ok: true}` ack or a
//   2xx answer; anything else (a refusal, no ack in time, a dropped
//   connection, a refused request) is not accepted and never retried;
// - every node restarted in turn with SIGTERM (drained: its sessions closed
//   with "server shutting down"; started again; the balancer has it up;
//   every client connected again), then the node holding the most sockets
//   SIGKILLed and started again;
// - then publishing stops and the test waits (on events, bounded) until
//   every receiver has every accepted message of its rooms, and a marker
//   from every node in every room proves nothing more is on its way.
// Asserted for roomcast: every receiver got every accepted message of its
// rooms exactly once and, per publisher, in publish order; a message not
// accepted arrived at most once; nothing outside a receiver's rooms; every
// client ends connected; clients of every stopped node reconnected and
// recovered (`socket.recovered`, and the nodes' roomcast_recoveries_total).
// Fresh sessions (recovery refused) are reported with the nodes'
// roomcast_recoveries_refused_total{code}, and fail the test only through
// what they lost.
//
// The same scenario then runs against three Node.js socket.io 4.8 servers
// with `connectionStateRecovery` on (lib/node-server.mjs --recovery, behind
// the same HAProxy config; its publishers are the same client publishers
// and HTTP API backends, the API being node-server.mjs's POST
// /api/v1/publish), with the classic @socket.io/redis-adapter (which keeps
// no sessions), then with @socket.io/redis-streams-adapter (which keeps
// them in Redis when a socket disconnects). What they lose is counted and
// printed, never asserted: those tests fail only if the scenario could not
// run. Every result is printed and written as JSON to rolling_restart.json
// in the run dir (TOPOLOGY_RUN_DIR) and beside it (kept after a passing
// run); run with
// `cargo test --test topology -- --nocapture` to see them.
// ROLLING_RESTART_REDIS_MODE=classic runs roomcast in classic mode (where
// recovery works only on the same node, so losses are expected) to debug
// the harness.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { ioClient } from "../cluster/lib/cluster.mjs";
import { API_KEY, REPO_ROOT, sleep } from "../cluster/lib/procs.mjs";
import { NODE_NAMES, startTopology } from "../cluster/lib/topology.mjs";
import { startNodeTopology } from "../cluster/lib/node-topology.mjs";

const ROOMS = Array.from({ length: 30 }, (_, i) => `roll:${i}`);
const RECEIVERS = 264;
/** Transports by client index: 2/5 WebSocket, 2/5 upgrade, 1/5 polling. */
const TRANSPORTS = ["websocket", "websocket", "upgrade", "upgrade", "polling"];
const CLIENT_PUBLISHERS = 6;
const API_PUBLISHERS = 2;
/** Per publisher: 8 publishes a second, 64 in all. */
const PUBLISH_INTERVAL_MS = 125;
/** A publish not acked (or answered) within this is not accepted. */
const ACK_TIMEOUT_MS = 3000;
/** Clients connecting at once (the debug build on two cores). */
const BATCH = 24;
/** Publishing before the first restart and after the last one. */
const WARMUP_MS = 3000;
const TAIL_MS = 3000;
/** Generous bound for clients to be back, or messages to arrive (not a performance target). */
const CONVERGE_MS = 30_000;
/**
 * How long to wait for every accepted message where losses are expected
 * (Node.js): the markers prove nothing more is on its way anyway.
 */
const LOSSY_WAIT_MS = 5000;
const MODE = process.env.ROLLING_RESTART_REDIS_MODE || "streams";

const runDir = process.env.TOPOLOGY_RUN_DIR || join(REPO_ROOT, "target", "tmp", `topology-${process.pid}`);
const resultsFile = join(runDir, "rolling_restart.json");
/** A copy beside the run dir, which tests/topology.rs removes after a passing run. */
const keptResultsFile = join(dirname(runDir), "rolling_restart.json");
const log = (line) => console.log(`# ${line}`);

/** Resolves like `promise`, or rejects with `what` after `ms`. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${typeof what === "function" ? what() : what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function inBatches(items, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += BATCH) out.push(...(await Promise.all(items.slice(i, i + BATCH).map(fn))));
  return out;
}

const key = (m) => `${m.pub}#${m.seq}`;

/**
 * A socket.io-client socket through the balancer, as an application holds
 * one: reconnects quickly, and subscribes to its rooms again after a
 * reconnection only when the server did not recover it. Everything it
 * receives and every (re)connection is recorded.
 */
class Client {
  constructor(url, label, transport, rooms) {
    this.label = label;
    this.transport = transport;
    this.rooms = rooms;
    /** `{at, recovered}` per "connect". */
    this.connects = [];
    /** `{at, reason}` per "disconnect". */
    this.disconnects = [];
    /** The `msg` payloads, in arrival order. */
    this.received = [];
    /** How many times each message (by key) arrived. */
    this.counts = new Map();
    this.markers = new Set();
    this.errors = [];
    this.subscribing = null;
    this.waiters = new Set();
    const transports = { websocket: ["websocket"], polling: ["polling"], upgrade: ["polling", "websocket"] }[transport];
    const socket = ioClient(url, {
      forceNew: true,
      transports,
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 1000,
      withCredentials: true,
      timeout: 5000,
    });
    this.socket = socket;
    socket.on("msg", (m) => {
      this.received.push(m);
      this.counts.set(key(m), (this.counts.get(key(m)) ?? 0) + 1);
      this.notify();
    });
    socket.on("marker", (m) => {
      this.markers.add(m?.id);
      this.notify();
    });
    socket.on("connect", () => {
      const first = this.connects.length === 0;
      this.connects.push({ at: Date.now(), recovered: socket.recovered });
      if (!first && !socket.recovered) this.subscribe();
      this.notify();
    });
    socket.on("disconnect", (reason) => {
      this.disconnects.push({ at: Date.now(), reason });
      this.notify();
    });
    socket.io.on("open", () => socket.io.engine.on("upgrade", () => this.notify()));
    /** Engine.IO errors (a failed handshake, "Session ID unknown"): `{at, message}`. */
    this.engineErrors = [];
    socket.io.on("error", (err) => this.engineErrors.push({ at: Date.now(), message: `${err?.message} ${err?.description?.message ?? err?.description ?? ""}`.trim() }));
  }

  notify() {
    for (const w of this.waiters) w();
  }

  /** Resolves once `predicate()` holds; rejects after `ms`. */
  until(predicate, ms, what) {
    if (predicate()) return Promise.resolve();
    let check;
    return within(
      new Promise((resolveUntil) => {
        check = () => predicate() && resolveUntil();
        this.waiters.add(check);
      }),
      ms,
      () => `${this.label}: ${typeof what === "function" ? what() : what}`,
    ).finally(() => this.waiters.delete(check));
  }

  /** Joins every room (again); errors are recorded, the next fresh connect tries again. */
  subscribe() {
    const run = (async () => {
      for (const room of this.rooms) {
        const reply = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("subscribe", { room });
        if (reply?.ok !== true) throw new Error(`subscribe ${room}: ${JSON.stringify(reply)}`);
      }
    })().catch((err) => this.errors.push(`${new Date().toISOString()} subscribing: ${err.message}`));
    this.subscribing = run;
    run.then(() => {
      if (this.subscribing === run) this.subscribing = null;
      this.notify();
    });
    return run;
  }

  /** Connected, upgraded where it upgrades, in its rooms. */
  async ready() {
    await this.until(() => this.socket.connected, 10_000, `connecting (${this.transport})`);
    if (this.transport === "upgrade") {
      await this.until(() => this.socket.io.engine?.transport?.name === "websocket", 10_000, "upgrading");
    }
    await this.subscribe();
    assert.deepEqual(this.errors, [], `${this.label}: subscribing`);
  }

  /** Connected and done subscribing again. */
  settled() {
    return this.socket.connected && !this.subscribing;
  }

  /** Its connections, disconnections and errors, times from `t0`, for a failure's message. */
  history(t0) {
    const events = [
      ...this.connects.map((x) => [x.at, x.recovered ? "connect (recovered)" : "connect"]),
      ...this.disconnects.map((x) => [x.at, `disconnect: ${x.reason}`]),
      ...this.engineErrors.map((x) => [x.at, `engine error: ${x.message}`]),
    ].sort((a, b) => a[0] - b[0]);
    const state = `connected=${this.socket.connected} active=${this.socket.active} subscribing=${!!this.subscribing}`;
    return `${state}; ${events.map(([at, what]) => `${at - t0} ms ${what}`).join("; ")}; errors: ${this.errors.join("; ")}`;
  }

  close() {
    this.socket.io.reconnection(false);
    this.socket.disconnect();
  }
}

/** Parses the Prometheus text of a roomcast node's /metrics into what this test reads. */
function parseMetrics(text) {
  const value = (re) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : 0;
  };
  const refused = {};
  for (const m of text.matchAll(/^roomcast_recoveries_refused_total\{code="([^"]+)"\} (\d+)/gm)) refused[m[1]] = Number(m[2]);
  return {
    recoveries: value(/^roomcast_recoveries_total (\d+)/m),
    replayed: value(/^roomcast_recovery_replayed_total (\d+)/m),
    refused,
    sockets: value(/^roomcast_sockets\{namespace="\/"\} (\d+)/m),
  };
}

function addMetrics(a, b) {
  const refused = { ...a.refused };
  for (const [code, n] of Object.entries(b.refused)) refused[code] = (refused[code] ?? 0) + n;
  return { recoveries: a.recoveries + b.recoveries, replayed: a.replayed + b.replayed, refused };
}

/**
 * The scenario against `target`: `{lb, nodes, apiBase(node), sockets(name),
 * metrics(name) | null}`. Returns the counts, and `receivers` for the
 * assertions.
 */
async function runScenario(target, label) {
  const { lb, nodes } = target;
  const started = Date.now();
  const receivers = Array.from({ length: RECEIVERS }, (_, i) => {
    const rooms = [ROOMS[i % ROOMS.length]];
    const second = ROOMS[(i * 7 + 3) % ROOMS.length];
    if (i % 2 === 0 && second !== rooms[0]) rooms.push(second);
    const transport = TRANSPORTS[i % TRANSPORTS.length];
    return new Client(lb.url, `r${i}-${transport}`, transport, rooms);
  });
  const publishers = Array.from({ length: CLIENT_PUBLISHERS }, (_, i) => {
    const transport = TRANSPORTS[i % TRANSPORTS.length];
    const p = new Client(lb.url, `pub${i}-${transport}`, transport, []);
    p.index = i;
    return p;
  });
  const all = [...receivers, ...publishers];
  target.clients = all;
  await inBatches(all, (c) => c.ready());
  const socketsAt = async () => Object.fromEntries(await Promise.all(NODE_NAMES.map(async (n) => [n, await target.sockets(n)])));
  log(`${label}: ${all.length} clients connected through ${lb.url} in ${Date.now() - started} ms: ${JSON.stringify(await socketsAt())}`);

  // Publishing, until ctl.stop.
  const ledger = new Map();
  const ctl = { stop: false };
  const pace = async (state) => {
    state.next += PUBLISH_INTERVAL_MS;
    const wait = state.next - Date.now();
    if (wait > 0) await sleep(wait);
    else state.next = Date.now();
  };
  const room = (i, seq) => ROOMS[(i * 7 + seq) % ROOMS.length];
  const clientLoop = async (p) => {
    const state = { next: Date.now(), seq: 0 };
    while (!ctl.stop) {
      await pace(state);
      // A publisher waits while it is disconnected (socket.io-client would
      // buffer the emit and send it after reconnecting).
      if (ctl.stop || !p.socket.connected) continue;
      const m = { pub: p.label, seq: ++state.seq, room: room(p.index, state.seq) };
      const entry = { ...m, via: "client", accepted: null };
      ledger.set(key(m), entry);
      try {
        const reply = await p.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("publish", { room: m.room, event: "msg", data: m });
        entry.accepted = reply?.ok === true;
        entry.stored = reply?.stored;
        if (!entry.accepted) entry.why = JSON.stringify(reply);
      } catch (err) {
        entry.accepted = false;
        entry.why = err.message;
      }
    }
  };
  const apiLoop = async (i) => {
    const name = `api${i}`;
    const state = { next: Date.now(), seq: 0 };
    let turn = i;
    while (!ctl.stop) {
      await pace(state);
      if (ctl.stop) break;
      const node = nodes[NODE_NAMES[turn++ % NODE_NAMES.length]];
      const m = { pub: name, seq: ++state.seq, room: room(CLIENT_PUBLISHERS + i, state.seq) };
      const entry = { ...m, via: `api:${node.name}`, accepted: null };
      ledger.set(key(m), entry);
      try {
        const res = await fetch(`${target.apiBase(node)}/api/v1/publish`, {
          method: "POST",
          headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
          body: JSON.stringify({ room: m.room, event: "msg", data: m }),
          signal: AbortSignal.timeout(ACK_TIMEOUT_MS),
        });
        const text = await res.text();
        entry.accepted = res.status >= 200 && res.status < 300;
        try {
          entry.stored = JSON.parse(text).stored;
        } catch {}
        if (!entry.accepted) entry.why = `HTTP ${res.status}`;
      } catch (err) {
        entry.accepted = false;
        entry.why = err.cause?.code ?? err.message;
      }
    }
  };
  const loops = [...publishers.map(clientLoop), ...Array.from({ length: API_PUBLISHERS }, (_, i) => apiLoop(i))];

  const everyoneBack = () =>
    Promise.all(all.map((c) => c.until(() => c.settled(), CONVERGE_MS, () => `connected and subscribed again: ${c.history(started)}`)));
  // Counters of a node are gone with it: read them before each stop.
  let metricsOfStopped = { recoveries: 0, replayed: 0, refused: {} };
  const steps = [];
  const restart = async (name, signal) => {
    const before = new Map(all.map((c) => [c, c.disconnects.length]));
    const sockets = await target.sockets(name);
    if (target.metrics) metricsOfStopped = addMetrics(metricsOfStopped, await target.metrics(name));
    const t = Date.now();
    await nodes[name].stop(signal);
    const stoppedMs = Date.now() - t;
    await nodes[name].start();
    await lb.waitServerUp(name);
    await everyoneBack();
    const hit = all.filter((c) => c.disconnects.length > before.get(c));
    const reconnectsOf = (clients) => clients.flatMap((c) => c.connects.filter((x) => x.at >= t));
    const reconnects = reconnectsOf(hit);
    const step = {
      node: name,
      signal,
      sockets,
      disconnected: hit.length,
      recovered: reconnects.filter((x) => x.recovered).length,
      fresh: reconnects.filter((x) => !x.recovered).length,
      freshPublishers: reconnectsOf(hit.filter((c) => publishers.includes(c))).filter((x) => !x.recovered).length,
      stopMs: stoppedMs,
      ms: Date.now() - t,
    };
    steps.push(step);
    log(
      `${label}: ${name} SIG${signal} (${sockets} sockets; stopped in ${stoppedMs} ms): ${step.disconnected} clients disconnected, ` +
        `${step.recovered} reconnections recovered, ${step.fresh} fresh (${step.freshPublishers} of them publishers'); all back ${step.ms} ms after the signal`,
    );
  };

  try {
    await sleep(WARMUP_MS);
    for (const name of NODE_NAMES) await restart(name, "TERM");
    const counts = await socketsAt();
    const victim = NODE_NAMES.reduce((a, b) => (counts[b] > counts[a] ? b : a));
    await restart(victim, "KILL");
    await sleep(TAIL_MS);
  } finally {
    ctl.stop = true;
    await Promise.all(loops);
  }
  const publishedMs = Date.now() - started;

  // Every accepted message of its rooms at every receiver.
  await everyoneBack();
  const accepted = [...ledger.values()].filter((m) => m.accepted);
  const byRoom = new Map(ROOMS.map((r) => [r, []]));
  for (const m of accepted) byRoom.get(m.room).push(key(m));
  const expectedOf = (r) => r.rooms.flatMap((room) => byRoom.get(room));
  const waitStart = Date.now();
  const incomplete = [];
  await Promise.all(
    receivers.map((r) => {
      const expected = expectedOf(r);
      return r
        .until(() => expected.every((k) => r.counts.has(k)), target.lossExpected ? LOSSY_WAIT_MS : CONVERGE_MS, () => `${expected.filter((k) => !r.counts.has(k)).length} accepted messages missing`)
        .catch(() => incomplete.push(r.label));
    }),
  );
  const convergeMs = Date.now() - waitStart;

  // Positive control: a marker from every node to every room, then nothing
  // more can be on its way.
  const markerId = `marker-${process.pid}-${Date.now()}`;
  for (const name of NODE_NAMES) {
    for (const r of ROOMS) {
      const res = await fetch(`${target.apiBase(nodes[name])}/api/v1/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ room: r, event: "marker", data: { id: `${markerId}:${name}:${r}` } }),
        signal: AbortSignal.timeout(5000),
      });
      assert.ok(res.ok, `marker to ${r} through ${name}: HTTP ${res.status} ${await res.text()}`);
    }
  }
  await Promise.all(
    receivers.map((r) => {
      const ids = NODE_NAMES.flatMap((n) => r.rooms.map((room) => `${markerId}:${n}:${room}`));
      return r.until(() => ids.every((id) => r.markers.has(id)), CONVERGE_MS, () => `markers: ${ids.filter((id) => !r.markers.has(id)).join(", ")}`);
    }),
  );

  // The counts.
  let expectedDeliveries = 0;
  let delivered = 0;
  let lost = 0;
  let duplicates = 0;
  let duplicatesUnaccepted = 0;
  let unacceptedDelivered = 0;
  let strays = 0;
  let outOfOrder = 0;
  const lossy = [];
  for (const r of receivers) {
    const expected = expectedOf(r);
    expectedDeliveries += expected.length;
    const missing = expected.filter((k) => !r.counts.has(k));
    lost += missing.length;
    delivered += expected.length - missing.length;
    for (const [k, n] of r.counts) {
      const entry = ledger.get(k);
      if (!entry?.accepted) unacceptedDelivered += 1;
      if (n > 1) {
        duplicates += n - 1;
        if (!entry?.accepted) duplicatesUnaccepted += n - 1;
      }
    }
    const last = new Map();
    let disorder = 0;
    for (const m of r.received) {
      if (!r.rooms.includes(m.room)) strays += 1;
      if (!ledger.get(key(m))?.accepted) continue;
      if (m.seq <= (last.get(m.pub) ?? 0)) disorder += 1;
      last.set(m.pub, Math.max(m.seq, last.get(m.pub) ?? 0));
    }
    outOfOrder += disorder;
    if (missing.length || disorder) {
      lossy.push({
        client: r.label,
        rooms: r.rooms,
        lost: missing.length,
        outOfOrder: disorder,
        examples: missing.slice(0, 3).map((k) => `${k}→${ledger.get(k).room} (${ledger.get(k).via})`),
        connects: r.connects.slice(1).map((x) => `${x.at - started}ms:${x.recovered ? "recovered" : "fresh"}`),
        disconnects: r.disconnects.map((x) => `${x.at - started}ms:${x.reason}`),
        errors: r.errors,
      });
    }
  }
  const reconnectsOf = (clients) => {
    const later = clients.flatMap((c) => c.connects.slice(1));
    return { total: later.length, recovered: later.filter((x) => x.recovered).length, fresh: later.filter((x) => !x.recovered).length };
  };
  const notAccepted = [...ledger.values()].filter((m) => !m.accepted);
  const why = {};
  for (const m of notAccepted) why[m.why] = (why[m.why] ?? 0) + 1;
  let metrics = null;
  if (target.metrics) {
    metrics = metricsOfStopped;
    for (const name of NODE_NAMES) metrics = addMetrics(metrics, await target.metrics(name));
  }
  return {
    result: {
      server: label,
      disconnectedAtEnd: all.filter((c) => !c.socket.connected).map((c) => c.label),
      clients: { receivers: receivers.length, publishers: publishers.length, rooms: ROOMS.length },
      published: {
        attempted: ledger.size,
        accepted: accepted.length,
        acceptedFromClients: accepted.filter((m) => m.via === "client").length,
        acceptedFromApi: accepted.filter((m) => m.via !== "client").length,
        notAccepted: notAccepted.length,
        notAcceptedWhy: why,
        // roomcast in streams mode says whether the stream took it.
        acceptedStored: accepted.filter((m) => m.stored === true).length,
        acceptedNotStored: accepted.filter((m) => m.stored === false).length,
      },
      deliveries: {
        expected: expectedDeliveries,
        delivered,
        lost,
        duplicates,
        duplicatesOfUnaccepted: duplicatesUnaccepted,
        unacceptedDelivered,
        outOfOrder,
        strays,
        receiversMissingSomething: lossy.filter((x) => x.lost).length,
        receiversIncompleteAfterWait: incomplete.length,
      },
      reconnects: { receivers: reconnectsOf(receivers), publishers: reconnectsOf(publishers) },
      steps,
      metrics,
      lossyExamples: lossy.slice(0, 5),
      timeMs: { publishing: publishedMs, convergence: convergeMs, total: Date.now() - started },
    },
  };
}

/** Adds the scenario's result of `name` to the run dir's JSON and prints it. */
function record(name, result) {
  mkdirSync(runDir, { recursive: true });
  const all = existsSync(resultsFile) ? JSON.parse(readFileSync(resultsFile, "utf8")) : {};
  all[name] = result;
  writeFileSync(resultsFile, `${JSON.stringify(all, null, 2)}\n`);
  writeFileSync(keptResultsFile, `${JSON.stringify(all, null, 2)}\n`);
  const { published: p, deliveries: d, reconnects: rc, metrics: m, timeMs: t } = result;
  log(
    `${result.server}: ${p.accepted} of ${p.attempted} publishes accepted (${p.acceptedFromClients} client, ${p.acceptedFromApi} API; ` +
      (p.acceptedStored || p.acceptedNotStored ? `acked "stored": ${p.acceptedStored} true, ${p.acceptedNotStored} false; ` : "") +
      `not accepted: ${JSON.stringify(p.notAcceptedWhy)}); deliveries of accepted messages: ${d.delivered} of ${d.expected}, ` +
      `${d.lost} lost (at ${d.receiversMissingSomething} receivers), ${d.duplicates} duplicated, ${d.outOfOrder} out of order, ` +
      `${d.unacceptedDelivered} deliveries of unaccepted messages, ${d.strays} strays`,
  );
  log(
    `${result.server}: reconnections: receivers ${rc.receivers.recovered} recovered / ${rc.receivers.fresh} fresh, publishers ` +
      `${rc.publishers.recovered} recovered / ${rc.publishers.fresh} fresh` +
      (m ? `; nodes: roomcast_recoveries_total ${m.recoveries}, replayed ${m.replayed}, refused ${JSON.stringify(m.refused)}` : "") +
      `; ${t.publishing} ms publishing, ${t.total} ms in all`,
  );
  for (const x of result.lossyExamples) log(`${result.server}: e.g. ${JSON.stringify(x)}`);
  log(`${name} result: ${JSON.stringify(result)}`);
  log(`results in ${resultsFile} and ${keptResultsFile}`);
}

/**
 * The scenario against three Node.js servers (node-server.mjs --recovery
 * and `args`) behind HAProxy; recorded as `name`. Asserts only that it ran.
 */
async function nodeRun(name, label, args) {
  const { lb, nodes } = await startNodeTopology(join(runDir, `rolling-${name}`), { args: ["--recovery", ...args] });
  const target = { lb, nodes, apiBase: (node) => node.api, metrics: null, sockets: (n) => nodes[n].sockets(), lossExpected: true };
  let outcome;
  try {
    outcome = await runScenario(target, label);
  } catch (err) {
    err.message = `${err.message}\n===== logs =====\n${lb.log(80)}`;
    throw err;
  } finally {
    for (const c of target.clients ?? []) c.close();
    await lb.kill();
  }
  const { result } = outcome;
  record(name, result);
  // It ran: every step done, everyone back, the markers through.
  assert.equal(result.steps.length, NODE_NAMES.length + 1, "every restart done");
  assert.deepEqual(result.disconnectedAtEnd, [], "every client ends connected");
  assert.ok(result.published.accepted > 0, "publishes accepted");
}

describe("a rolling restart through the balancer, publishing throughout", { timeout: 600_000 }, () => {
  it("roomcast (streams mode, recovery on): every accepted message reaches every member once, in order", { timeout: 300_000 }, async () => {
    const dir = join(runDir, "rolling-roomcast");
    const { lb, nodes } = await startTopology(dir, {
      ROOMCAST__SERVER__WORKERS: "2",
      ROOMCAST__REDIS__MODE: MODE,
      ROOMCAST__RECOVERY__ENABLED: "true",
      ROOMCAST__RECOVERY__NAMESPACES: "/",
      ROOMCAST__RECOVERY__REFRESH_MS: "1000",
    });
    const scrape = async (name) => {
      const res = await fetch(`${nodes[name].admin}/metrics`, { signal: AbortSignal.timeout(5000) });
      return parseMetrics(await res.text());
    };
    const target = {
      lb,
      nodes,
      apiBase: (node) => node.admin,
      metrics: scrape,
      sockets: async (name) => (await scrape(name)).sockets,
      // Classic mode recovers only on the node that is restarted.
      lossExpected: MODE !== "streams",
    };
    let outcome;
    try {
      outcome = await runScenario(target, `roomcast (${MODE})`);
    } catch (err) {
      err.message = `${err.message}\n===== logs =====\n${lb.log(80)}`;
      throw err;
    } finally {
      for (const c of target.clients ?? []) c.close();
      await lb.kill();
    }
    const { result } = outcome;
    record("roomcast", result);
    const d = result.deliveries;
    const failure = (what) => `${what}: ${JSON.stringify(result.lossyExamples)} (refusals: ${JSON.stringify(result.metrics.refused)})`;
    assert.equal(d.lost, 0, failure("accepted messages lost"));
    assert.equal(d.duplicates, 0, failure("messages delivered twice"));
    assert.equal(d.outOfOrder, 0, failure("accepted messages out of a publisher's order"));
    assert.equal(d.strays, 0, "messages of rooms the receiver is not in");
    assert.ok(result.published.acceptedFromClients > 0 && result.published.acceptedFromApi > 0, "publishes of both kinds accepted");
    assert.deepEqual(result.disconnectedAtEnd, [], "every client ends connected");
    for (const step of result.steps) {
      assert.ok(step.disconnected > 0, `${step.node} SIG${step.signal} disconnected clients: ${JSON.stringify(step)}`);
      assert.ok(step.recovered > 0, `clients of ${step.node} (SIG${step.signal}) recovered: ${JSON.stringify(step)}`);
    }
    assert.ok(result.metrics.recoveries > 0, `the nodes counted recoveries: ${JSON.stringify(result.metrics)}`);
  });

  it(
    "Node.js socket.io 4.8 with @socket.io/redis-adapter and connectionStateRecovery: what it loses (printed, not asserted)",
    { timeout: 300_000 },
    () => nodeRun("node", "Node.js socket.io 4.8 + @socket.io/redis-adapter", []),
  );

  it(
    "Node.js socket.io 4.8 with @socket.io/redis-streams-adapter and connectionStateRecovery: what it loses (printed, not asserted)",
    { timeout: 300_000 },
    () => nodeRun("nodeStreams", "Node.js socket.io 4.8 + @socket.io/redis-streams-adapter", ["--streams"]),
  );
});
