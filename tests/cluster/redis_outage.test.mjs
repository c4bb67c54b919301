// Two roomcast nodes on a private Redis that fails under them, with
// socket.io-client 4.8 clients (WebSocket and long-polling) connected to
// both. The steps run in order on the same cluster:
// 1. Redis SIGKILLed: each node keeps serving its local clients (publishes
//    are acknowledged and reach the local members), new clients connect,
//    nobody is disconnected.
// 2. redis-server restarted on the same port: cross-node delivery resumes,
//    both ways, without restarting any node.
// 3. Redis paused with SIGSTOP (longer than the nodes' 2 s Redis command
//    timeout): local publishes are still acknowledged promptly and delivered,
//    connections stay responsive (heartbeats every second), new clients
//    connect.
// 4. SIGCONT: cross-node delivery resumes, exactly once again.
// Heartbeats run every 1 s with a 2 s timeout (roomcast-cluster.toml), so a
// node that stalled on Redis would show up as "ping timeout" disconnects.
//
// The same steps run in streams mode (redis.mode = "streams"), where a
// node's own broadcasts reach its members when they come back from the
// stream: with Redis away they come straight back (without an offset), so
// local delivery goes on there too. A broadcast whose XADD was in flight
// when Redis stopped answering waits for the command timeout before it
// comes back: that mode runs with a 1 s command timeout, within the 2 s
// these steps give a local delivery. A publish ack waits for the stream's
// answer there (it says whether the broadcast was stored): while Redis is
// away it comes within the command timeout, with `stored: false`.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, STREAMS, ack, countsFrom, onceEach, publish, sleep, uniq } from "./lib/cluster.mjs";

const ROOM = "ops:room";
/** Longest a local publish ack may take while Redis is away (streams mode: plus its 1 s command timeout). */
const PROMPT_MS = 1000;
const STREAMS_PROMPT_MS = 2000;
/** Longest cross-node delivery may take to come back once Redis is back. */
const RESUME_MS = 10000;

