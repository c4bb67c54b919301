// Connection state recovery across the nodes of a cluster in streams mode
// (redis.mode = "streams", recovery on), with socket.io-client 4.8, on one
// private Redis; Node.js nodes run socket.io 4.8 with
// @socket.io/redis-streams-adapter 0.3.1 and connectionStateRecovery:
// - a client whose roomcast node is SIGKILLed, or drained (SIGTERM), comes
//   back on another roomcast node: same id, `recovered`, its rooms, and
//   every event published meanwhile (by a client of another node, through
//   the HTTP API, binary included) exactly once, in order, before newer
//   ones;
// - a client of a Node.js node whose connection is lost comes back on a
//   roomcast node and recovers (the session Node.js stored, the offsets of
//   the shared stream);
// - a client of a roomcast node that is SIGKILLed comes back on a Node.js
//   node and recovers there (the session roomcast keeps refreshed in Redis,
//   read by Node.js's restoreSession);
// - a Node.js node shut down with SIGTERM (io.close(): its sockets end with
//   "server shutting down", which stores their sessions): its client
//   recovers on a roomcast node;
// - a client that received no event (no offset) recovers on a roomcast
//   node started after its own.
// (A Node.js node killed with SIGKILL stores no session: Node.js writes a
// session only when its socket ends, so its clients cannot recover
// anywhere; roomcast writes its sockets' sessions while they are
// connected, recovery.refresh_ms, which is what the SIGKILL cases show.)
//
// A client moves to another node the way it would behind a balancer: its
// manager's URL is pointed at the other node before it connects again
// (reconnection is manual, so the events "missed" are published, and
// acked as stored in the stream, while it is certainly away).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { io as ioClient } from "socket.io-client";
import { Cluster, STREAMS, ack, binaryBytes, within } from "./lib/cluster.mjs";

const OFFSET = /^\d+-\d+$/;
const RECOVERY = { ROOMCAST__RECOVERY__ENABLED: "true", ROOMCAST__RECOVERY__REFRESH_MS: "200" };

/** A socket.io-client socket on `node` that does not reconnect by itself. */
async function connect(node, transports = ["websocket"]) {
  const socket = ioClient(node.url, { forceNew: true, transports, reconnection: false });
  await within(new Promise((r, j) => {
    socket.once("connect", r);
    socket.once("connect_error", j);
  }), 5000, `a client of ${node.name} to connect`);
  return socket;
}

/** Every argument list `socket` receives for `event` (offset last). */
function inbox(socket, event) {
  const list = [];
  socket.on(event, (...args) => list.push(args));
  return list;
}

