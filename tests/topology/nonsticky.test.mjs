// The local cluster topology without sticky sessions (scripts/cluster with
// ROOMCAST_CLUSTER_STICKY=0: HAProxy balances every request round robin,
// with no cookie; each node runs with cluster.sticky = false and its admin
// listener as cluster.advertise_address), used through the balancer's
// public port only, by socket.io-client 4.8 and python-socketio 5 clients
// that keep no cookies, so that the requests of one session really go to
// all three nodes:
// - polling-only clients of both libraries connect, publish events with
//   acks and binary values, join rooms whose members are on all three
//   nodes, and every publish reaches every other member of its room exactly
//   once, binary as binary; a burst of publishes from one polling client
//   (many POSTs, each to whichever node) arrives in order;
// - the requests of each polling session were served by several nodes
//   (HAProxy's log names the server of every request) and forwarded (each
//   node's roomcast_forwarded_requests_total); no request got "Session ID
//   unknown" (the clients' Engine.IO errors, python-engineio's warnings,
//   HAProxy's log: no 400 at all);
// - the same libraries with their default transports upgrade to WebSocket
//   (the upgrade request reaches whichever node, the owner's or another,
//   which relays it) and go on receiving and publishing over it;
// - one node SIGKILLed: a polling request of one of its sessions is
//   answered "Session ID unknown" at once by the node it reaches, and its
//   clients of both libraries reconnect through the balancer within the
//   heartbeat bound (ping_interval_ms + ping_timeout_ms, as this file
//   configures the nodes), subscribe again and receive every publish
//   exactly once again. How long it took is printed, and which clients of
//   the other nodes had a request in flight through the killed node.
//
// Against a build without forwarding this fails at the first polling
// request that reaches another node: "Session ID unknown".

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { Cluster, Inbox, binaryBytes, countsFrom, onceEach, publish, sleep, uniq, within } from "../cluster/lib/cluster.mjs";
import { REPO_ROOT } from "../cluster/lib/procs.mjs";
import { NODE_NAMES, locate, startTopology } from "../cluster/lib/topology.mjs";

const ROOMS = ["ns:a", "ns:b", "ns:c"];
/** socket.io-client members per room: polling only, and polling upgraded to WebSocket. */
const POLLING_PER_ROOM = 6;
const UPGRADE_PER_ROOM = 2;
/** Polling clients in no room: per node, one of them publishes the settle markers. */
const CONTROLS = 12;
/**
 * Publishes of the in-order burst. At most 16: python-engineio's client
 * refuses a polling payload of more packets ("Unexpected packet from
 * server", engineio.payload.Payload.max_decode_packets) and drops its
 * session, and a receiver that polls late gets the whole burst in one.
 */
const BURST = 12;
/**
 * The nodes' heartbeat, set below: a client whose session is gone learns it
 * within PING_INTERVAL_MS + PING_TIMEOUT_MS at worst (no ping, or no
 * answer to its own requests), the bound its reconnection is held to.
 */
const PING_INTERVAL_MS = 5000;
const PING_TIMEOUT_MS = 5000;
const HEARTBEAT_BOUND_MS = PING_INTERVAL_MS + PING_TIMEOUT_MS;
/** How soon a request of a dead node's session must be answered. */
const UNKNOWN_AT_ONCE_MS = 2000;

const runDir = join(process.env.TOPOLOGY_RUN_DIR || join(REPO_ROOT, "target", "tmp", `topology-${process.pid}`), "nonsticky");
const PYTHON = join(REPO_ROOT, "tests", "clients", ".venv", "bin", "python");
const PY_CLIENT = join(REPO_ROOT, "tests", "topology", "nonsticky_client.py");

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const UNKNOWN = /Session ID unknown/;
/** A value as nonsticky_client.py takes it: bytes as {"$bytes": hex}. */
const toWire = (v) =>
  Buffer.isBuffer(v)
    ? { $bytes: v.toString("hex") }
    : Array.isArray(v)
      ? v.map(toWire)
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toWire(x)]))
        : v;
/** The bytes of a value received as binary, by either library. */
function receivedBytes(value, what) {
  if (value && typeof value === "object" && Object.keys(value).length === 1 && typeof value.$bytes === "string") {
    return [...Buffer.from(value.$bytes, "hex")];
  }
  return binaryBytes(value, what);
}

