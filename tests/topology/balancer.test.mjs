// The local cluster topology (scripts/cluster: HAProxy with
// deploy/haproxy.cfg, three roomcast nodes, Redis, PostgreSQL), used only
// through the balancer's public port, by 200+ socket.io-client 4.8 clients:
// WebSocket-only, polling first then upgraded to WebSocket, and
// polling-only (the long-lived polling sessions that must stick), each
// keeping cookies as a browser does and reconnecting as an application
// would.
// - the clients are spread over the three nodes (which node holds a socket
//   is asked of each node's API: a publish to a room of that socket alone
//   counts its local recipients), and every room has members on all three;
// - every client publish and every HTTP API publish (to the nodes' admin
//   listeners in turn: the balancer publishes only the public port) reaches
//   every other member exactly once; nothing is lost, nobody is
//   disconnected, no polling request or upgrade ever gets "Session ID
//   unknown" (from the clients' Engine.IO errors and HAProxy's log);
// - one node SIGKILLed: its clients reconnect through the balancer to the
//   other two, subscribe again and receive every publish exactly once again;
//   the others never notice. The time this took is printed.
// - the audit log: a parse error provoked on each node lands as a row of the
//   one PostgreSQL table, three rows from three distinct nodes (read with
//   psql).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Cluster, API_KEY, countsFrom, onceEach, publish, uniq, within } from "../cluster/lib/cluster.mjs";
import { REPO_ROOT } from "../cluster/lib/procs.mjs";
import { NODE_NAMES, locate as locateOn, startTopology } from "../cluster/lib/topology.mjs";

const ROOMS = ["topo:a", "topo:b", "topo:c", "topo:d"];
/** Members per room; ROOMS.length * MEMBERS clients in rooms. */
const MEMBERS = 50;
/** Clients in no room: per node, one of them publishes the settle markers. */
const CONTROLS = 12;
/** Transports by client index: 2/5 WebSocket, 2/5 upgrade, 1/5 polling. */
const TRANSPORTS = ["websocket", "websocket", "upgrade", "upgrade", "polling"];
/** Clients connecting at once (the debug build on two cores). */
const BATCH = 25;
/** Generous bound for the clients of a killed node to be back (not a performance target). */
const RECOVERY_BOUND_MS = 30_000;

const runDir = process.env.TOPOLOGY_RUN_DIR || join(REPO_ROOT, "target", "tmp", `topology-${process.pid}`);

/** `fn` over `items`, BATCH at a time. */
async function inBatches(items, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += BATCH) out.push(...(await Promise.all(items.slice(i, i + BATCH).map(fn))));
  return out;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sessionIdUnknown = (s) => s.transportErrors.filter((e) => /Session ID unknown/.test(`${e.message} ${e.body}`));

