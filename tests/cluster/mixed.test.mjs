// A mixed cluster on one private Redis: a Node.js socket.io 4.8 server with
// the official @socket.io/redis-adapter 8.x (lib/node-server.mjs, speaking
// roomcast's client protocol) and two roomcast nodes, in each protocol: the
// classic adapter, and the sharded adapter (Redis 7 sharded pub/sub) with
// dynamic and with static subscriptions. socket.io-client 4.8
// clients on all three servers share a room:
// - a publish by a client of the Node server reaches the roomcast nodes'
//   members (and the Node server's other member) exactly once;
// - a publish by a client of a roomcast node reaches the Node server's
//   members (and the other roomcast node's) exactly once;
// - binary data crosses both ways as binary;
// - an HTTP API publish on a roomcast node reaches the Node server's members.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, MODES, binaryBytes, countsFrom, onceEach, publish, uniq } from "./lib/cluster.mjs";

const ROOM = "mix:room";

for (const mode of MODES) describe(`mixed cluster: Node socket.io + @socket.io/redis-adapter and two roomcast nodes (${mode})`, { timeout: 60_000 }, () => {
  const cluster = new Cluster(`mixed-${mode}`, { mode });
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
        cluster.client(R2, "R2-upgrade", { transport: "upgrade", rooms: [ROOM] }),
      ]);
      for (const m of members) s[m.label] = m;
      outsider = await cluster.client(N, "N-outsider", { rooms: ["mix:elsewhere"] });
      controls = await Promise.all([N, R1, R2].map((n) => cluster.client(n, `${n.name}-control`)));
    }),
  );
  after(() => cluster.close());

  const settle = () =>
    cluster.settle(controls, [
      { room: ROOM, receivers: members },
      { room: "mix:elsewhere", receivers: [outsider] },
    ]);

  async function publishAndCheck(from, expectedRecipients) {
    const tag = uniq("mix");
    const reply = await publish(from, ROOM, "chat", { tag, from: from.label, text: `hi from ${from.label}` });
    assert.equal(reply.recipients, expectedRecipients, `${from.label}: recipients on its own server`);
    const receivers = members.filter((m) => m !== from);
    await Promise.all(
      receivers.map((r) => r.inbox.until((inbox) => inbox.of("chat").some((p) => p?.tag === tag), 5000, `${r.label}: chat from ${from.label}`)),
    );
    await settle();
    for (const r of receivers) {
      assert.deepEqual(countsFrom(r, "chat", tag), onceEach([from]), `${r.label} (on ${r.node.name}): chat from ${from.label}`);
      const p = r.inbox.of("chat").find((x) => x?.tag === tag);
      assert.deepEqual(p, { tag, from: from.label, text: `hi from ${from.label}` }, `${r.label}: payload`);
    }
    assert.deepEqual(countsFrom(from, "chat", tag), {}, `${from.label} does not get its own publish`);
    assert.deepEqual(countsFrom(outsider, "chat", tag), {}, "N-outsider is not in the room");
  }

  it(
    "a publish on the Node server reaches the roomcast nodes' members exactly once",
    cluster.wrap(async () => {
      await publishAndCheck(s["N-ws"], 1);
      await publishAndCheck(s["N-poll"], 1);
    }),
  );

  it(
    "a publish on a roomcast node reaches the Node server's members exactly once",
    cluster.wrap(async () => {
      await publishAndCheck(s["R1-ws"], 1);
      await publishAndCheck(s["R2-upgrade"], 0);
    }),
  );

  it(
    "binary data crosses between Node and roomcast nodes as binary, both ways",
    cluster.wrap(async () => {
      const tag = uniq("bin");
      const fromNode = s["N-poll"];
      const fromRoomcast = s["R1-ws"];
      const bytesN = Buffer.from([0, 255, 1, 254, 2, 253]);
      const bytesR = Buffer.alloc(2048);
      for (let i = 0; i < bytesR.length; i++) bytesR[i] = (i * 13) % 256;
      await publish(fromNode, ROOM, "blob", { tag, from: fromNode.label, bin: bytesN, nested: [{ b: new Uint8Array([5, 6]) }] });
      await publish(fromRoomcast, ROOM, "blob", { tag, from: fromRoomcast.label, bin: bytesR, nested: [{ b: new Uint8Array([7]) }] });
      for (const r of members) {
        const senders = [fromNode, fromRoomcast].filter((x) => x !== r);
        await r.inbox.until(
          (inbox) => senders.every((x) => inbox.of("blob").some((p) => p?.tag === tag && p.from === x.label)),
          5000,
          `${r.label}: blobs`,
        );
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

  it(
    "an HTTP publish on a roomcast node reaches the Node server's members",
    cluster.wrap(async () => {
      const tag = uniq("http");
      const res = await cluster.api(R2, "POST", "/publish", { room: ROOM, event: "news", data: { tag, from: "api@R2" } });
      assert.equal(res.status, 202, res.text);
      await Promise.all(members.map((r) => r.inbox.until((inbox) => inbox.of("news").some((p) => p?.tag === tag), 5000, `${r.label}: news`)));
      await settle();
      for (const r of members) assert.deepEqual(countsFrom(r, "news", tag), { "api@R2": 1 }, `${r.label} (on ${r.node.name})`);
    }),
  );

  it(
    "nobody was disconnected",
    cluster.wrap(async () => {
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );
});
