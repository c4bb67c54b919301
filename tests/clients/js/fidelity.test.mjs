// Payload fidelity with socket.io-client 4.8 against one real roomcast
// process: what a publisher sends is what every subscriber receives, as a
// JavaScript client sees it. Compared with `canon`, which writes a value
// with every object's keys in their order (JSON.stringify's order) and
// binary values as their bytes, so two payloads are equal only if they are
// deep-equal with the same key order. Covers:
// - a client's publish (tests/clients/roomcast-pubsub.toml) to a WebSocket
//   and a long-polling subscriber: the reported payload, keys that JS keeps
//   in insertion order next to integer-like keys, arrays of objects nested
//   deep, unicode and control characters, numbers, scalars;
// - binary values (Buffer, Uint8Array) inside nested objects with keys on
//   either side of them, and a top-level binary argument;
// - a string cut inside a surrogate pair (what `"😀".slice(0, 1)` is, and
//   what JSON.stringify writes as "\ud83d"): it arrives, and the publisher
//   keeps its connection;
// - an HTTP API publish whose body is JSON text as a backend writes it
//   (escapes, number forms): the subscriber gets what JSON.parse of that
//   text gives, keys in order;
// - the testing hooks (tests/clients/roomcast-test.toml): "message" →
//   "message-back", "message-with-ack", the CONNECT payload echoed in
//   "auth".
// A Node.js Socket.IO server relays all of these as they were sent
// (tests/cluster/fidelity.test.mjs shows it beside roomcast nodes); the
// exact text on the wire is tests/payload_fidelity.rs's subject.

import assert from "node:assert/strict";
import { io as ioClient } from "socket.io-client";
import { PUBSUB, ack, apiRequest, collect, connected, once, serverTest } from "../lib/roomcast.mjs";

const pubsubTest = (name, fn, opts = {}) => serverTest(name, fn, { config: PUBSUB.config, ...opts });
const WS = { transports: ["websocket"] };
const POLLING = { transports: ["polling"], upgrade: false };
const ROOM = "open:fidelity";

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

/** Payloads a JS client publishes: `[name, value]`. */
const PAYLOADS = [
  ["the reported payload", { zeta: 1, alpha: { yak: 2, bee: [3, { q: 1, c: 2 }] } }],
  // JS puts integer-like keys first (ascending), the others in insertion order.
  ["integer-like keys among others", { b: 1, 10: 2, 2: 3, "": 4, a: 5, Z: 6 }],
  [
    "arrays of objects, nested",
    [{ z: 1, a: 2 }, { y: [{ x: null, b: true }, { m: [], d: {} }] }, [{ k: { j: { i: "deep", h: [{ g: 0, f: 1 }] } } }]],
  ],
  [
    "unicode and control characters",
    { é: "é", emoji: "😀", ctl: "a\tb\nc\u0000\u001f", seps: "\u2028\u2029", quote: '"\\', han: "中文", slash: "/" },
  ],
  [
    "numbers",
    { price: 10.5, qty: 3, big: 1e21, tiny: 5e-324, max: Number.MAX_VALUE, unsafe: 2 ** 53 + 2, sum: 0.1 + 0.2, neg: -1.5 },
  ],
  ["a string", "café / ok"],
  ["a number", 1.5],
  ["null", null],
  ["an empty object", {}],
];

/** A payload with binary values among keys in a chosen order, and its expected text. */
const binaryPayload = () => ({
  zeta: Buffer.from([1, 2, 3]),
  alpha: [{ yak: new Uint8Array([255, 0, 254, 128]), bee: 1 }],
  mid: { q: "x", c: [Buffer.from([7]), { z: 1, a: 2 }] },
});

async function subscribe(socket, room = ROOM) {
  assert.deepEqual(await ack(socket, "subscribe", { room }), { ok: true }, `subscribe ${room}`);
}

/** Every mismatch of `[what, sent, received]`, listed in one failure. */
function assertAllSame(results, path) {
  const bad = results
    .filter(([, sent, received]) => canon(sent) !== canon(received))
    .map(([what, sent, received]) => `${what}:\n    sent     ${canon(sent)}\n    received ${canon(received)}`);
  assert.equal(bad.length, 0, `${path}: ${bad.length} payload(s) did not arrive as sent:\n\n${bad.join("\n\n")}`);
}

pubsubTest("a client's publish reaches WebSocket and polling subscribers with its keys in order", async ({ client }) => {
  const publisher = client("/", WS);
  const subs = [client("/", WS), client("/", POLLING)];
  await Promise.all([publisher, ...subs].map((s) => connected(s)));
  await Promise.all(subs.map((s) => subscribe(s)));
  const inboxes = subs.map((s) => collect(s, "chat"));
  for (const [, data] of PAYLOADS) {
    const reply = await ack(publisher, "publish", { room: ROOM, event: "chat", data });
    assert.deepEqual(reply, { ok: true, recipients: 2 }, JSON.stringify(reply));
  }
  await Promise.all(inboxes.map((inbox) => inbox.until((list) => list.length === PAYLOADS.length, 3000, "every payload")));
  const results = [];
  for (const [k, inbox] of inboxes.entries()) {
    PAYLOADS.forEach(([name, sent], i) => results.push([`${name} (${k ? "polling" : "WebSocket"})`, sent, inbox.list[i]]));
  }
  assertAllSame(results, "client publish");
});

