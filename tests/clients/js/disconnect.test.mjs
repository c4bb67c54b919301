// socket.io-client 4.8 against a real roomcast process: every client-side
// disconnect reason, provoked for real, and whether the client reconnects.
// Covers:
// - "io server disconnect": the server disconnects the namespace socket
//   (disconnect-me) → no reconnect (socket.active false, no
//   reconnect_attempt, no new connect in a 1.5 s window with
//   reconnectionDelay 100 ms);
// - "io client disconnect": socket.disconnect() → no reconnect;
// - "ping timeout": the roomcast process is paused with SIGSTOP until the
//   client notices (pingInterval + pingTimeout = 900 ms), then SIGCONT →
//   the client reconnects with a new socket id and events flow;
// - "transport close": the server force-closes the connection (close-me) on
//   a websocket client → reconnects; the same on a polling client; the
//   server process is SIGKILLed under a websocket client → "transport close",
//   and the client reconnects to a new roomcast started on the same port;
//   (on polling, a raw Engine.IO check of what that client depends on: the
//   POST carrying close-me is answered 200 "ok");
// - "transport error": the server process is SIGKILLed while a polling-only
//   client has only a long-poll GET pending → "transport error" (description
//   "xhr poll error"), and the client reconnects to a new roomcast started on
//   the same port.

import assert from "node:assert/strict";
import {
  FAST_RECONNECT,
  PING_INTERVAL_MS,
  PING_TIMEOUT_MS,
  connected,
  once,
  serverTest,
  sleep,
  startRoomcast,
} from "../lib/roomcast.mjs";

// Long enough that a client with reconnectionDelay 100 ms / max 200 ms
// would have tried to reconnect several times.
const NO_RECONNECT_WINDOW_MS = 1500;

/** Counts the connects and reconnect attempts of `socket`. */
function watch(socket) {
  const seen = { connects: 0, attempts: 0, disconnects: [] };
  socket.on("connect", () => seen.connects++);
  socket.on("disconnect", (reason) => seen.disconnects.push(reason));
  socket.io.on("reconnect_attempt", () => seen.attempts++);
  return seen;
}

async function roundTrip(socket, value) {
  socket.emit("message", value);
  assert.deepEqual(await once(socket, "message-back"), [value]);
}

/** Starts a new roomcast on the killed server's port and checks the client
 * reconnects to it by itself and works. */
async function reconnectsToReplacement(ctx, socket, seen) {
  const replacement = await startRoomcast({ port: ctx.server.port });
  (ctx.extraServers ??= []).push(replacement);
  await once(socket, "connect", 5000);
  assert.equal(seen.connects, 2);
  await roundTrip(socket, "new server");
}

for (const transports of [["websocket"], ["polling"]]) {
  const tag = transports[0];

  serverTest(`${tag}: "io server disconnect" (disconnect-me) → no reconnect`, async ({ client }) => {
    const socket = client("/", { transports, ...FAST_RECONNECT });
    const seen = watch(socket);
    await connected(socket);
    const disconnected = once(socket, "disconnect");
    socket.emit("disconnect-me");
    const [reason] = await disconnected;
    assert.equal(reason, "io server disconnect");
    assert.equal(socket.connected, false);
    assert.equal(socket.active, false, "no reconnection after a server-side disconnect");
    await sleep(NO_RECONNECT_WINDOW_MS);
    assert.equal(seen.attempts, 0, "no reconnect_attempt");
    assert.equal(seen.connects, 1, "no new connect");
    assert.deepEqual(seen.disconnects, ["io server disconnect"]);
  });
}

serverTest(`"io client disconnect" (socket.disconnect()) → no reconnect`, async ({ client }) => {
  const socket = client("/", { transports: ["websocket"], ...FAST_RECONNECT });
  const seen = watch(socket);
  await connected(socket);
  const disconnected = once(socket, "disconnect");
  socket.disconnect();
  const [reason] = await disconnected;
  assert.equal(reason, "io client disconnect");
  assert.equal(socket.active, false);
  await sleep(NO_RECONNECT_WINDOW_MS);
  assert.equal(seen.attempts, 0, "no reconnect_attempt");
  assert.equal(seen.connects, 1, "no new connect");
});