for (const mode of ["classic", STREAMS]) describe(`Redis outage under two roomcast nodes (${mode})`, { timeout: 60_000 }, () => {
  const env = mode === STREAMS ? { ROOMCAST__REDIS__COMMAND_TIMEOUT_MS: "1000" } : {};
  const cluster = new Cluster(`redis outage (${mode})`, { mode, env });
  let A, B;
  let A1, A2, B1, B2;
  let controls = [];
  /** Every member of ROOM (newcomers join it). */
  const inRoom = [];

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [A, B] = await cluster.startRoomcast("A", "B");
      [A1, A2, B1, B2] = await Promise.all([
        cluster.client(A, "A1-ws", { rooms: [ROOM] }),
        cluster.client(A, "A2-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(B, "B1-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(B, "B2-ws", { rooms: [ROOM] }),
      ]);
      inRoom.push(A1, A2, B1, B2);
      controls = await Promise.all([A, B].map((n) => cluster.client(n, `${n.name}-control`)));
      // Baseline: the cluster works before anything fails.
      await crossNodeExactlyOnce("baseline");
    }),
  );
  after(() => cluster.close());

  /** A1 and B2 publish; every other member gets each exactly once. */
  async function crossNodeExactlyOnce(what) {
    const members = [A1, A2, B1, B2];
    const tag = uniq(what);
    for (const from of [A1, B2]) await publish(from, ROOM, "chat", { tag, from: from.label });
    await Promise.all(
      members.map((r) => {
        const expected = [A1, B2].filter((x) => x !== r);
        return r.inbox.until(
          (inbox) => expected.every((x) => inbox.of("chat").some((p) => p?.tag === tag && p.from === x.label)),
          5000,
          `${what}: ${r.label} gets chat from ${expected.map((x) => x.label).join(", ")}`,
        );
      }),
    );
    await cluster.settle(controls, [{ room: ROOM, receivers: members }]);
    for (const r of members) {
      assert.deepEqual(countsFrom(r, "chat", tag), onceEach([A1, B2].filter((x) => x !== r)), `${what}: ${r.label} (on ${r.node.name})`);
    }
  }

  /**
   * `from` publishes to `to`'s node and `to` receives it (both on one
   * node); asserts the ack is prompt. Resolves with the ack's latency.
   */
  async function localRoundTrip(from, to, what) {
    const tag = uniq(what);
    const t0 = performance.now();
    const reply = await publish(from, ROOM, "local", { tag, from: from.label }, 3000);
    const ms = performance.now() - t0;
    const limit = mode === STREAMS ? STREAMS_PROMPT_MS : PROMPT_MS;
    assert.ok(ms < limit, `${what}: ${from.label}'s publish ack took ${ms.toFixed(0)} ms (limit ${limit} ms)`);
    if (mode === STREAMS) assert.equal(reply.stored, false, `${what}: not in the stream, and said so`);
    const local = inRoom.filter((m) => m !== from && m.node === from.node).length;
    assert.equal(reply.recipients, local, `${what}: ${from.label}'s recipients (the other members on ${from.node.name})`);
    await to.inbox.until((inbox) => inbox.of("local").some((p) => p?.tag === tag), 2000, `${what}: ${to.label} gets ${from.label}'s local publish`);
    return ms;
  }

  /**
   * Publishes a marker from `from` every 250 ms until `to` (on another node)
   * receives one, within RESUME_MS. Resolves with the time it took.
   */
  async function waitForCrossNode(from, to, what) {
    const tag = uniq(what);
    const t0 = performance.now();
    let i = 0;
    while (!to.inbox.of("probe").some((p) => p?.tag === tag)) {
      if (performance.now() - t0 > RESUME_MS) {
        assert.fail(`${what}: ${from.label} (on ${from.node.name}) → ${to.label} (on ${to.node.name}) did not resume within ${RESUME_MS} ms (${i} probes sent)`);
      }
      await publish(from, ROOM, "probe", { tag, i: i++ });
      await to.inbox.until((inbox) => inbox.of("probe").some((p) => p?.tag === tag), 250, "probe").catch(() => {});
    }
    return performance.now() - t0;
  }

  /**
   * Publishes on both nodes, round after round, for at least `ms` and until
   * `alsoUntil` settles, checking that every ack is prompt and that the
   * local members get each publish.
   */
  async function serveLocally(what, ms, alsoUntil = Promise.resolve()) {
    let settled = false;
    const watched = alsoUntil.finally(() => (settled = true));
    watched.catch(() => {});
    const until = performance.now() + ms;
    let worst = 0;
    let rounds = 0;
    do {
      const [a, b] = await Promise.all([localRoundTrip(A1, A2, `${what} on A`), localRoundTrip(B1, B2, `${what} on B`)]);
      worst = Math.max(worst, a, b);
      rounds++;
      await sleep(200);
    } while (performance.now() < until || !settled);
    await watched;
    return { worst, rounds };
  }

  /**
   * A client that connects while Redis is away can subscribe, see the
   * room's members and publish locally. It stays in the room.
   */
  async function newcomerWorks(node, other, what) {
    const newcomer = await cluster.client(node, `${node.name}-newcomer-${what}`, { transport: "polling", rooms: [ROOM] });
    inRoom.push(newcomer);
    const presence = await ack(newcomer, "presence", { room: ROOM });
    const local = inRoom.filter((m) => m.node === node).map((m) => m.id).sort();
    assert.deepEqual(
      { ok: presence.ok, count: presence.count, ids: presence.members?.map((m) => m.id).sort() },
      { ok: true, count: local.length, ids: local },
      `${what}: presence on ${node.name}`,
    );
    await localRoundTrip(newcomer, other, `${what}: newcomer on ${node.name}`);
  }

  it(
    "Redis killed: both nodes keep serving their local clients and nobody is disconnected",
    cluster.wrap(async (t) => {
      const fromA = A.proc.lines.length;
      const fromB = B.proc.lines.length;
      await cluster.redis.kill();
      // Positive evidence that each node noticed the loss.
      await Promise.all([
        A.proc.waitForLine(/redis adapter lost its subscription/, { from: fromA, timeoutMs: 5000 }),
        B.proc.waitForLine(/redis adapter lost its subscription/, { from: fromB, timeoutMs: 5000 }),
      ]);
      // A few heartbeats long (ping every 1 s).
      const { worst, rounds } = await serveLocally("Redis down", 2500);
      await newcomerWorks(A, A1, "down");
      t.diagnostic(`Redis down: ${rounds} rounds of local publishes on both nodes, slowest ack ${worst.toFixed(1)} ms`);
      assert.deepEqual(cluster.disconnected(), [], "disconnects while Redis was down");
    }),
  );

  it(
    "redis-server restarted on the same port: cross-node delivery resumes without restarting any node",
    cluster.wrap(async (t) => {
      await cluster.redis.start();
      const [ab, ba] = await Promise.all([waitForCrossNode(A1, B1, "resume A→B"), waitForCrossNode(B2, A2, "resume B→A")]);
      t.diagnostic(`cross-node delivery back after ${ab.toFixed(0)} ms (A→B) and ${ba.toFixed(0)} ms (B→A)`);
      await crossNodeExactlyOnce("after restart");
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );

  it(
    "Redis paused (SIGSTOP): local publishes are acknowledged promptly and connections stay responsive",
    cluster.wrap(async (t) => {
      const fromA = A.proc.lines.length;
      const fromB = B.proc.lines.length;
      cluster.redis.signal("SIGSTOP");
      try {
        // Until both nodes have found the hung Redis out (a subscription
        // ping times out after the 2 s command timeout, so within ~4 s):
        // meanwhile their publishes to Redis time out too.
        const noticed = Promise.all([
          A.proc.waitForLine(/redis adapter lost its subscription/, { from: fromA, timeoutMs: 8000 }),
          B.proc.waitForLine(/redis adapter lost its subscription/, { from: fromB, timeoutMs: 8000 }),
        ]);
        const { worst, rounds } = await serveLocally("Redis paused", 1000, noticed);
        await newcomerWorks(B, B2, "paused");
        t.diagnostic(`Redis paused: ${rounds} rounds of local publishes on both nodes, slowest ack ${worst.toFixed(1)} ms`);
        assert.deepEqual(cluster.disconnected(), [], "disconnects while Redis was paused");
      } finally {
        cluster.redis.signal("SIGCONT");
      }
    }),
  );

  it(
    "after SIGCONT cross-node delivery resumes, exactly once",
    cluster.wrap(async (t) => {
      const [ab, ba] = await Promise.all([waitForCrossNode(A1, B1, "continue A→B"), waitForCrossNode(B2, A2, "continue B→A")]);
      t.diagnostic(`cross-node delivery back after ${ab.toFixed(0)} ms (A→B) and ${ba.toFixed(0)} ms (B→A)`);
      await crossNodeExactlyOnce("after SIGCONT");
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );
});
