// Three roomcast nodes on one private Redis, socket.io-client 4.8 clients
// spread over them on every transport (WebSocket, long-polling, polling
// upgraded to WebSocket):
// - every member's publish reaches every other member of the room exactly
//   once, on every node; the publisher never gets its own; another room's
//   members get none of it;
// - an HTTP API publish on node A reaches the room's members on A, B and C
//   exactly once (`except` with a socket id of another node is honoured);
// - binary data crosses nodes as binary, nested or as the whole payload;
// - presence (from any node) and GET /api/v1/rooms/{room} count the members
//   of all three nodes.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { API_KEY, Cluster, ack, binaryBytes, countsFrom, onceEach, publish, uniq } from "./lib/cluster.mjs";

const ROOM = "chat:lobby";
const OTHER = "chat:other";

describe("three roomcast nodes on one Redis", { timeout: 60_000 }, () => {
  const cluster = new Cluster("three roomcast nodes");
  let A, B, C;
  let members = []; // in ROOM
  let others = []; // in OTHER
  let controls = []; // one per node, in no room: publish the markers

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [A, B, C] = await cluster.startRoomcast("A", "B", "C");
      members = await Promise.all([
        cluster.client(A, "A-ws", { rooms: [ROOM] }),
        cluster.client(A, "A-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(B, "B-ws", { rooms: [ROOM] }),
        cluster.client(B, "B-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(B, "B-upgrade", { transport: "upgrade", rooms: [ROOM] }),
        cluster.client(C, "C-ws", { rooms: [ROOM] }),
        cluster.client(C, "C-poll", { transport: "polling", rooms: [ROOM] }),
      ]);
      others = await Promise.all([
        cluster.client(A, "A-other", { rooms: [OTHER] }),
        cluster.client(B, "B-other", { transport: "polling", rooms: [OTHER] }),
        cluster.client(C, "C-other", { transport: "upgrade", rooms: [OTHER] }),
      ]);
      controls = await Promise.all([A, B, C].map((n) => cluster.client(n, `${n.name}-control`)));
    }),
  );
  after(() => cluster.close());

  const settle = () =>
    cluster.settle(controls, [
      { room: ROOM, receivers: members },
      { room: OTHER, receivers: others },
    ]);
  const byLabel = (label) => members.find((s) => s.label === label);

  it(
    "each member's publish reaches every other member exactly once, on every node and transport; another room gets none",
    cluster.wrap(async () => {
      const tag = uniq("chat");
      const replies = await Promise.all(members.map((s) => publish(s, ROOM, "chat", { tag, from: s.label, text: `hello from ${s.label}` })));
      // `recipients` counts the publisher's own node only.
      members.forEach((s, i) => {
        const local = members.filter((m) => m !== s && m.node === s.node).length;
        assert.equal(replies[i].recipients, local, `${s.label}: recipients (members on node ${s.node.name} but itself)`);
      });
      await Promise.all(
        members.map((r) => {
          const expected = members.filter((s) => s !== r).map((s) => s.label);
          return r.inbox.until(
            (inbox) => expected.every((l) => inbox.of("chat").some((p) => p?.tag === tag && p.from === l)),
            5000,
            () => `${r.label}: chat from ${expected.join(", ")} (has ${JSON.stringify(countsFrom(r, "chat", tag))})`,
          );
        }),
      );
      await settle();
      for (const r of members) {
        assert.deepEqual(countsFrom(r, "chat", tag), onceEach(members.filter((s) => s !== r)), `${r.label} (on ${r.node.name}): chat messages per sender`);
        const got = r.inbox.of("chat").find((p) => p?.tag === tag && p.from === "C-poll");
        if (r.label !== "C-poll") assert.deepEqual(got, { tag, from: "C-poll", text: "hello from C-poll" }, `${r.label}: payload`);
      }
      for (const o of others) assert.deepEqual(countsFrom(o, "chat", tag), {}, `${o.label} is in ${OTHER} only`);
    }),
  );

  it(
    "an HTTP publish on node A reaches the room's members on A, B and C exactly once",
    cluster.wrap(async () => {
      const tag = uniq("http");
      const res = await cluster.api(A, "POST", "/publish", { room: ROOM, event: "news", data: { tag, from: "api@A", text: "from the backend" } });
      assert.equal(res.status, 202, `POST /api/v1/publish on A: ${res.text}`);
      const local = members.filter((m) => m.node === A).length;
      assert.deepEqual(res.json, { local_recipients: local, cluster: true, recipients: local }, "recipients on node A");

      // `except` names a socket id; that socket is on node C.
      const exceptTag = uniq("http-except");
      const skipped = byLabel("C-ws");
      const res2 = await cluster.api(A, "POST", "/publish", {
        room: ROOM,
        event: "news",
        data: { tag: exceptTag, from: "api@A" },
        except: [skipped.id],
      });
      assert.equal(res2.status, 202, `POST /api/v1/publish with except on A: ${res2.text}`);

      await Promise.all(
        members.map((r) =>
          r.inbox.until((inbox) => inbox.of("news").some((p) => p?.tag === tag), 5000, `${r.label}: the HTTP publish`),
        ),
      );
      await settle();
      for (const r of members) {
        assert.deepEqual(countsFrom(r, "news", tag), { "api@A": 1 }, `${r.label} (on ${r.node.name}): HTTP publish`);
        assert.deepEqual(
          countsFrom(r, "news", exceptTag),
          r === skipped ? {} : { "api@A": 1 },
          `${r.label} (on ${r.node.name}): HTTP publish with except [${skipped.label}]`,
        );
      }
      const payload = byLabel("B-poll").inbox.of("news").find((p) => p?.tag === tag);
      assert.deepEqual(payload, { tag, from: "api@A", text: "from the backend" });
      for (const o of others) assert.equal(o.inbox.of("news").length, 0, `${o.label} is in ${OTHER} only`);
    }),
  );

  it(
    "binary data crosses nodes as binary",
    cluster.wrap(async () => {
      const tag = uniq("bin");
      const small = Buffer.from([0, 1, 2, 127, 128, 254, 255]);
      const big = Buffer.alloc(3000, 0);
      for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 256;
      const fromA = byLabel("A-ws");
      const fromC = byLabel("C-poll");
      // Nested binaries next to JSON values, from a WebSocket client on A...
      await publish(fromA, ROOM, "blob", { tag, from: fromA.label, small, nested: { deep: [new Uint8Array([9, 8, 7]), "text"] }, n: 42 });
      // ...and a whole-payload binary from a polling client on C.
      await publish(fromC, ROOM, "raw", big);

      const receivers = members.filter((s) => s !== fromA && s !== fromC);
      await Promise.all(
        receivers.map((r) =>
          r.inbox.until((inbox) => inbox.of("blob").some((p) => p?.tag === tag) && inbox.of("raw").length >= 1, 5000, `${r.label}: blob and raw`),
        ),
      );
      await settle();
      for (const r of receivers) {
        const blobs = r.inbox.of("blob").filter((p) => p?.tag === tag);
        assert.equal(blobs.length, 1, `${r.label} (on ${r.node.name}): blob count`);
        const [p] = blobs;
        assert.deepEqual(binaryBytes(p.small, `${r.label}: small`), [...small]);
        assert.deepEqual(binaryBytes(p.nested.deep[0], `${r.label}: nested.deep[0]`), [9, 8, 7]);
        assert.equal(p.nested.deep[1], "text");
        assert.equal(p.n, 42);
        const raws = r.inbox.of("raw");
        assert.equal(raws.length, 1, `${r.label} (on ${r.node.name}): raw count`);
        assert.deepEqual(binaryBytes(raws[0], `${r.label}: raw`), [...big]);
      }
      assert.equal(fromC.inbox.of("blob").filter((p) => p?.tag === tag).length, 1, "C-poll got A-ws's blob once");
      assert.equal(fromA.inbox.of("raw").length, 1, "A-ws got C-poll's raw once");
      assert.equal(fromA.inbox.of("blob").length, 0, "A-ws does not get its own blob");
      assert.equal(fromC.inbox.of("raw").length, 0, "C-poll does not get its own raw");
      for (const o of others) assert.equal(o.inbox.of("blob").length + o.inbox.of("raw").length, 0, `${o.label} is in ${OTHER} only`);
    }),
  );

  it(
    "nobody was disconnected",
    cluster.wrap(async () => {
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );
  it(
    "presence and the API count the members of all three nodes",
    cluster.wrap(async () => {
      const ids = members.map((s) => s.id).sort();
      for (const from of [byLabel("A-ws"), byLabel("B-poll"), byLabel("C-ws")]) {
        const reply = await ack(from, "presence", { room: ROOM }, 4000);
        assert.equal(reply.ok, true, JSON.stringify(reply));
        assert.equal(reply.count, members.length, `${from.label}: ${JSON.stringify(reply)}`);
        assert.equal(reply.partial, false, JSON.stringify(reply));
        assert.deepEqual(reply.members.map((m) => m.id).sort(), ids, `${from.label}: members`);
      }
      const res = await fetch(`${B.url}/api/v1/rooms/${encodeURIComponent(ROOM)}`, { headers: { authorization: `Bearer ${API_KEY}` } });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.count, members.length, JSON.stringify(body));
    }),
  );
});
