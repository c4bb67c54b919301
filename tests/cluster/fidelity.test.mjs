// Payload fidelity across a mixed cluster on one private Redis: a Node.js
// socket.io 4.8 server with the official @socket.io/redis-adapter 8.x
// (lib/node-server.mjs) and two roomcast nodes, in each adapter protocol
// (classic, sharded dynamic, sharded static), plus @socket.io/redis-emitter
// 5.x (classic). What a publisher sends is what every subscriber receives,
// as a JavaScript client sees it, compared with `canon`: every object's
// keys in their order (JSON.stringify's), binary values as their bytes, so
// two payloads are equal only if they are deep-equal with the same key
// order. The payloads: the reported one, keys that JS keeps in insertion
// order next to integer-like keys, arrays of objects nested deep, unicode
// and control characters, numbers, and binary values among keys in nested
// objects. Paths:
// - control: a Node client's publish reaches the Node server's own members
//   as sent (what Socket.IO does; shows the comparison can hold);
// - a Node client's publish reaches roomcast's members (WebSocket and
//   long-polling) as sent;
// - a roomcast client's publish reaches the Node server's members and the
//   other roomcast node's as sent;
// - an HTTP API publish on a roomcast node reaches every node's members as
//   sent (no binary: the API takes JSON);
// - classic: the emitter's emits reach the Node server's members (control)
//   and roomcast's members as sent, with a top-level binary argument too.
// The exact text on the wire is tests/payload_fidelity.rs's subject.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, MODES, publish, uniq } from "./lib/cluster.mjs";

const ROOM = "fid:room";

const isBinary = (v) => Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v);
const bytesOf = (v) =>
  Buffer.isBuffer(v) ? v : v instanceof ArrayBuffer ? Buffer.from(v) : Buffer.from(v.buffer, v.byteOffset, v.byteLength);