/**
 * A python-socketio client (tests/topology/nonsticky_client.py) with the
 * parts of a Cluster socket the test reads: `label`, `room`, `inbox`,
 * `disconnects`, `resubscribed`/`resubscribedOnce`, `transportErrors`
 * (python-engineio's warnings, e.g. an unexpected status 400).
 */
class PyClient {
  constructor(url, label, transport, rooms) {
    Object.assign(this, { label, transport, rooms, py: true, disconnects: [], resubscribed: [], errors: [], stderr: "" });
    let deliver;
    this.inbox = new Inbox({ onAny: (fn) => (deliver = fn) });
    this.acks = new Map();
    this.nextId = 1;
    let readyOk, readyFail, backAgain;
    this.ready = new Promise((ok, fail) => ([readyOk, readyFail] = [ok, fail]));
    this.resubscribedOnce = new Promise((r) => (backAgain = r));
    this.proc = spawn(PYTHON, [PY_CLIENT, url, label, transport, rooms.join(",")], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    this.proc.stderr.on("data", (d) => (this.stderr += d));
    this.proc.on("exit", (code, signal) => {
      this.exited = code ?? signal;
      readyFail(new Error(`${label} (python) exited with ${this.exited} before it was ready:\n${this.stderr}`));
    });
    createInterface({ input: this.proc.stdout }).on("line", (line) => {
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        this.errors.push(`not JSON: ${line}`);
        return;
      }
      if (m.type === "ready") {
        Object.assign(this, { id: m.sid, sessionId: m.eio_sid, engineTransport: m.transport });
        readyOk();
      } else if (m.type === "event") deliver(m.event, m.data);
      else if (m.type === "ack") this.acks.get(m.id)?.(m);
      else if (m.type === "disconnect") this.disconnects.push(m.reason);
      else if (m.type === "resubscribed") {
        Object.assign(this, { id: m.sid, sessionId: m.eio_sid, engineTransport: m.transport });
        this.resubscribed.push(Date.now());
        backAgain();
      } else this.errors.push(line);
    });
  }

  /** Engine.IO errors as python-engineio logs them (a 400 is "Unexpected status code 400"). */
  get transportErrors() {
    return this.stderr
      .split("\n")
      .filter((l) => / engineio (WARNING|ERROR) /.test(l))
      .map((message) => ({ message }));
  }

  /** Emits `event` with `arg` and resolves with the ack's argument. */
  call(event, arg, timeoutMs = 10_000) {
    const id = this.nextId++;
    const reply = new Promise((ok, fail) =>
      this.acks.set(id, (m) => {
        this.acks.delete(id);
        if (m.error) fail(new Error(`${this.label}: ${event}: ${m.error}`));
        else ok(m.reply);
      }),
    );
    this.proc.stdin.write(`${JSON.stringify({ id, event, arg: toWire(arg) })}\n`);
    return within(reply, timeoutMs, `${this.label} (python): ack of ${event}`);
  }

  /** Lets it disconnect, then makes sure it is gone. */
  async close() {
    if (this.exited !== undefined) return;
    const gone = new Promise((r) => this.proc.once("exit", r));
    try {
      this.proc.stdin.end(`${JSON.stringify({ quit: true })}\n`);
      await within(gone, 3000, `${this.label} (python) exiting`);
    } catch {
      this.proc.kill("SIGKILL");
    }
  }
}