serverTest(`"ping timeout" (server paused with SIGSTOP) → reconnects after SIGCONT`, async ({ t, client, server }) => {
  const socket = client("/", { transports: ["websocket"], ...FAST_RECONNECT });
  const seen = watch(socket);
  await connected(socket);
  const firstId = socket.id;
  // Let one heartbeat go by so the client's timer runs from a real ping.
  await once(socket.io, "ping", PING_INTERVAL_MS + 1000);

  const disconnected = once(socket, "disconnect", 5000);
  const paused = Date.now();
  server.signal("SIGSTOP");
  let reason;
  try {
    [reason] = await disconnected;
  } finally {
    server.signal("SIGCONT");
  }
  const after = Date.now() - paused;
  t.diagnostic(`"ping timeout" reported ${after} ms after SIGSTOP`);
  assert.equal(reason, "ping timeout");
  assert.ok(
    after <= PING_INTERVAL_MS + PING_TIMEOUT_MS + 1000,
    `ping timeout noticed after ${after} ms (pingInterval + pingTimeout = ${PING_INTERVAL_MS + PING_TIMEOUT_MS} ms)`,
  );
  assert.equal(socket.active, true, "the client keeps trying");

  await once(socket, "connect", 10000);
  assert.equal(seen.connects, 2);
  assert.notEqual(socket.id, firstId, "a new session after reconnecting");
  await roundTrip(socket, "after ping timeout");
});

// On polling, close-me is sent in a POST; the server answers the pending
// long-poll GET with a close packet ("1"), which the client reports as
// "transport close". If the POST is answered with an error status instead of
// "ok" (roomcast answers it 400 {"code":3,"message":"Bad request"}, see the
// next test) and that response is read first, the client reports
// "transport error" instead: this test then fails intermittently.
for (const transports of [["websocket"], ["polling"]]) {
  const tag = transports[0];
  serverTest(`${tag}: "transport close" (close-me) → reconnects`, async ({ client }) => {
    const socket = client("/", { transports, ...FAST_RECONNECT });
    const seen = watch(socket);
    await connected(socket);
    const firstId = socket.id;
    const disconnected = once(socket, "disconnect");
    socket.emit("close-me");
    const [reason] = await disconnected;
    assert.equal(reason, "transport close");
    assert.equal(socket.active, true);
    await once(socket, "connect", 5000);
    assert.equal(seen.connects, 2);
    assert.notEqual(socket.id, firstId);
    await roundTrip(socket, "after close-me");
  });
}

// Raw Engine.IO, to pin down what the polling client above depends on: a
// POST whose packets were accepted is answered 200 "ok" even when a packet in
// it made the server close the session (socket.io's own server answers the
// POST "ok" as soon as its body is decoded; the event handler that closes runs
// after), and the pending long-poll gets the close packet "1".
serverTest("polling: the POST carrying close-me is answered 200 ok, the pending poll gets the close packet", async ({ server }) => {
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base)).text();
  assert.match(open, /^0\{/);
  const url = `${base}&sid=${JSON.parse(open.slice(1)).sid}`;
  assert.equal(await (await fetch(url, { method: "POST", body: "40" })).text(), "ok");
  assert.match(await (await fetch(url)).text(), /^40\{"sid":/);
  const pending = fetch(url).then(async (r) => [r.status, await r.text()]);
  await sleep(50); // let the GET reach the server and wait there
  const post = await fetch(url, { method: "POST", body: '42["close-me"]' });
  const postBody = await post.text();
  assert.deepEqual(await pending, [200, "1"], "the pending poll gets the close packet");
  assert.deepEqual([post.status, postBody], [200, "ok"], "the POST that carried close-me");
});

serverTest(`websocket: "transport close" (server SIGKILLed) → reconnects to a new server on the same port`, async (ctx) => {
  const { client, server } = ctx;
  const socket = client("/", { transports: ["websocket"], ...FAST_RECONNECT });
  const seen = watch(socket);
  await connected(socket);
  const disconnected = once(socket, "disconnect");
  await server.kill();
  const [reason] = await disconnected;
  assert.equal(reason, "transport close");
  assert.equal(socket.active, true);

  await reconnectsToReplacement(ctx, socket, seen);
});

serverTest(`polling: "transport error" (server SIGKILLed during a long-poll) → reconnects to a new server on the same port`, async (ctx) => {
  const { client, server } = ctx;
  const socket = client("/", { transports: ["polling"], ...FAST_RECONNECT });
  const seen = watch(socket);
  await connected(socket);
  const transport = socket.io.engine.transport;
  assert.equal(transport.name, "polling");
  // Kill the server while only a long-poll GET is in flight: a ping arrives
  // in a poll response, the client starts the next GET and POSTs the pong;
  // once the POST is answered ("drain") the GET is the one pending request,
  // held by the server until the next ping (500 ms). (Killing right after
  // the ping, with the pong POST still in flight, makes the client report
  // the same reason with the description "xhr post error" instead.)
  await once(socket.io.engine, "ping", PING_INTERVAL_MS + 1000);
  await once(socket.io.engine, "drain", 1000);
  const errors = [];
  socket.io.engine.on("error", (err) => errors.push(err));
  const disconnected = once(socket, "disconnect");
  await server.kill();
  const [reason, details] = await disconnected;
  assert.equal(reason, "transport error");
  assert.equal(details?.message, "xhr poll error");
  assert.equal(errors.length, 1);
  assert.equal(socket.active, true);

  await reconnectsToReplacement(ctx, socket, seen);
});