pubsubTest("binary values keep their places, and the keys around them their order", async ({ client }) => {
  const publisher = client("/", WS);
  const subs = [client("/", WS), client("/", POLLING)];
  await Promise.all([publisher, ...subs].map((s) => connected(s)));
  await Promise.all(subs.map((s) => subscribe(s)));
  const inboxes = subs.map((s) => collect(s, "blob"));
  const data = binaryPayload();
  const reply = await ack(publisher, "publish", { room: ROOM, event: "blob", data });
  assert.equal(reply?.ok, true, JSON.stringify(reply));
  // A binary value as the whole of `data` too.
  const top = Buffer.from("top-level");
  await ack(publisher, "publish", { room: ROOM, event: "blob", data: top });
  await Promise.all(inboxes.map((inbox) => inbox.until((list) => list.length === 2, 3000, "both blobs")));
  assertAllSame(
    inboxes.flatMap((inbox, k) => [
      [`nested binary (${k ? "polling" : "WebSocket"})`, data, inbox.list[0]],
      [`top-level binary (${k ? "polling" : "WebSocket"})`, top, inbox.list[1]],
    ]),
    "binary publish",
  );
});

pubsubTest("a string cut inside a surrogate pair arrives, and the publisher keeps its connection", async ({ client }) => {
  const publisher = client("/", WS);
  const sub = client("/", WS);
  await Promise.all([publisher, sub].map((s) => connected(s)));
  await subscribe(sub);
  const inbox = collect(sub, "chat");
  const data = { cut: "😀".slice(0, 1), z: 0 };
  assert.equal(JSON.stringify(data), '{"cut":"\\ud83d","z":0}', "what the client writes");
  const disconnected = once(publisher, "disconnect", 3000).then(([reason]) => reason, () => null);
  const reply = await ack(publisher, "publish", { room: ROOM, event: "chat", data }).catch((err) => `no ack: ${err.message}`);
  const reason = await Promise.race([disconnected, new Promise((r) => setTimeout(() => r(null), 300))]);
  assert.equal(reason, null, `the publisher was disconnected (${reason}) for publishing ${JSON.stringify(data)}`);
  assert.deepEqual(reply, { ok: true, recipients: 1 });
  await inbox.until((list) => list.length === 1, 3000, "the payload");
  assertAllSame([["lone surrogate", data, inbox.list[0]]], "lone surrogate");
});

pubsubTest("an HTTP API publish arrives as JSON.parse reads the body, keys in order", async ({ client, server }) => {
  const sub = client("/", WS);
  await connected(sub);
  await subscribe(sub);
  const inbox = collect(sub, "news");
  // JSON text as a backend may write it: escapes, number forms.
  const texts = [
    '{"zeta":1,"alpha":{"yak":2,"bee":[3,{"q":1,"c":2}]}}',
    '{"b":1,"10":2,"2":3,"":4,"a":5}',
    '[{"z":1,"a":2},{"y":[{"x":null,"b":true}]}]',
    '{"é":"\\u00e9","pair":"\\ud83d\\ude00","slash":"\\/","seps":"\\u2028"}',
    '{"price":10.50,"qty":3,"ratio":2.50e-1,"big":1E21,"k":1e3,"whole":1.0}',
  ];
  for (const text of texts) {
    const res = await apiRequest(server, "POST", "/publish", {
      rawBody: `{"room":"${ROOM}","event":"news","data":${text}}`,
      headers: { "content-type": "application/json" },
    });
    assert.equal(res.status, 202, res.text);
  }
  await inbox.until((list) => list.length === texts.length, 3000, "every payload");
  assertAllSame(
    texts.map((text, i) => [text, JSON.parse(text), inbox.list[i]]),
    "HTTP API publish",
  );
});

serverTest("the testing hooks give back every argument with its keys in order", async ({ client, server, track }) => {
  const socket = client("/", WS);
  await connected(socket);
  const results = [];
  for (const [name, data] of PAYLOADS) {
    const back = once(socket, "message-back");
    socket.emit("message", data, data);
    const args = await back;
    results.push([`${name} (message-back)`, [data, data], args]);
    results.push([`${name} (message-with-ack)`, data, await ack(socket, "message-with-ack", data)]);
  }
  const data = binaryPayload();
  const back = once(socket, "message-back");
  socket.emit("message", data);
  results.push(["binary (message-back)", [data], await back]);

  // The CONNECT payload is echoed in "auth".
  const auth = PAYLOADS[0][1];
  const withAuth = track(ioClient(server.url, { forceNew: true, transports: ["websocket"], auth }));
  const [echoed] = await once(withAuth, "auth");
  results.push(["CONNECT payload (auth)", auth, echoed]);
  assertAllSame(results, "testing hooks");
});