describe("the local topology without sticky sessions, round robin behind HAProxy", { timeout: 240_000 }, () => {
  const cluster = new Cluster("scripts/cluster topology without stickiness");
  let lb, nodes;
  let members = []; // in ROOMS: socket.io-client sockets and PyClients
  let controls = []; // in no room
  let pyClients = [];
  let connected = false;
  const log = (line) => console.log(`# ${line}`);
  const everyone = () => [...members, ...controls];
  const spread = (clients) => Object.fromEntries(NODE_NAMES.map((n) => [n, clients.filter((s) => s.nodeName === n).length]));
  const membersOf = (room) => members.filter((s) => s.room === room);
  /** The Engine.IO session id of a client, which HAProxy's log shows as `sid`. */
  const sessionIdOf = (s) => (s.py ? s.sessionId : s.io.engine?.id);
  const transportOf = (s) => (s.py ? s.engineTransport : s.io.engine.transport.name);
  const controlsOn = (names) =>
    names.map((n) => {
      const c = controls.find((s) => s.nodeName === n && s.connected);
      assert.ok(c, `a control client on ${n} (controls: ${JSON.stringify(spread(controls))})`);
      return c;
    });
  const needConnected = () => assert.ok(connected, "the clients did not all connect (the first test says why)");

  /** A publish by either library; asserts the ack is `{ok: true}`. */
  async function publishFrom(s, room, event, data) {
    if (!s.py) return publish(s, room, event, data, 10_000);
    const reply = await s.call("publish", { room, event, data });
    assert.equal(reply?.ok, true, `${s.label}: publish to ${room} refused: ${JSON.stringify(reply)}`);
    return reply;
  }

  /** HAProxy's Socket.IO request lines: `{server, status, method, sid, transport, line}`. */
  function balancedRequests() {
    // httplog: "... public roomcast/node2 Tq/Tw/Tc/Tr/Ta STATUS BYTES ... "GET /socket.io/?... HTTP/1.1""
    return lb
      .accessLog()
      .map((line) => {
        const m = / roomcast\/(\S+) -?\d+\/-?\d+\/-?\d+\/-?\d+\/\+?\d+ (\d{3}) .*"(GET|POST) (\/socket\.io\/\S*)/.exec(line);
        if (!m) return null;
        const query = new URLSearchParams(m[4].split("?")[1] ?? "");
        return { server: m[1], status: m[2], method: m[3], sid: query.get("sid"), transport: query.get("transport"), line };
      })
      .filter(Boolean);
  }

  /** Each node's roomcast_forwarded_requests_total by `kind/outcome`. */
  async function forwarded(name) {
    const res = await fetch(`${nodes[name].admin}/metrics`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200, `${name}'s /metrics`);
    const counts = {};
    for (const line of (await res.text()).split("\n")) {
      const m = /^roomcast_forwarded_requests_total\{([^}]*)\} (\S+)$/.exec(line);
      if (!m) continue;
      const label = (k) => new RegExp(`${k}="([^"]*)"`).exec(m[1])?.[1];
      const key = `${label("kind")}/${label("outcome")}`;
      counts[key] = (counts[key] ?? 0) + Number(m[2]);
    }
    return counts;
  }
  const sumOf = (counts, kind) =>
    Object.entries(counts)
      .filter(([k]) => k.startsWith(`${kind}/`))
      .reduce((n, [, v]) => n + v, 0);

  /**
   * Every member publishes once to its room, an event whose data carries
   * its label as bytes; asserts that each member got every other member's
   * exactly once, the bytes as binary (markers from a control on each of
   * `liveNodes` prove nothing more is on its way). Returns the deliveries.
   */
  async function publishRound(liveNodes) {
    const tag = uniq("round");
    await Promise.all(members.map((s) => publishFrom(s, s.room, "chat", { tag, from: s.label, bytes: Buffer.from(s.label) })));
    await Promise.all(
      members.map((r) => {
        const expected = membersOf(r.room).filter((s) => s !== r);
        return r.inbox.until(
          (inbox) => inbox.of("chat").filter((p) => p?.tag === tag).length >= expected.length,
          20_000,
          () => `${r.label}: ${expected.length} chat messages (has ${JSON.stringify(countsFrom(r, "chat", tag))})`,
        );
      }),
    );
    await cluster.settle(
      controlsOn(liveNodes),
      ROOMS.map((room) => ({ room, receivers: membersOf(room) })),
      20_000,
    );
    let deliveries = 0;
    for (const r of members) {
      const others = membersOf(r.room).filter((s) => s !== r);
      assert.deepEqual(countsFrom(r, "chat", tag), onceEach(others), `${r.label} (${r.nodeName}): chat messages per sender`);
      for (const p of r.inbox.of("chat").filter((p) => p?.tag === tag)) {
        assert.deepEqual(receivedBytes(p.bytes, `${r.label}: bytes from ${p.from}`), [...Buffer.from(p.from)], `${r.label}: bytes from ${p.from}`);
        deliveries++;
      }
    }
    return deliveries;
  }

  before(
    cluster.wrap(async () => {
      assert.ok(
        existsSync(PYTHON),
        `${PYTHON} is missing: python3 -m venv tests/clients/.venv && tests/clients/.venv/bin/pip install -r tests/clients/requirements.txt (scripts/test does)`,
      );
      ({ lb, nodes } = await startTopology(runDir, {
        ROOMCAST_CLUSTER_STICKY: "0",
        // Two workers per node: three nodes share two cores with the clients.
        ROOMCAST__SERVER__WORKERS: "2",
        ROOMCAST__ENGINE__PING_INTERVAL_MS: String(PING_INTERVAL_MS),
        ROOMCAST__ENGINE__PING_TIMEOUT_MS: String(PING_TIMEOUT_MS),
      }));
      cluster.nodes.lb = lb;
    }),
  );
  after(() => cluster.close());

  it(
    "socket.io-client and python-socketio connect through the round-robin balancer, polling only and upgraded, 0 'Session ID unknown'",
    cluster.wrap(async () => {
      const started = Date.now();
      const specs = [
        ...ROOMS.flatMap((room, r) => [
          ...Array.from({ length: POLLING_PER_ROOM }, (_, i) => ({ label: `js-poll-${r}-${i}`, transport: "polling", room })),
          ...Array.from({ length: UPGRADE_PER_ROOM }, (_, i) => ({ label: `js-upgrade-${r}-${i}`, transport: "upgrade", room })),
        ]),
        ...Array.from({ length: CONTROLS }, (_, i) => ({ label: `control${i}`, transport: "polling" })),
      ];
      // Every client is tried, and every failure reported with what the
      // node answered (a node that does not hold the session: 400, "Session
      // ID unknown").
      const results = await Promise.allSettled(
        specs.map(async ({ label, transport, room }) => {
          const rooms = [`me:${label}`, ...(room ? [room] : [])];
          const s = await cluster.client(lb, label, { transport, rooms, reconnect: true, cookies: false });
          s.room = room;
          return s;
        }),
      );
      pyClients = [
        new PyClient(lb.url, "py-poll", "polling", ["me:py-poll", ROOMS[0]]),
        new PyClient(lb.url, "py-default", "default", ["me:py-default", ROOMS[1]]),
      ];
      pyClients[0].room = ROOMS[0];
      pyClients[1].room = ROOMS[1];
      for (const p of pyClients) {
        cluster.nodes[p.label] = { name: p.label, log: () => `--- ${p.label} (python-socketio) ---\n${p.stderr}${p.errors.join("\n")}`, kill: () => p.close() };
      }
      const pyResults = await Promise.allSettled(pyClients.map((p) => within(p.ready, 20_000, `${p.label} (python) ready`)));

      const failed = [
        ...results.map((r, i) => [r, specs[i].label]).filter(([r]) => r.status === "rejected"),
        ...pyResults.map((r, i) => [r, pyClients[i].label]).filter(([r]) => r.status === "rejected"),
      ];
      const errorsOf = (label) =>
        (cluster.sockets.find((s) => s.label === label) ?? pyClients.find((p) => p.label === label))?.transportErrors ?? [];
      const unknown = [...cluster.sockets, ...pyClients].filter((s) => s.transportErrors.some((e) => UNKNOWN.test(`${e.message} ${e.body}`) || / 400 /.test(e.message)));
      assert.deepEqual(
        failed.map(([r, label]) => {
          const errors = errorsOf(label);
          return `${label}: ${r.reason?.message?.split("\n")[0]}; ${errors.length} Engine.IO errors, the first: ${JSON.stringify(errors[0])}`;
        }),
        [],
        `every client connects through the round-robin balancer (${unknown.length} saw "Session ID unknown")`,
      );

      const sockets = results.map((r) => r.value);
      members = [...sockets.filter((s) => s.room), ...pyClients];
      controls = sockets.filter((s) => !s.room);
      await locate(cluster, nodes, everyone());
      connected = true;
      log(`${everyone().length} clients connected through ${lb.url} (no cookies) in ${Date.now() - started} ms: ${JSON.stringify(spread(everyone()))}`);

      for (const room of ROOMS) {
        const on = new Set(membersOf(room).map((s) => s.nodeName));
        assert.equal(on.size, 3, `room ${room} has members on ${[...on].join(", ")}`);
      }
      // Polling-only clients still poll; the default transports upgraded.
      for (const s of members) {
        const expected = s.transport === "polling" ? "polling" : "websocket";
        assert.equal(transportOf(s), expected, `${s.label}: transport`);
      }
    }),
  );

  it(
    "events with acks and binary reach every other member of the room exactly once, across the three nodes; a burst arrives in order",
    cluster.wrap(async () => {
      needConnected();
      const deliveries = await publishRound(NODE_NAMES);
      log(`round 1: ${members.length} publishes (${pyClients.length} from python-socketio), ${deliveries} deliveries with binary, each exactly once`);

      // One polling client emits a burst without waiting for the acks, a
      // few milliseconds apart: socket.io-client sends what is queued in
      // one POST at a time, so the burst goes out in several POSTs, each to
      // whichever node the balancer picks.
      const sender = members.find((s) => !s.py && s.transport === "polling" && s.room === ROOMS[0]);
      const tag = uniq("burst");
      const acks = [];
      for (let seq = 0; seq < BURST; seq++) {
        acks.push(publishFrom(sender, ROOMS[0], "seq", { tag, seq }));
        await sleep(3);
      }
      await Promise.all(acks);
      for (const r of membersOf(ROOMS[0]).filter((s) => s !== sender)) {
        await r.inbox.until((inbox) => inbox.of("seq").filter((p) => p?.tag === tag).length >= BURST, 10_000, `${r.label}: the burst`);
        assert.deepEqual(
          r.inbox.of("seq").filter((p) => p?.tag === tag).map((p) => p.seq),
          Array.from({ length: BURST }, (_, i) => i),
          `${r.label}: the burst of ${sender.label} in order`,
        );
      }
    }),
  );

  it(
    "each polling session's requests were balanced over several nodes and forwarded; upgrades reached other nodes; no 400 anywhere",
    cluster.wrap(async () => {
      needConnected();
      const requests = balancedRequests();
      const bySid = new Map();
      for (const r of requests.filter((r) => r.sid)) {
        if (!bySid.has(r.sid)) bySid.set(r.sid, []);
        bySid.get(r.sid).push(r);
      }
      const polling = everyone().filter((s) => s.transport === "polling");
      const servedBy = (s) => new Set((bySid.get(sessionIdOf(s)) ?? []).filter((r) => r.transport === "polling").map((r) => r.server));
      const notOwner = (s) => (bySid.get(sessionIdOf(s)) ?? []).filter((r) => r.server !== s.nodeName);
      const several = polling.filter((s) => servedBy(s).size >= 2);
      assert.ok(
        several.length >= polling.length / 2,
        `the requests of ${several.length} of ${polling.length} polling sessions were served by two nodes or more: ` +
          JSON.stringify(polling.map((s) => `${s.label}: ${[...servedBy(s)].join(",")}`)),
      );
      for (const name of NODE_NAMES) {
        const elsewhere = polling.filter((s) => s.nodeName === name).reduce((n, s) => n + notOwner(s).length, 0);
        assert.ok(elsewhere > 0, `requests of ${name}'s polling sessions reached the other nodes (${elsewhere})`);
      }
      const metrics = Object.fromEntries(await Promise.all(NODE_NAMES.map(async (n) => [n, await forwarded(n)])));
      for (const name of NODE_NAMES) {
        assert.ok(sumOf(metrics[name], "poll_get") > 0, `${name} forwarded polling GETs: ${JSON.stringify(metrics[name])}`);
        assert.ok(sumOf(metrics[name], "poll_post") > 0, `${name} forwarded polling POSTs: ${JSON.stringify(metrics[name])}`);
      }
      // HAProxy logs an upgraded connection when it ends, so the nodes
      // say where the upgrades went: with round robin, most reach another
      // node than their session's (all of them on the owner: 1 in 3^7).
      const upgrading = members.filter((s) => s.transport !== "polling");
      const relayed = NODE_NAMES.reduce((n, name) => n + sumOf(metrics[name], "upgrade"), 0);
      assert.ok(relayed > 0, `some of the ${upgrading.length} upgrades were relayed to their session's node: ${JSON.stringify(metrics)}`);

      const refused = requests.filter((r) => r.status !== "200" && r.status !== "101");
      assert.deepEqual(refused.map((r) => r.line), [], "Socket.IO requests not answered 200/101 (a 400: Session ID unknown)");
      assert.deepEqual(
        everyone().filter((s) => s.transportErrors.length).map((s) => `${s.label}: ${JSON.stringify(s.transportErrors)}`),
        [],
        "no Engine.IO error in any client",
      );
      assert.deepEqual(cluster.disconnected(), [], "no socket.io-client socket was disconnected");
      assert.deepEqual(pyClients.filter((p) => p.disconnects.length || p.errors.length).map((p) => `${p.label}: ${p.disconnects} ${p.errors}`), []);
      log(
        `HAProxy: ${requests.length} Socket.IO requests, none refused; ${several.length}/${polling.length} polling sessions served by several nodes; ` +
          `${relayed}/${upgrading.length} upgrades reached another node than the session's; forwarded: ${JSON.stringify(metrics)}`,
      );
    }),
  );

  it(
    "a node SIGKILLed: its sessions are unknown at once, its clients reconnect within the heartbeat bound and receive again",
    cluster.wrap(async () => {
      needConnected();
      const victim = "node2";
      const live = NODE_NAMES.filter((n) => n !== victim);
      const victims = everyone().filter((s) => s.nodeName === victim);
      const survivors = everyone().filter((s) => s.nodeName !== victim);
      assert.ok(victims.length > 0, `clients on ${victim}`);
      const pollingVictim = victims.find((s) => s.transport === "polling");
      assert.ok(pollingVictim, `a polling client on ${victim}: ${victims.map((s) => s.label)}`);
      const deadSession = sessionIdOf(pollingVictim);
      const killedAt = Date.now();
      await nodes[victim].stop("KILL");

      // A request of the dead node's session, to whichever node: unknown, at once.
      const asked = Date.now();
      const res = await fetch(`${lb.url}/socket.io/?EIO=4&transport=polling&sid=${deadSession}`, { signal: AbortSignal.timeout(10_000) });
      const answeredIn = Date.now() - asked;
      const body = await res.text();
      assert.equal(res.status, 400, `a request of ${victim}'s session ${deadSession}: ${body}`);
      assert.deepEqual(JSON.parse(body), { code: 1, message: "Session ID unknown" });
      assert.ok(answeredIn < UNKNOWN_AT_ONCE_MS, `answered in ${answeredIn} ms`);

      // Its clients, and any client of the others that had a request in
      // flight through it, are back within the heartbeat bound.
      const disturbed = () => everyone().filter((s) => s.nodeName === victim || s.disconnects.length);
      await within(Promise.all(victims.map((s) => s.resubscribedOnce)), HEARTBEAT_BOUND_MS, `the clients of ${victim} back within ${HEARTBEAT_BOUND_MS} ms`).catch(
        (err) => {
          const missing = victims.filter((s) => !s.resubscribed.length).map((s) => `${s.label} (${s.disconnects.join(", ")})`);
          throw new Error(`${err.message}; not back: ${missing.join(", ")}`);
        },
      );
      const hit = survivors.filter((s) => s.disconnects.length);
      await within(
        Promise.all(hit.map((s) => s.resubscribedOnce)),
        Math.max(0, killedAt + HEARTBEAT_BOUND_MS - Date.now()),
        "clients of the other nodes that lost a request through the killed node back",
      );
      const back = disturbed();
      const backAfter = back.map((s) => s.resubscribed[0] - killedAt);
      log(
        `${victims.length} clients of ${victim} (SIGKILL; ${victims.filter((s) => s.py).length} python-socketio) reconnected and subscribed again: ` +
          `median ${median(backAfter)} ms, all within ${Math.max(...backAfter)} ms (bound ${HEARTBEAT_BOUND_MS} ms); ` +
          `a request of one of its sessions was answered "Session ID unknown" in ${answeredIn} ms; ` +
          `${hit.length} of ${survivors.length} clients of the other nodes lost a request in flight through ${victim} and reconnected too` +
          (hit.length ? ` (${hit.map((s) => `${s.label}: ${s.disconnects.join(", ")}`).join("; ")})` : ""),
      );

      // A client of a live node that lost a request left its old session
      // there (nobody closed it), in the same private room as its new one,
      // until that session's heartbeat times out: locate once each client
      // is on exactly one node again.
      const settled = Date.now() + HEARTBEAT_BOUND_MS + 5000;
      for (;;) {
        try {
          await locate(cluster, nodes, back, live);
          break;
        } catch (err) {
          if (Date.now() > settled) throw err;
          await sleep(250);
        }
      }
      log(`they are now on ${JSON.stringify(spread(back))} (located after ${Date.now() - killedAt} ms)`);
      const deliveries = await publishRound(live);
      const receivedAfter = Math.max(
        ...victims.filter((s) => s.room).map((s) => s.inbox.events.find((e) => e.at > killedAt && e.event === "chat").at - killedAt),
      );
      log(`round 2 on two nodes: ${deliveries} deliveries, each exactly once; every client of ${victim} received again within ${receivedAfter} ms of the kill`);
    }),
  );
});
