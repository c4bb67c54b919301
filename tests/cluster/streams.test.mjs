// A mixed cluster in streams mode on one private Redis: a Node.js socket.io
// 4.8 server with the official @socket.io/redis-streams-adapter 0.3.1
// (lib/node-server.mjs --streams) and two roomcast nodes with
// redis.mode = "streams", socket.io-client 4.8 clients on all three:
// - publishes cross both ways exactly once: a room (with the publisher
//   excepted), a room with `except`, the whole namespace, binary data;
// - many publishes of one publisher arrive in the order published, both
//   ways;
// - two roomcast publishers at once: every receiver, on the Node server
//   and on both roomcast nodes, sees the same interleaving (the stream's
//   order, which roomcast nodes deliver their own broadcasts in too);
// - fetchSockets on Node lists roomcast's members, roomcast's presence
//   lists Node's, neither partial nor waiting for a timeout;
// - serverCount on Node counts the three servers (PUBSUB NUMSUB);
// - emitWithAck and serverSideEmitWithAck from Node complete (roomcast
//   answers over pub/sub);
// - socketsJoin, socketsLeave and disconnectSockets from Node act on a
//   roomcast socket, and roomcast's HTTP API join, leave and disconnect
//   act on a Node socket (all through the stream, as Node does);
// - nobody else was disconnected.
//
// Absence is proven with markers, as elsewhere (lib/cluster.mjs): a stray
// copy would have come through the same stream before them.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, STREAMS, ack, binaryBytes, countsFrom, onceEach, publish, uniq, within } from "./lib/cluster.mjs";

const ROOM = "st:room";