async function until(predicate, what, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Publishes through the protocol; asserts it is accepted (and, on roomcast, stored in the stream). */
async function publish(socket, room, event, data) {
  const reply = await ack(socket, "publish", { room, event, data });
  assert.equal(reply.ok, true, JSON.stringify(reply));
  if ("stored" in reply) assert.equal(reply.stored, true, "in the stream");
}

/** Points `socket` at `node` and connects it again (it keeps its pid and last offset). */
async function moveTo(socket, node) {
  socket.io.uri = node.url;
  socket.connect();
  await within(new Promise((r, j) => {
    socket.once("connect", r);
    socket.once("connect_error", j);
  }), 8000, `the client to connect to ${node.name}`);
}

describe("recovery across the nodes of a streams cluster (roomcast and Node.js)", { timeout: 120_000 }, () => {
  const cluster = new Cluster("recovery", { mode: STREAMS, env: RECOVERY });
  let R1, R2, R3, N1, N2;
  const sockets = [];
  const track = (s) => (sockets.push(s), s);

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [[R1, R2, R3], N1, N2] = await Promise.all([
        cluster.startRoomcast("R1", "R2", "R3"),
        cluster.startNodeServer("N1", { recovery: true }),
        cluster.startNodeServer("N2", { recovery: true }),
      ]);
    }),
  );
  after(async () => {
    for (const s of sockets) s.disconnect();
    await cluster.close();
  });

  /**
   * A subscriber on `from` in `room` that received one event, then lost
   * its node (`lose()`), while `publisher` published `n` more (the last
   * one binary); it comes back on `to`. Asserts the recovery.
   */
  async function scenario({ from, to, room, lose, publisherNode }) {
    const sub = track(await connect(from));
    const pub = track(await connect(publisherNode));
    assert.deepEqual(await ack(sub, "subscribe", { room }), { ok: true });
    const msgs = inbox(sub, "m");
    await publish(pub, room, "m", { n: 0 });
    await until(() => msgs.length === 1, "the first event");
    assert.match(msgs[0][1], OFFSET, "an offset of the stream");
    const id = sub.id;
    const gone = new Promise((r) => sub.once("disconnect", r));
    await lose(sub);
    await within(gone, 10_000, "the subscriber to lose its connection");
    for (let n = 1; n <= 4; n++) await publish(pub, room, "m", { n });
    await publish(pub, room, "m", { n: 5, bin: Buffer.from([7, 8, 9]) });
    const api = publisherNode.kind === "roomcast" ? await cluster.api(publisherNode, "POST", "/publish", { room, event: "m", data: { n: 6 } }) : null;
    const total = api ? 7 : 6;
    await moveTo(sub, to);
    assert.equal(sub.recovered, true, `recovered on ${to.name}`);
    assert.equal(sub.id, id, "the same socket id");
    await until(() => msgs.length === total, () => `the missed events on ${to.name} (got ${JSON.stringify(msgs.map((m) => m[0]?.n))})`);
    // Its room is its own on the new node, and newer events come after.
    await publish(pub, room, "m", { n: 100 });
    await until(() => msgs.length === total + 1, "the event after the recovery");
    const ns = msgs.map(([d]) => d.n);
    assert.deepEqual(ns, [...Array(total).keys(), 100], "each once, in order");
    assert.deepEqual([...binaryBytes(msgs[5][0].bin, "bin")], [7, 8, 9], "binary replayed as binary");
    for (const m of msgs) assert.match(m[m.length - 1], OFFSET);
    sub.disconnect();
    pub.disconnect();
  }

  it(
    "roomcast node SIGKILLed: its client recovers on another roomcast node",
    cluster.wrap(async () => {
      await scenario({
        from: R1,
        to: R2,
        room: "rec:kill",
        publisherNode: R3,
        // Its sessions were written while connected (refresh_ms = 200).
        lose: async () => {
          await new Promise((r) => setTimeout(r, 400));
          await R1.kill();
        },
      });
    }),
  );

  it(
    "roomcast node drained with SIGTERM: its client recovers on another roomcast node",
    cluster.wrap(async () => {
      await scenario({
        from: R2,
        to: R3,
        room: "rec:drain",
        publisherNode: N1,
        lose: async () => R2.proc.signal("SIGTERM"),
      });
    }),
  );

  it(
    "a client of a Node.js node that lost its connection recovers on a roomcast node",
    cluster.wrap(async () => {
      await scenario({
        from: N1,
        to: R3,
        room: "rec:from-node",
        publisherNode: R3,
        lose: async (sub) => sub.io.engine.transport.ws._socket.destroy(),
      });
    }),
  );

  it(
    "a client of a roomcast node SIGKILLed recovers on a Node.js node",
    cluster.wrap(async () => {
      const [R4] = await cluster.startRoomcast("R4");
      await scenario({
        from: R4,
        to: N1,
        room: "rec:to-node",
        publisherNode: N2,
        lose: async () => {
          await new Promise((r) => setTimeout(r, 400));
          await R4.kill();
        },
      });
    }),
  );

  it(
    "a client that received no event recovers on a roomcast node started after its own",
    cluster.wrap(async () => {
      const sub = track(await connect(R3));
      assert.deepEqual(await ack(sub, "subscribe", { room: "rec:quiet" }), { ok: true });
      const msgs = inbox(sub, "m");
      const [R5] = await cluster.startRoomcast("R5");
      const pub = track(await connect(R5));
      const id = sub.id;
      const gone = new Promise((r) => sub.once("disconnect", r));
      sub.io.engine.transport.ws._socket.destroy();
      await within(gone, 10_000, "the subscriber to lose its connection");
      await publish(pub, "rec:quiet", "m", { n: 1 });
      await publish(pub, "rec:quiet", "m", { n: 2 });
      await moveTo(sub, R5);
      assert.equal(sub.recovered, true, "recovered without an offset, on a node started later");
      assert.equal(sub.id, id);
      await until(() => msgs.length === 2, "the missed events");
      assert.deepEqual(msgs.map(([d]) => d.n), [1, 2]);
      sub.disconnect();
      pub.disconnect();
    }),
  );

  it(
    "a Node.js node shut down with SIGTERM: its client recovers on a roomcast node",
    cluster.wrap(async () => {
      await scenario({
        from: N2,
        to: R3,
        room: "rec:node-term",
        publisherNode: R3,
        lose: async () => N2.proc.signal("SIGTERM"),
      });
    }),
  );
});
