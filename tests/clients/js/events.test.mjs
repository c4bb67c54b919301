// socket.io-client 4.8 against a real roomcast process: events, acks,
// binary, namespaces and refused CONNECTs.
// Covers, on both websocket-only and polling-only clients where it matters:
// - the "auth" event echoes the CONNECT auth payload;
// - client→server events with an ack (callback and socket.timeout().emit),
//   several arguments of every JSON type;
// - server→client events with an ack: "request-ack" → "ack-request" answered
//   by the client → "ack-response" with the client's arguments;
// - the server's ack timeout: an unanswered "ack-request" → "ack-timeout"
//   after about socketio.ack_timeout_ms (500 ms); a late answer is ignored
//   and the connection keeps working;
// - binary payloads both ways: Buffers as top-level arguments, nested in
//   objects and arrays, large and empty, in events and in client→server acks;
//   the bytes are asserted;
// - binary through the server's own ack round-trip: Buffers in "request-ack"
//   data must reach the client's "ack-request" handler, and Buffers in the
//   client's answer must come back in "ack-response";
// - two namespaces ("/" and "/custom") over one Manager: one Engine.IO
//   session (same socket.io.engine.id), distinct socket.id values, events
//   kept apart, and a namespace disconnect leaves the other connected;
// - a CONNECT refused by auth {reject: "..."}: connect_error with that
//   message and data {code: "rejected"}, no retry;
// - a CONNECT to an unknown namespace: connect_error "Invalid namespace".

import assert from "node:assert/strict";
import { ACK_TIMEOUT_MS, connected, once, serverTest, sleep } from "../lib/roomcast.mjs";

const TRANSPORTS = [["websocket"], ["polling"]];

/** The bytes of a binary value as received by the client (Buffer or ArrayBuffer). */
function bytes(value) {
  assert.ok(
    Buffer.isBuffer(value) || value instanceof ArrayBuffer || ArrayBuffer.isView(value),
    `expected binary, got ${JSON.stringify(value)}`,
  );
  return [...new Uint8Array(value instanceof ArrayBuffer ? value : value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength))];
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const UTF8 = Buffer.from("héllo wörld ✓", "utf8");
const SMALL = Buffer.from([0, 1, 2, 3]);

/** Sends the same binary arguments in every test and checks what came back. */
function binaryArgs() {
  return ["text", ALL_BYTES, { nested: { buf: UTF8, list: [SMALL, 7, "x"] }, flag: true }];
}
function assertBinaryArgs(args) {
  assert.equal(args.length, 3, `3 arguments, got ${args.length}`);
  assert.equal(args[0], "text");
  assert.deepEqual(bytes(args[1]), [...ALL_BYTES]);
  assert.deepEqual(bytes(args[2].nested.buf), [...UTF8]);
  assert.deepEqual(bytes(args[2].nested.list[0]), [...SMALL]);
  assert.deepEqual(args[2].nested.list.slice(1), [7, "x"]);
  assert.equal(args[2].flag, true);
}

const JSON_ARGS = ["str", 0, -1.5, true, false, null, [1, [2, [3]]], { a: { b: "ü" }, empty: {} }];

serverTest("auth event echoes the CONNECT payload", async ({ client }) => {
  const auth = { user: "abc", n: 1, nested: { ok: true } }; // no "token": that one is a JWT
  const socket = client("/", { transports: ["websocket"], auth });
  const [received] = await once(socket, "auth");
  assert.deepEqual(received, auth);
});

