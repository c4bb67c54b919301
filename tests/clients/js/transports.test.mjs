// socket.io-client 4.8 against a real roomcast process: the three ways to
// connect.
// Covers:
// - websocket-only (transports: ["websocket"]): connect, the "auth" event
//   echoing an empty CONNECT payload, a "message" round-trip;
// - polling-only (transports: ["polling"]): the same, and the transport
//   stays "polling";
// - polling then upgrade (default options): starts on "polling", the engine
//   "upgrade" event fires with transport "websocket", socket.io.engine
//   .transport.name becomes "websocket", and events still flow after it;
// - events emitted while the upgrade is in progress all come back, in order.

import assert from "node:assert/strict";
import { connected, once, serverTest, within } from "../lib/roomcast.mjs";

const PAYLOAD = ["hello", 42, { nested: { list: [1, "two", null, true] } }];

serverTest("websocket-only: connect, auth echo, message round-trip", async ({ client }) => {
  const socket = client("/", { transports: ["websocket"] });
  const auth = once(socket, "auth");
  await connected(socket);
  assert.deepEqual(await auth, [{}]);
  assert.equal(socket.io.engine.transport.name, "websocket");
  assert.equal(typeof socket.id, "string");

  socket.emit("message", ...PAYLOAD);
  assert.deepEqual(await once(socket, "message-back"), PAYLOAD);
});

serverTest("polling-only: connect, auth echo, message round-trip", async ({ client }) => {
  const socket = client("/", { transports: ["polling"] });
  const auth = once(socket, "auth");
  await connected(socket);
  assert.deepEqual(await auth, [{}]);
  assert.equal(socket.io.engine.transport.name, "polling");

  socket.emit("message", ...PAYLOAD);
  assert.deepEqual(await once(socket, "message-back"), PAYLOAD);
  // Several round-trips, so several long-poll cycles.
  for (let i = 0; i < 5; i++) {
    socket.emit("message", i);
    assert.deepEqual(await once(socket, "message-back"), [i]);
  }
  assert.equal(socket.io.engine.transport.name, "polling");
});

serverTest("polling then upgrade: transport becomes websocket, events flow after it", async ({ client }) => {
  const socket = client("/");
  const engine = socket.io.engine;
  assert.equal(engine.transport.name, "polling", "the default client starts on polling");
  const upgraded = once(engine, "upgrade", 5000);
  await connected(socket);

  const [transport] = await upgraded;
  assert.equal(transport.name, "websocket");
  assert.equal(socket.io.engine.transport.name, "websocket");
  assert.equal(socket.connected, true);

  socket.emit("message", ...PAYLOAD);
  assert.deepEqual(await once(socket, "message-back"), PAYLOAD);
  const acked = await new Promise((resolve) => socket.emit("message-with-ack", "after-upgrade", resolve));
  assert.equal(acked, "after-upgrade");
});

serverTest("events emitted during the upgrade all arrive, in order", async ({ client }) => {
  const socket = client("/");
  const upgraded = once(socket.io.engine, "upgrade", 5000);
  const received = [];
  const N = 30;
  const all = new Promise((resolve) => {
    socket.on("message-back", (i) => {
      received.push(i);
      if (received.length === N) resolve();
    });
  });
  // Buffered by the client until connected, then sent over polling while the
  // websocket probe runs, and the rest over the websocket.
  for (let i = 0; i < N / 2; i++) socket.emit("message", i);
  await connected(socket);
  for (let i = N / 2; i < N; i++) socket.emit("message", i);
  await upgraded;
  await within(all, 5000, () => `got only ${JSON.stringify(received)}`);
  assert.deepEqual(received, Array.from({ length: N }, (_, i) => i));
  assert.equal(socket.io.engine.transport.name, "websocket");
});