/** `v` as text: keys in their order, binary values as their bytes. */
function canon(v) {
  if (isBinary(v)) return `<binary ${bytesOf(v).toString("hex")}>`;
  if (Array.isArray(v)) return `[${v.map(canon).join(",")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v)
      .map((k) => `${JSON.stringify(k)}:${canon(v[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/** `[name, payload, binary?]` */
const PAYLOADS = [
  ["the reported payload", { zeta: 1, alpha: { yak: 2, bee: [3, { q: 1, c: 2 }] } }],
  ["integer-like keys among others", { b: 1, 10: 2, 2: 3, "": 4, a: 5, Z: 6 }],
  [
    "arrays of objects, nested",
    [{ z: 1, a: 2 }, { y: [{ x: null, b: true }, { m: [], d: {} }] }, [{ k: { j: { i: "deep", h: [{ g: 0, f: 1 }] } } }]],
  ],
  ["unicode and control characters", { é: "é", emoji: "😀", ctl: "a\tb\nc\u0000", seps: "\u2028\u2029", quote: '"\\', han: "中文" }],
  // No integral number of 2^64 or more (1e21): notepack.io 3.0.1, the
  // msgpack encoder of the adapter and the emitter, writes it as a wrapped
  // uint64, between Node.js nodes too.
  ["numbers", { price: 10.5, qty: 3, tiny: 5e-324, unsafe: 2 ** 53 + 2, u64: 2 ** 63, sum: 0.1 + 0.2, neg: -1.5, negint: -7 }],
  [
    "binary values among keys",
    { zeta: Buffer.from([1, 2, 3]), alpha: [{ yak: new Uint8Array([255, 0, 254, 128]), bee: 1 }], mid: { q: "x", c: [Buffer.from([7]), { z: 1, a: 2 }] } },
    true,
  ],
];

/** Every mismatch of `[what, sent, received]`, listed in one failure. */
function assertAllSame(results, path) {
  const bad = results
    .filter(([, sent, received]) => canon(sent) !== canon(received))
    .map(([what, sent, received]) => `${what}:\n    sent     ${canon(sent)}\n    received ${canon(received)}`);
  assert.equal(bad.length, 0, `${path}: ${bad.length} of ${results.length} payload(s) did not arrive as sent:\n\n${bad.join("\n\n")}`);
}

/**
 * Sends every payload (`withBinary`: the binary one too) with
 * `send(event, {tag, payload})`, waits until each of `receivers` has all of
 * them, and returns `[what, sent, received]` for each.
 */
async function relay(send, receivers, { withBinary = true } = {}) {
  const sent = PAYLOADS.filter(([, , binary]) => withBinary || !binary).map(([name, payload]) => ({ name, payload, tag: uniq("fid") }));
  for (const x of sent) await send("fid", { tag: x.tag, payload: x.payload });
  const arrived = (inbox, x) => inbox.of("fid").find((p) => p?.tag === x.tag);
  await Promise.all(
    receivers.map((r) => r.inbox.until((inbox) => sent.every((x) => arrived(inbox, x)), 5000, `${r.label}: every payload`)),
  );
  return receivers.flatMap((r) => sent.map((x) => [`${x.name} at ${r.label}`, x.payload, arrived(r.inbox, x).payload]));
}

for (const mode of MODES) describe(`payload fidelity: Node socket.io + @socket.io/redis-adapter and two roomcast nodes (${mode})`, { timeout: 60_000 }, () => {
  const cluster = new Cluster(`fidelity-${mode}`, { mode });
  let R1;
  const s = {};

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      let N, R2;
      [N, [R1, R2]] = await Promise.all([cluster.startNodeServer("N"), cluster.startRoomcast("R1", "R2")]);
      const sockets = await Promise.all([
        cluster.client(N, "N-pub"),
        cluster.client(N, "N-ws", { rooms: [ROOM] }),
        cluster.client(N, "N-poll", { transport: "polling", rooms: [ROOM] }),
        cluster.client(R1, "R1-pub"),
        cluster.client(R2, "R2-ws", { rooms: [ROOM] }),
        cluster.client(R2, "R2-poll", { transport: "polling", rooms: [ROOM] }),
      ]);
      for (const socket of sockets) s[socket.label] = socket;
    }),
  );
  after(() => cluster.close());

  const viaClient = (from) => (event, data) => publish(from, ROOM, event, data);

  it(
    "control: a Node client's publish reaches the Node server's members as sent",
    cluster.wrap(async () => {
      assertAllSame(await relay(viaClient(s["N-pub"]), [s["N-ws"], s["N-poll"]]), "Node → Node");
    }),
  );

  it(
    "a Node client's publish reaches roomcast's members as sent",
    cluster.wrap(async () => {
      assertAllSame(await relay(viaClient(s["N-pub"]), [s["R2-ws"], s["R2-poll"]]), "Node → roomcast");
    }),
  );

  it(
    "a roomcast client's publish reaches the Node server's and the other roomcast node's members as sent",
    cluster.wrap(async () => {
      const receivers = [s["N-ws"], s["N-poll"], s["R2-ws"], s["R2-poll"]];
      assertAllSame(await relay(viaClient(s["R1-pub"]), receivers), "roomcast → Node and roomcast");
    }),
  );

  it(
    "an HTTP API publish on a roomcast node reaches every node's members as sent",
    cluster.wrap(async () => {
      const receivers = [s["N-ws"], s["N-poll"], s["R2-ws"], s["R2-poll"]];
      const viaApi = async (event, data) => {
        const res = await cluster.api(R1, "POST", "/publish", { room: ROOM, event, data });
        assert.equal(res.status, 202, res.text);
      };
      assertAllSame(await relay(viaApi, receivers, { withBinary: false }), "HTTP API on roomcast → Node and roomcast");
    }),
  );

  if (mode === "classic") {
    it(
      "@socket.io/redis-emitter: its emits reach the Node server's (control) and roomcast's members as sent",
      cluster.wrap(async () => {
        const emitter = await cluster.emitter();
        const top = Buffer.from("top-level");
        const viaEmitter = async (event, data) => {
          emitter.to(ROOM).emit(event, data, top);
        };
        const control = await relay(viaEmitter, [s["N-ws"], s["N-poll"]]);
        assertAllSame(control, "control: emitter → Node");
        const receivers = [s["R2-ws"], s["R2-poll"]];
        const results = await relay(viaEmitter, receivers);
        // The second argument, a binary value, arrives as such too.
        for (const r of receivers) {
          for (const e of r.inbox.events.filter((e) => e.event === "fid" && e.args.length > 1)) {
            results.push([`top-level binary argument at ${r.label}`, top, e.args[1]]);
          }
        }
        assertAllSame(results, "emitter → roomcast");
      }),
    );
  }

  it(
    "nobody was disconnected",
    cluster.wrap(async () => {
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );
});