for (const transports of TRANSPORTS) {
  const tag = transports[0];

  serverTest(`${tag}: client→server acks (callback and timeout().emit)`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);

    const viaCallback = await new Promise((resolve) => socket.emit("message-with-ack", ...JSON_ARGS, (...args) => resolve(args)));
    assert.deepEqual(viaCallback, JSON_ARGS);

    const viaTimeout = await new Promise((resolve) =>
      socket.timeout(2000).emit("message-with-ack", "a", 1, (err, ...args) => resolve([err, ...args])),
    );
    assert.deepEqual(viaTimeout, [null, "a", 1]);

    // emitWithAck resolves with the first argument of the ack.
    assert.equal(await socket.timeout(2000).emitWithAck("message-with-ack", "first", "second"), "first");

    // Many acks in flight at once each get their own answer.
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => socket.timeout(3000).emitWithAck("message-with-ack", i)),
    );
    assert.deepEqual(answers, Array.from({ length: 20 }, (_, i) => i));
  });

  serverTest(`${tag}: server→client ack via request-ack`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);
    const requests = [];
    socket.on("ack-request", (data, ack) => {
      requests.push(data);
      assert.equal(typeof ack, "function", "the server's event carries an ack");
      ack("answer", { echo: data }, 3);
    });
    const response = once(socket, "ack-response");
    socket.emit("request-ack", { question: 42 });
    assert.deepEqual(await response, ["answer", { echo: { question: 42 } }, 3]);
    assert.deepEqual(requests, [{ question: 42 }]);
  });

  serverTest(`${tag}: server ack timeout → ack-timeout, late ack ignored`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);
    let lateAck;
    socket.on("ack-request", (_data, ack) => {
      lateAck = ack; // never answered in time
    });
    let responses = 0;
    socket.on("ack-response", () => responses++);
    const started = Date.now();
    const timedOut = once(socket, "ack-timeout", 3000);
    socket.emit("request-ack", "no answer");
    await timedOut;
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= ACK_TIMEOUT_MS - 100, `ack-timeout after ${elapsed} ms, before the ${ACK_TIMEOUT_MS} ms timeout`);
    assert.ok(typeof lateAck === "function", "ack-request was received");

    // Answering after the timeout: ignored by the server, the connection lives on.
    lateAck("too late");
    socket.emit("message", "still alive");
    assert.deepEqual(await once(socket, "message-back"), ["still alive"]);
    await sleep(100);
    assert.equal(responses, 0, "no ack-response for an ack that timed out");
    assert.equal(socket.connected, true);
  });

  serverTest(`${tag}: binary payloads both ways (events, client→server acks)`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);

    // client → server → client event
    socket.emit("message", ...binaryArgs());
    assertBinaryArgs(await once(socket, "message-back"));

    // client → server with ack; the ack carries the binary back
    const acked = await new Promise((resolve) => socket.emit("message-with-ack", ...binaryArgs(), (...args) => resolve(args)));
    assertBinaryArgs(acked);

    // a binary-only event, a large one, and an empty buffer
    const big = Buffer.alloc(200_000, 0xab);
    socket.emit("message", big, Buffer.alloc(0));
    const [bigBack, emptyBack] = await once(socket, "message-back");
    assert.equal(bytes(bigBack).length, big.length);
    assert.ok(Buffer.from(bytes(bigBack)).equals(big));
    assert.deepEqual(bytes(emptyBack), []);
  });

  serverTest(`${tag}: binary in a server event that carries an ack (request-ack → ack-request)`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);
    const request = once(socket, "ack-request");
    socket.emit("request-ack", { payload: SMALL }, ALL_BYTES);
    const [data, raw, ack] = await request;
    assert.equal(typeof ack, "function");
    ack("ok");
    assert.deepEqual(bytes(data.payload), [...SMALL]);
    assert.deepEqual(bytes(raw), [...ALL_BYTES]);
  });

  serverTest(`${tag}: binary in the client's ack to the server (ack-request → ack-response)`, async ({ client }) => {
    const socket = client("/", { transports });
    await connected(socket);
    socket.on("ack-request", (_data, ack) => ack(...binaryArgs()));
    const response = once(socket, "ack-response");
    socket.emit("request-ack", "send me binary");
    assertBinaryArgs(await response);
  });
}

serverTest("two namespaces over one connection", async ({ client, track }) => {
  const root = client("/", { transports: ["websocket"] });
  const custom = track(root.io.socket("/custom"));
  const rootAuth = once(root, "auth");
  const customAuth = once(custom, "auth");
  await Promise.all([connected(root), connected(custom)]);
  assert.deepEqual(await rootAuth, [{}]);
  assert.deepEqual(await customAuth, [{}]);

  assert.equal(root.io, custom.io, "one Manager");
  assert.equal(typeof root.io.engine.id, "string");
  assert.equal(custom.io.engine.id, root.io.engine.id, "one Engine.IO session");
  assert.notEqual(root.id, custom.id, "distinct socket ids");

  // Events stay in their namespace.
  const rootMessages = [];
  root.on("message-back", (...args) => rootMessages.push(args));
  custom.emit("message", "to custom");
  assert.deepEqual(await once(custom, "message-back"), ["to custom"]);
  root.emit("message", "to root");
  assert.deepEqual(await once(root, "message-back"), ["to root"]);
  assert.deepEqual(rootMessages, [["to root"]]);
  assert.equal(await custom.timeout(2000).emitWithAck("message-with-ack", "ack on custom"), "ack on custom");

  // Disconnecting /custom from the server leaves / connected on the same session.
  const engineId = root.io.engine.id;
  const disconnected = once(custom, "disconnect");
  custom.emit("disconnect-me");
  const [reason] = await disconnected;
  assert.equal(reason, "io server disconnect");
  assert.equal(root.connected, true);
  root.emit("message", "root still works");
  assert.deepEqual(await once(root, "message-back"), ["root still works"]);
  assert.equal(root.io.engine.id, engineId, "same Engine.IO session");
});

serverTest("rejected CONNECT: connect_error with message and data", async ({ client }) => {
  for (const transports of TRANSPORTS) {
    const socket = client("/", { transports, auth: { reject: "some reason" }, reconnectionDelay: 100 });
    let connects = 0;
    socket.on("connect", () => connects++);
    const [err] = await once(socket, "connect_error");
    assert.ok(err instanceof Error);
    assert.equal(err.message, "some reason");
    assert.deepEqual(err.data, { code: "rejected" });
    assert.equal(socket.connected, false);
    assert.equal(socket.active, false, "a refused CONNECT is not retried");
    assert.equal(connects, 0);
  }
});

serverTest("unknown namespace: connect_error Invalid namespace", async ({ client }) => {
  for (const transports of TRANSPORTS) {
    const socket = client("/nope", { transports });
    const [err] = await once(socket, "connect_error");
    assert.equal(err.message, "Invalid namespace");
    assert.equal(socket.connected, false);
    assert.equal(socket.active, false);
  }
});

serverTest("unknown namespace next to a valid one on the same connection", async ({ client, track }) => {
  const root = client("/", { transports: ["websocket"] });
  await connected(root);
  const bad = track(root.io.socket("/nope"));
  const [err] = await once(bad, "connect_error");
  assert.equal(err.message, "Invalid namespace");
  root.emit("message", "root unaffected");
  assert.deepEqual(await once(root, "message-back"), ["root unaffected"]);
});