describe("the local topology behind HAProxy", { timeout: 240_000 }, () => {
  const cluster = new Cluster("scripts/cluster topology");
  let lb, nodes;
  let members = []; // in ROOMS
  let controls = []; // in no room
  const log = (line) => console.log(`# ${line}`);

  /** A request to the API of `node` (or the balancer), with the test key. */
  const api = (node, method, path, body) => cluster.api(node, method, path, body);

  /** Which node holds each socket, asking `candidates` (names). */
  const locate = (sockets, candidates = NODE_NAMES) => locateOn(cluster, nodes, sockets, candidates, BATCH);

  const spread = (sockets) =>
    Object.fromEntries(NODE_NAMES.map((n) => [n, sockets.filter((s) => s.nodeName === n).length]));
  const roomOf = (s) => s.room;
  const membersOf = (room) => members.filter((s) => roomOf(s) === room);
  /** One control per node in `names`. */
  const controlsOn = (names) =>
    names.map((n) => {
      const c = controls.find((s) => s.nodeName === n && s.connected);
      assert.ok(c, `a control client on ${n} (controls: ${JSON.stringify(spread(controls))})`);
      return c;
    });

  /**
   * Every member publishes once to its room, then the API publishes once to
   * every room, through the admin listeners of `liveNodes` in turn; asserts that each member got every
   * other member's message and the API's, exactly once (markers from a
   * client on each of `liveNodes` prove nothing more is on its way).
   * Returns the number of deliveries checked.
   */
  async function publishRound(liveNodes) {
    const tag = uniq("round");
    await inBatches(members, (s) => publish(s, roomOf(s), "chat", { tag, from: s.label }, 10_000));
    for (const [i, room] of ROOMS.entries()) {
      const via = nodes[liveNodes[i % liveNodes.length]];
      const res = await api(via, "POST", "/publish", { room, event: "news", data: { tag, from: `api:${room}` } });
      assert.equal(res.status, 202, `API publish to ${room} through ${via.name}: ${res.text}`);
    }
    await Promise.all(
      members.map((r) => {
        const expected = membersOf(roomOf(r)).filter((s) => s !== r);
        return r.inbox.until(
          (inbox) =>
            inbox.of("chat").filter((p) => p?.tag === tag).length >= expected.length &&
            inbox.of("news").some((p) => p?.tag === tag),
          20_000,
          () => `${r.label}: ${expected.length} chat messages and the API's news (has ${JSON.stringify(countsFrom(r, "chat", tag))})`,
        );
      }),
    );
    await cluster.settle(
      controlsOn(liveNodes),
      ROOMS.map((room) => ({ room, receivers: membersOf(room) })),
      20_000,
    );
    for (const r of members) {
      const others = membersOf(roomOf(r)).filter((s) => s !== r);
      assert.deepEqual(countsFrom(r, "chat", tag), onceEach(others), `${r.label} (${r.nodeName}): chat messages per sender`);
      assert.deepEqual(countsFrom(r, "news", tag), { [`api:${roomOf(r)}`]: 1 }, `${r.label} (${r.nodeName}): API publishes`);
    }
    return members.reduce((n, r) => n + membersOf(roomOf(r)).length, 0);
  }

  before(
    cluster.wrap(async () => {
      // Two workers per node: three nodes share two cores with the clients.
      ({ lb, nodes } = await startTopology(runDir, { ROOMCAST__SERVER__WORKERS: "2" }));
      cluster.nodes.lb = lb;
      const started = Date.now();
      const specs = [
        ...Array.from({ length: ROOMS.length * MEMBERS }, (_, i) => ({
          label: `m${i}-${TRANSPORTS[i % TRANSPORTS.length]}`,
          transport: TRANSPORTS[i % TRANSPORTS.length],
          room: ROOMS[i % ROOMS.length],
        })),
        ...Array.from({ length: CONTROLS }, (_, i) => ({ label: `control${i}`, transport: TRANSPORTS[i % TRANSPORTS.length] })),
      ];
      const sockets = await inBatches(specs, async ({ label, transport, room }) => {
        const rooms = [`me:${label}`, ...(room ? [room] : [])];
        const s = await cluster.client(lb, label, { transport, rooms, reconnect: true, cookies: true });
        s.room = room;
        return s;
      });
      members = sockets.filter((s) => s.room);
      controls = sockets.filter((s) => !s.room);
      await locate(sockets);
      log(`${sockets.length} clients connected through ${lb.url} in ${Date.now() - started} ms: ${JSON.stringify(spread(sockets))}`);
    }),
  );
  after(() => cluster.close());

  it(
    "spreads the clients over the three nodes, every room on all three",
    cluster.wrap(async () => {
      const counts = spread([...members, ...controls]);
      for (const name of NODE_NAMES) {
        assert.ok(counts[name] >= 30, `${name} holds ${counts[name]} of ${members.length + controls.length} clients: ${JSON.stringify(counts)}`);
      }
      for (const room of ROOMS) {
        const on = new Set(membersOf(room).map((s) => s.nodeName));
        assert.equal(on.size, 3, `room ${room} has members on ${[...on].join(", ")}`);
      }
      for (const transport of new Set(TRANSPORTS)) {
        const on = new Set(members.filter((s) => s.transport === transport).map((s) => s.nodeName));
        assert.equal(on.size, 3, `${transport} clients on ${[...on].join(", ")}`);
      }
      // The upgraded ones did upgrade; the polling ones still poll.
      for (const s of members) {
        const expected = s.transport === "polling" ? "polling" : "websocket";
        assert.equal(s.io.engine.transport.name, expected, `${s.label}: transport`);
      }
    }),
  );

  it(
    "delivers every client and API publish to every other member exactly once, no 'Session ID unknown'",
    cluster.wrap(async () => {
      const deliveries = await publishRound(NODE_NAMES);
      log(`round 1: ${members.length} client publishes + ${ROOMS.length} API publishes, ${deliveries} deliveries, each exactly once`);
      assert.deepEqual(cluster.disconnected(), [], "nobody was disconnected");
      const errors = [...members, ...controls].filter((s) => s.transportErrors.length);
      assert.deepEqual(
        errors.map((s) => `${s.label}: ${JSON.stringify(s.transportErrors)}`),
        [],
        "no Engine.IO errors (a polling request or an upgrade of a session sent to another node gets 'Session ID unknown')",
      );
      // What the balancer saw: every Socket.IO request answered, none with 400.
      // httplog: "... Tq/Tw/Tc/Tr/Ta STATUS BYTES ... "METHOD URI ...""
      const requests = lb.accessLog().filter((l) => / "(GET|POST) \/socket\.io\//.test(l));
      const status = (l) => / -?\d+\/-?\d+\/-?\d+\/-?\d+\/\+?\d+ (\d{3}) /.exec(l)?.[1];
      assert.ok(requests.every(status), `a status in every line: ${requests.find((l) => !status(l))}`);
      const refused = requests.filter((l) => status(l) !== "200" && status(l) !== "101");
      assert.ok(requests.length >= members.length, `HAProxy logged ${requests.length} Socket.IO requests`);
      assert.deepEqual(refused, [], "Socket.IO requests answered 400 by a node (Session ID unknown)");
      const polls = requests.filter((l) => /sid=/.test(l) && /transport=polling/.test(l)).length;
      log(`HAProxy: ${requests.length} Socket.IO requests, ${polls} of them polling requests of a session, none refused`);
    }),
  );

  it(
    "the audit rows of all three nodes land in the one PostgreSQL table",
    cluster.wrap(async () => {
      const marker = uniq("topo-audit");
      // Straight to each node: a polling session whose POST body holds an
      // Engine.IO packet of unknown type is a parse error, audited.
      for (const name of NODE_NAMES) {
        const base = `${nodes[name].url}/socket.io/?EIO=4&transport=polling`;
        const open = await (await fetch(base)).text();
        const sid = JSON.parse(open.slice(1)).sid;
        const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body: `9${marker}-${name}` });
        assert.equal(res.status, 400, `${name}: the bad packet is refused`);
      }
      const query = `select node, excerpt from audit_events where kind = 'parse_error' and excerpt like '%${marker}%'`;
      const rows = () =>
        execFileSync("psql", [lb.postgres, "-At", "-F", "|", "-c", query], { encoding: "utf8" })
          .split("\n")
          .filter(Boolean)
          .map((l) => l.split("|"));
      let found = [];
      const deadline = Date.now() + 10_000;
      while ((found = rows()).length < NODE_NAMES.length && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(found.length, NODE_NAMES.length, `rows: ${JSON.stringify(found)}`);
      assert.equal(new Set(found.map(([node]) => node)).size, NODE_NAMES.length, "three distinct nodes");
      for (const name of NODE_NAMES) {
        assert.equal(found.filter(([, excerpt]) => excerpt.includes(`${marker}-${name}`)).length, 1, `${name}'s row`);
      }
      log(`audit: ${found.length} rows from ${NODE_NAMES.length} nodes in one PostgreSQL table`);
    }),
  );

  it(
    "a node SIGKILLed: its clients reconnect through the balancer to the others and receive again",
    cluster.wrap(async () => {
      const victim = "node2";
      const live = NODE_NAMES.filter((n) => n !== victim);
      const victims = [...members, ...controls].filter((s) => s.nodeName === victim);
      const survivors = [...members, ...controls].filter((s) => s.nodeName !== victim);
      assert.ok(victims.length > 0, `clients on ${victim}`);
      const killedAt = Date.now();
      process.kill(nodes[victim].pid(), "SIGKILL");

      await within(
        Promise.all(victims.map((s) => s.resubscribedOnce)),
        RECOVERY_BOUND_MS,
        "the killed node's clients reconnecting",
      ).catch((err) => {
        const missing = victims.filter((s) => !s.resubscribed.length).map((s) => `${s.label} (${s.disconnects.join(", ")})`);
        throw new Error(`${err.message}; not back: ${missing.join(", ")}`);
      });
      const backAfter = victims.map((s) => s.resubscribed[0] - killedAt);
      log(
        `${victims.length} clients of ${victim} (SIGKILL) reconnected through the balancer and subscribed again: ` +
          `median ${median(backAfter)} ms, all within ${Math.max(...backAfter)} ms after the kill`,
      );

      await locate(victims, live);
      log(`they are now on ${JSON.stringify(spread(victims))}`);
      assert.deepEqual(
        survivors.filter((s) => s.disconnects.length).map((s) => `${s.label}: ${s.disconnects.join(", ")}`),
        [],
        "clients of the other nodes were not disconnected",
      );
      assert.deepEqual(
        survivors.filter((s) => s.transportErrors.length).map((s) => `${s.label}: ${JSON.stringify(s.transportErrors)}`),
        [],
        "clients of the other nodes saw no Engine.IO error",
      );
      for (const s of victims) assert.equal(s.resubscribed.length, 1, `${s.label} reconnected once: ${s.disconnects.join(", ")}`);

      const deliveries = await publishRound(live);
      const receivedAfter = Math.max(
        ...victims.filter((s) => s.room).map((s) => s.inbox.events.find((e) => e.at > killedAt && e.event === "news").at - killedAt),
      );
      const unknown = victims.filter((s) => sessionIdUnknown(s).length).length;
      log(
        `round 2 on two nodes: ${deliveries} deliveries, each exactly once; every client of ${victim} received again ` +
          `within ${receivedAfter} ms of the kill (${unknown} of its polling sessions were answered "Session ID unknown" ` +
          `by the node their requests were sent to after the kill, and reconnected)`,
      );
    }),
  );
});