describe("streams mode: Node socket.io + @socket.io/redis-streams-adapter and two roomcast nodes", { timeout: 90_000 }, () => {
  const cluster = new Cluster("streams", { mode: STREAMS });
  let N, R1, R2;
  let members = [];
  let outsider;
  let controls = [];
  const s = {};

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [N, [R1, R2]] = await Promise.all([cluster.startNodeServer("N"), cluster.startRoomcast("R1", "R2")]);
      members = await Promise.all([
        cluster.client(N, "N-ws", { rooms: [ROOM] }),
        cluster.client(N, "N-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(R1, "R1-ws", { rooms: [ROOM] }),
        cluster.client(R1, "R1-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(R2, "R2-ws", { rooms: [ROOM] }),
      ]);
      for (const m of members) s[m.label] = m;
      outsider = await cluster.client(R2, "R2-outsider", { rooms: ["st:elsewhere"] });
      controls = await Promise.all([N, R1, R2].map((n) => cluster.client(n, `${n.name}-control`)));
    }),
  );
  after(() => cluster.close());

  const settle = () =>
    cluster.settle(controls, [
      { room: ROOM, receivers: members },
      { room: "st:elsewhere", receivers: [outsider] },
    ]);

  async function publishAndCheck(from, expectedRecipients) {
    const tag = uniq("st");
    const reply = await publish(from, ROOM, "chat", { tag, from: from.label });
    assert.equal(reply.recipients, expectedRecipients, `${from.label}: recipients on its own server`);
    const receivers = members.filter((m) => m !== from);
    await Promise.all(
      receivers.map((r) => r.inbox.until((inbox) => inbox.of("chat").some((p) => p?.tag === tag), 5000, `${r.label}: chat from ${from.label}`)),
    );
    await settle();
    for (const r of receivers) {
      assert.deepEqual(countsFrom(r, "chat", tag), onceEach([from]), `${r.label} (on ${r.node.name}): chat from ${from.label}`);
    }
    assert.deepEqual(countsFrom(from, "chat", tag), {}, `${from.label} does not get its own publish`);
    assert.deepEqual(countsFrom(outsider, "chat", tag), {}, "the outsider is not in the room");
  }

  it(
    "a room publish crosses both ways exactly once",
    cluster.wrap(async () => {
      await publishAndCheck(s["N-ws"], 1);
      await publishAndCheck(s["N-poll"], 1);
      await publishAndCheck(s["R1-ws"], 1);
      await publishAndCheck(s["R2-ws"], 0);
    }),
  );

  it(
    "except and the whole namespace: from Node's io.to().except() and io.emit(), from roomcast's HTTP API with except",
    cluster.wrap(async () => {
      const tag = uniq("except");
      const skipped = [s["N-poll"], s["R1-ws"]];
      let reply = await ack(controls[0], "emit-to", { to: ROOM, except: skipped.map((x) => x.id), event: "ex", data: { tag, from: "N" } });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      const res = await cluster.api(R2, "POST", "/publish", { room: ROOM, except: [s["N-ws"].id, s["R2-ws"].id], event: "ex", data: { tag, from: "R2" } });
      assert.equal(res.status, 202, res.text);
      const all = uniq("all");
      reply = await ack(controls[0], "emit-to", { event: "everyone", data: { tag: all, from: "N" } });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      const everyone = [...members, outsider, ...controls];
      await Promise.all(everyone.map((r) => r.inbox.until((inbox) => inbox.of("everyone").some((p) => p?.tag === all), 5000, `${r.label}: everyone`)));
      await settle();
      for (const r of members) {
        const want = {};
        if (!skipped.includes(r)) want.N = 1;
        if (![s["N-ws"], s["R2-ws"]].includes(r)) want.R2 = 1;
        assert.deepEqual(countsFrom(r, "ex", tag), want, `${r.label}: except`);
      }
      for (const r of everyone) assert.deepEqual(countsFrom(r, "everyone", all), { N: 1 }, `${r.label}: the whole namespace`);
      assert.deepEqual(countsFrom(outsider, "ex", tag), {}, "the outsider is not in the room");
    }),
  );

  it(
    "binary data crosses both ways as binary",
    cluster.wrap(async () => {
      const tag = uniq("bin");
      const fromNode = s["N-ws"];
      const fromRoomcast = s["R2-ws"];
      const bytesN = Buffer.from([0, 255, 1, 254]);
      const bytesR = Buffer.alloc(1500);
      for (let i = 0; i < bytesR.length; i++) bytesR[i] = (i * 7) % 256;
      await publish(fromNode, ROOM, "blob", { tag, from: fromNode.label, bin: bytesN, nested: [{ b: new Uint8Array([5, 6]) }] });
      await publish(fromRoomcast, ROOM, "blob", { tag, from: fromRoomcast.label, bin: bytesR, nested: [{ b: new Uint8Array([7]) }] });
      for (const r of members) {
        const senders = [fromNode, fromRoomcast].filter((x) => x !== r);
        await r.inbox.until((inbox) => senders.every((x) => inbox.of("blob").some((p) => p?.tag === tag && p.from === x.label)), 5000, `${r.label}: blobs`);
      }
      await settle();
      for (const r of members) {
        const senders = [fromNode, fromRoomcast].filter((x) => x !== r);
        assert.deepEqual(countsFrom(r, "blob", tag), onceEach(senders), `${r.label}: blob count per sender`);
        for (const p of r.inbox.of("blob").filter((x) => x?.tag === tag)) {
          const [bin, nested] = p.from === fromNode.label ? [bytesN, [5, 6]] : [bytesR, [7]];
          assert.deepEqual(binaryBytes(p.bin, `${r.label}: bin from ${p.from}`), [...bin]);
          assert.deepEqual(binaryBytes(p.nested[0].b, `${r.label}: nested from ${p.from}`), nested);
        }
      }
    }),
  );

  /** `from` publishes `n` messages back to back; every other member gets them in order. */
  async function inOrder(from, n) {
    const tag = uniq("order");
    await Promise.all(Array.from({ length: n }, (_, i) => publish(from, ROOM, "seq", { tag, i }, 10_000)));
    const receivers = members.filter((m) => m !== from);
    await Promise.all(
      receivers.map((r) => r.inbox.until((inbox) => inbox.of("seq").filter((p) => p?.tag === tag).length >= n, 10_000, `${r.label}: ${n} from ${from.label}`)),
    );
    for (const r of receivers) {
      const got = r.inbox.of("seq").filter((p) => p?.tag === tag).map((p) => p.i);
      assert.deepEqual(got, Array.from({ length: n }, (_, i) => i), `${r.label} (on ${r.node.name}): order of ${from.label}'s publishes`);
    }
  }

  it(
    "many publishes of one publisher arrive in order, both ways",
    cluster.wrap(async () => {
      await inOrder(s["N-ws"], 200);
      await inOrder(s["R1-ws"], 200);
    }),
  );

  it(
    "two roomcast publishers at once: every receiver sees the stream's one order",
    cluster.wrap(async () => {
      const tag = uniq("inter");
      const [a, b] = [s["R1-ws"], s["R2-ws"]];
      const n = 100;
      await Promise.all([a, b].flatMap((from) => Array.from({ length: n }, (_, i) => publish(from, ROOM, "inter", { tag, from: from.label, i }, 10_000))));
      const receivers = members.filter((m) => m !== a && m !== b);
      const seq = (r) => r.inbox.of("inter").filter((p) => p?.tag === tag).map((p) => `${p.from}:${p.i}`);
      await Promise.all(receivers.map((r) => r.inbox.until(() => seq(r).length >= 2 * n, 10_000, `${r.label}: ${2 * n} publishes`)));
      const first = seq(receivers[0]);
      for (const r of receivers) assert.deepEqual(seq(r), first, `${r.label} (on ${r.node.name}) sees ${receivers[0].label}'s order`);
      // And each publisher's own order within it.
      for (const from of [a, b]) {
        const own = first.filter((x) => x.startsWith(`${from.label}:`)).map((x) => Number(x.split(":")[1]));
        assert.deepEqual(own, Array.from({ length: n }, (_, i) => i), `${from.label}'s order`);
      }
    }),
  );

  it(
    "fetchSockets on Node and roomcast's presence list each other's members, complete",
    cluster.wrap(async () => {
      let reply = await ack(s["N-ws"], "presence", { room: ROOM }, 4000);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.deepEqual(reply.members.map((m) => m.id).sort(), members.map((m) => m.id).sort(), JSON.stringify(reply));
      assert.ok(reply.ms < 1000, `took ${reply.ms} ms`);
      reply = await ack(s["R1-ws"], "presence", { room: ROOM }, 4000);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.equal(reply.partial, false, JSON.stringify(reply));
      assert.equal(reply.count, members.length, JSON.stringify(reply));
      assert.ok(reply.members.some((m) => m.id === s["N-poll"].id), JSON.stringify(reply));
    }),
  );

  it(
    "serverCount on Node counts the three servers",
    cluster.wrap(async () => {
      const reply = await ack(s["N-ws"], "server-count", {}, 4000);
      assert.deepEqual({ ok: reply.ok, count: reply.count }, { ok: true, count: 3 }, JSON.stringify(reply));
    }),
  );

  it(
    "emitWithAck and serverSideEmitWithAck from Node complete",
    cluster.wrap(async () => {
      const asked = new Promise((resolve) => s["R2-ws"].once("ask", resolve));
      // Node's own members answer; roomcast's count 0 (acks are not relayed).
      for (const m of [s["N-ws"], s["N-poll"]]) m.on("ask", (n, cb) => cb?.("from-node-client"));
      let reply = await ack(s["N-ws"], "ask-all", { room: ROOM }, 4000);
      assert.equal(await within(asked, 3000, "roomcast's member gets the ask"), 1);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      reply = await ack(s["N-ws"], "server-side-emit", {}, 4000);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.deepEqual(reply.responses, [null, null]);
      assert.ok(reply.ms < 1000, `took ${reply.ms} ms (the adapter's timeout is 5 s)`);
    }),
  );

  /** Publishes `event` to `room` from `from` and then a marker to ROOM; whether `to` got the event before the marker. */
  async function reaches(from, room, to) {
    const tag = uniq("reach");
    await publish(from, room, "probe", { tag });
    await publish(from, ROOM, "probe-marker", { tag });
    await to.inbox.until((inbox) => inbox.of("probe-marker").some((p) => p?.tag === tag), 5000, `${to.label}: marker`);
    return to.inbox.of("probe").some((p) => p?.tag === tag);
  }

  it(
    "join, leave and disconnect both ways, through the stream",
    cluster.wrap(async () => {
      // Node → a roomcast socket.
      const onR = await cluster.client(R1, "R1-target", { rooms: [ROOM] });
      let reply = await ack(s["N-ws"], "sockets-join", { target: onR.id, room: "st:joined" }, 4000);
      assert.equal(reply.ok, true);
      assert.equal(await reaches(s["N-ws"], "st:joined", onR), true, "joined on Node's socketsJoin");
      reply = await ack(s["N-ws"], "sockets-leave", { target: onR.id, room: "st:joined" }, 4000);
      assert.equal(reply.ok, true);
      assert.equal(await reaches(s["N-ws"], "st:joined", onR), false, "left on Node's socketsLeave");
      const goneR = new Promise((resolve) => onR.once("disconnect", resolve));
      reply = await ack(s["N-ws"], "disconnect-sockets", { target: onR.id }, 4000);
      assert.equal(reply.ok, true);
      await within(goneR, 3000, "roomcast's socket disconnected on Node's disconnectSockets");

      // roomcast's HTTP API → a Node socket.
      const onN = await cluster.client(N, "N-target", { rooms: [ROOM] });
      let res = await cluster.api(R2, "POST", `/sockets/${onN.id}/join`, { room: "st:vip" });
      assert.equal(res.status, 202, res.text);
      assert.equal(await reaches(s["R2-ws"], "st:vip", onN), true, "joined on roomcast's API");
      res = await cluster.api(R2, "POST", `/sockets/${onN.id}/leave`, { room: "st:vip" });
      assert.equal(res.status, 202, res.text);
      assert.equal(await reaches(s["R2-ws"], "st:vip", onN), false, "left on roomcast's API");
      const goneN = new Promise((resolve) => onN.once("disconnect", resolve));
      res = await cluster.api(R1, "POST", `/sockets/${onN.id}/disconnect`);
      assert.equal(res.status, 202, res.text);
      await within(goneN, 3000, "Node's socket disconnected on roomcast's API");
      // Only those two.
      assert.deepEqual(cluster.disconnected().sort(), [`N-target: ${onN.disconnects.join(", ")}`, `R1-target: ${onR.disconnects.join(", ")}`].sort());
    }),
  );
});
