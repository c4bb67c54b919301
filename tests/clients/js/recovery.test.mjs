// Connection state recovery with socket.io-client 4.8 against a real
// roomcast process (tests/clients/roomcast-pubsub.toml with [recovery] on).
// Covers:
// - the CONNECT answer carries a `pid`; every broadcast event of a
//   recovering namespace carries its offset as the last argument;
// - the transport killed under a client (WebSocket, polling, and a polling
//   session upgraded to WebSocket), events published meanwhile (by a client
//   and through the HTTP API, binary included), then the client connects
//   again: same socket id, `recovered` true, its rooms kept, every missed
//   event exactly once and in publish order before anything newer, and
//   nothing of rooms it is not in;
// - twice in a row without new events: nothing replayed the second time;
// - several namespaces on one connection recover each their own;
// - a session is taken when it is recovered: after `disconnect()` and
//   `connect()` (a client's own disconnect), and after a server kick
//   ("io server disconnect"), the client gets a fresh socket, `recovered`
//   false, its old rooms gone;
// - after recovery.max_disconnection_ms: a fresh socket;
// - the token is verified again: a client whose token no longer verifies is
//   refused (CONNECT_ERROR), unless recovery.verify_token = false, where it
//   comes back with the identity it had;
// - a client that comes back before the server knows its old connection is
//   gone (a half-open TCP connection: a proxy keeps the server's side open
//   after the client's side died) takes its socket over: recovered, the
//   events written to the dead connection replayed, each once;
// - a client that received no event before its connection was lost (its
//   CONNECT has a pid but no offset) recovers, also after more than the
//   window of other rooms' traffic;
// - /metrics counts recoveries, replayed events and refusals by reason.
//
// A transport is "killed" the way a network failure ends it: the
// WebSocket's TCP socket is destroyed (no close frame), a polling session
// is closed with its client's engine (the server sees "transport close"
// either way). Reconnection is manual (`reconnection: false`, then
// `socket.connect()`), so the events "missed" are published, and acked,
// while the client is certainly away.

import assert from "node:assert/strict";
import { PUBSUB, ack, apiRequest, connected, connectError, once, serverTest, sleep } from "../lib/roomcast.mjs";
import jwt from "jsonwebtoken";
import net from "node:net";

const RECOVERY = {
  ROOMCAST__RECOVERY__ENABLED: "true",
  ROOMCAST__RECOVERY__NAMESPACES: "/,/other,/private",
};
const recoveryTest = (name, fn, { env = {}, ...opts } = {}) =>
  serverTest(name, fn, { config: PUBSUB.config, env: { ...RECOVERY, ...env }, ...opts });

const WS = { transports: ["websocket"], reconnection: false };
const POLLING = { transports: ["polling"], reconnection: false };
const UPGRADE = { transports: ["polling", "websocket"], reconnection: false };

/** Subscribes and asserts the ack is { ok: true }. */
async function subscribe(socket, room) {
  assert.deepEqual(await ack(socket, "subscribe", { room }), { ok: true }, `subscribe ${room}`);
}

/** Publishes through the protocol and asserts it was accepted. */
async function publish(socket, room, event, data) {
  const answer = await ack(socket, "publish", { room, event, data });
  assert.equal(answer.ok, true, `publish ${event} to ${room}: ${JSON.stringify(answer)}`);
}

/** Ends the client's transport as a network failure would, and waits for its disconnect. */
async function killTransport(socket) {
  const gone = once(socket, "disconnect", 5000);
  const transport = socket.io.engine.transport;
  if (transport.name === "websocket") transport.ws._socket.destroy();
  else socket.io.engine.close();
  const [reason] = await gone;
  return reason;
}

/** Connects `socket` again (it keeps its pid and last offset) and waits. */
async function reconnect(socket) {
  socket.connect();
  await connected(socket, 5000);
}

/** Every argument list a socket receives for `event` (offset included). */
function inbox(socket, event) {
  const list = [];
  socket.on(event, (...args) => list.push(args));
  return list;
}

const OFFSET = /^\d+-\d+$/;

async function recoversAcrossAKilledTransport({ server, client }, opts) {
  const sub = client("/", opts);
  const pub = client("/", { transports: ["websocket"] });
  await Promise.all([connected(sub), connected(pub)]);
  await subscribe(sub, "open:r");
  const msgs = inbox(sub, "msg");
  const others = inbox(sub, "other");
  await publish(pub, "open:r", "msg", { n: 0 });
  await within(() => msgs.length === 1, "the first event");
  assert.equal(msgs[0].length, 2, "the event's data and its offset");
  assert.deepEqual(msgs[0][0], { n: 0 });
  assert.match(msgs[0][1], OFFSET);
  const id = sub.id;
  if (opts.transports.length === 2) {
    // The upgrade is done before the transport is killed.
    if (sub.io.engine.transport.name !== "websocket") await once(sub.io.engine, "upgrade", 5000);
  }
  const reason = await killTransport(sub);
  assert.ok(["transport close", "transport error", "forced close"].includes(reason), reason);
  // Missed: client publishes, API publishes (binary among them), and one
  // to a room it is not in.
  for (let n = 1; n <= 5; n++) await publish(pub, "open:r", "msg", { n });
  await publish(pub, "open:r", "msg", { n: 6, bin: Buffer.from([1, 2, 3]) });
  const api = await apiRequest(server, "POST", "/publish", { body: { room: "open:r", event: "msg", data: { n: 7 } } });
  assert.ok([200, 202].includes(api.status), `${api.status} ${api.text}`);
  await publish(pub, "open:x", "other", { n: -1 });
  await reconnect(sub);
  assert.equal(sub.recovered, true, "recovered");
  assert.equal(sub.id, id, "the same socket id");
  await within(() => msgs.length === 8, () => `every missed event (got ${JSON.stringify(msgs)})`);
  // Newer events come after the missed ones, and its room is still its own.
  await publish(pub, "open:r", "msg", { n: 8 });
  await within(() => msgs.length === 9, "the event after recovery");
  assert.deepEqual(
    msgs.map(([data]) => data.n),
    [0, 1, 2, 3, 4, 5, 6, 7, 8],
    "every event once, in order",
  );
  const bin = msgs[6][0].bin;
  assert.deepEqual([...new Uint8Array(bin)], [1, 2, 3], "binary data replayed as binary");
  const offsets = msgs.map((m) => m[m.length - 1]);
  for (const o of offsets) assert.match(o, OFFSET);
  assert.equal(new Set(offsets).size, offsets.length, "offsets are distinct");
  assert.deepEqual(others, [], "nothing of a room it is not in");
  return { sub, pub, msgs };
}

/** Resolves once `predicate()` holds (checked every 10 ms), or fails after 5 s. */
async function within(predicate, what) {
  const deadline = Date.now() + 5000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
    await sleep(10);
  }
}

recoveryTest("websocket: a killed transport recovers its id, rooms and every missed event once, in order", async (ctx) => {
  const { sub, pub, msgs } = await recoversAcrossAKilledTransport(ctx, WS);
  // Twice in a row without new events: nothing is replayed again.
  await killTransport(sub);
  await reconnect(sub);
  assert.equal(sub.recovered, true, "recovered the second time");
  await publish(pub, "open:r", "msg", { n: 9 });
  await within(() => msgs.length === 10, "the marker after the second recovery");
  assert.deepEqual(msgs.slice(9).map(([d]) => d.n), [9], "no replay of events it had");
});

recoveryTest("polling: a killed transport recovers", async (ctx) => {
  await recoversAcrossAKilledTransport(ctx, POLLING);
});

recoveryTest("polling upgraded to websocket: a killed transport recovers (reconnecting over polling again)", async (ctx) => {
  await recoversAcrossAKilledTransport(ctx, UPGRADE);
});

recoveryTest("several namespaces on one connection recover each their own events", async ({ client }) => {
  const main = client("/", WS);
  await connected(main);
  const other = main.io.socket("/other");
  other.connect();
  await connected(other);
  const pub = client("/", { transports: ["websocket"] });
  const pubOther = client("/other", { transports: ["websocket"] });
  await Promise.all([connected(pub), connected(pubOther)]);
  await subscribe(main, "open:a");
  await subscribe(other, "open:a");
  const [inMain, inOther] = [inbox(main, "m"), inbox(other, "m")];
  await publish(pub, "open:a", "m", "main-0");
  await publish(pubOther, "open:a", "m", "other-0");
  await within(() => inMain.length === 1 && inOther.length === 1, "the first events");
  const [idMain, idOther] = [main.id, other.id];
  const gone = once(other, "disconnect", 5000);
  await killTransport(main);
  await gone;
  await publish(pub, "open:a", "m", "main-1");
  await publishOk(pubOther, "open:a", "m", "other-1");
  await publishOk(pubOther, "open:a", "m", "other-2");
  main.connect();
  other.connect();
  await Promise.all([connected(main, 5000), connected(other, 5000)]);
  assert.equal(main.recovered, true);
  assert.equal(other.recovered, true);
  assert.equal(main.id, idMain);
  assert.equal(other.id, idOther);
  await within(() => inMain.length === 2 && inOther.length === 3, "the missed events");
  assert.deepEqual(inMain.map(([d]) => d), ["main-0", "main-1"]);
  assert.deepEqual(inOther.map(([d]) => d), ["other-0", "other-1", "other-2"]);
});

async function publishOk(socket, room, event, data) {
  await publish(socket, room, event, data);
}

recoveryTest("a client's own disconnect, and a server kick, end the session: a fresh socket after", async ({ server, client }) => {
  const { sub, pub, msgs } = await recoversAcrossAKilledTransport({ server, client }, WS);
  // The session was recovered once; the client now disconnects itself.
  const id = sub.id;
  sub.disconnect();
  await publish(pub, "open:r", "msg", { n: 100 });
  await reconnect(sub);
  assert.equal(sub.recovered, false, "a client disconnect keeps no session");
  assert.notEqual(sub.id, id, "a new socket id");
  await publish(pub, "open:r", "msg", { n: 101 });
  // Not in the room any more: prove it with a room it joins now.
  await subscribe(sub, "open:marker");
  await publish(pub, "open:marker", "msg", { n: 102 });
  await within(() => msgs.some(([d]) => d.n === 102), "the marker");
  assert.deepEqual(msgs.slice(9).map(([d]) => d.n), [102], "no replay, no old room");
  // A server kick: "io server disconnect", then a fresh socket.
  const kicked = once(sub, "disconnect", 5000);
  const res = await apiRequest(server, "POST", `/sockets/${encodeURIComponent(sub.id)}/disconnect`);
  assert.deepEqual(res.json, { disconnected: true }, res.text);
  const [reason] = await kicked;
  assert.ok(["io server disconnect", "transport close"].includes(reason), reason);
  const kickedId = sub.id ?? "(gone)";
  await reconnect(sub);
  assert.equal(sub.recovered, false, "a kick keeps no session");
  assert.notEqual(sub.id, kickedId);
});

recoveryTest(
  "after recovery.max_disconnection_ms the client gets a fresh socket",
  async ({ client }) => {
    const sub = client("/", WS);
    const pub = client("/", { transports: ["websocket"] });
    await Promise.all([connected(sub), connected(pub)]);
    await subscribe(sub, "open:r");
    const msgs = inbox(sub, "msg");
    await publish(pub, "open:r", "msg", 1);
    await within(() => msgs.length === 1, "the first event");
    const id = sub.id;
    await killTransport(sub);
    await publish(pub, "open:r", "msg", 2);
    // A deliberate wait past the window (the broker expires once a second).
    await sleep(2600);
    await reconnect(sub);
    assert.equal(sub.recovered, false);
    assert.notEqual(sub.id, id);
    await sleep(100);
    assert.deepEqual(msgs.map(([d]) => d), [1], "nothing replayed");
  },
  { env: { ROOMCAST__RECOVERY__MAX_DISCONNECTION_MS: "1000" } },
);

function mint(claims) {
  const now = Math.floor(Date.now() / 1000);
  return jwt.sign({ aud: PUBSUB.jwtAudience, exp: now + 3600, ...claims }, PUBSUB.jwtSecret, { algorithm: "HS256" });
}

async function tokenScenario({ client }) {
  let token = mint({ sub: "ann", subscribe: ["r:*"], publish: ["r:*"] });
  const sub = client("/private", { ...WS, auth: (cb) => cb({ token }) });
  const pub = client("/private", { transports: ["websocket"], auth: { token: mint({ sub: "bob", publish: ["r:*"] }) } });
  await Promise.all([connected(sub), connected(pub)]);
  await subscribe(sub, "r:1");
  const msgs = inbox(sub, "msg");
  await publish(pub, "r:1", "msg", 1);
  await within(() => msgs.length === 1, "the first event");
  const id = sub.id;
  await killTransport(sub);
  await publish(pub, "r:1", "msg", 2);
  // The token is revoked meanwhile: what the client sends no longer verifies.
  token = mint({ sub: "ann", subscribe: ["r:*"] }).replace(/.$/, (c) => (c === "A" ? "B" : "A"));
  return { sub, pub, msgs, id };
}

recoveryTest("a recovering client's token is verified again: refused when it no longer verifies", async (ctx) => {
  const { sub } = await tokenScenario(ctx);
  sub.connect();
  const err = await connectError(sub, 5000);
  assert.equal(err.data?.code, "invalid_token", JSON.stringify(err.data));
  const metrics = await (await fetch(`${ctx.server.url}/metrics`)).text();
  assert.match(metrics, /roomcast_recoveries_refused_total\{code="token"\} 1\b/);
});

recoveryTest(
  "with recovery.verify_token = false the session comes back with the identity it had",
  async (ctx) => {
    const { sub, pub, msgs, id } = await tokenScenario(ctx);
    await reconnect(sub);
    assert.equal(sub.recovered, true);
    assert.equal(sub.id, id);
    await within(() => msgs.length === 2, "the missed event");
    // Its rights are the old token's: it may still subscribe to r:*.
    await subscribe(sub, "r:2");
    await publish(pub, "r:2", "msg", 3);
    await within(() => msgs.length === 3, "an event of the room joined after recovery");
    assert.deepEqual(msgs.map(([d]) => d), [1, 2, 3]);
  },
  { env: { ROOMCAST__RECOVERY__VERIFY_TOKEN: "false" } },
);

recoveryTest("/metrics counts recoveries, replayed events and refusals", async ({ server, client }) => {
  await recoversAcrossAKilledTransport({ server, client }, WS);
  // A made-up pid: refused as unknown, and the client gets a fresh socket.
  const stranger = client("/", { ...WS, auth: { pid: "not-a-session", offset: "1-0" } });
  await connected(stranger);
  assert.equal(stranger.recovered, false);
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /^roomcast_recoveries_total 1$/m);
  assert.match(metrics, /^roomcast_recovery_replayed_total 7$/m);
  assert.match(metrics, /^roomcast_recoveries_refused_total\{code="unknown"\} 1$/m);
});

/**
 * A TCP proxy to `port`; `halfOpen()` makes every later client-side close
 * leave the server's side open (as a connection whose client vanished
 * without a FIN looks to the server).
 */
async function proxyTo(port) {
  let keepServerSide = false;
  const upstreams = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(port, "127.0.0.1");
    upstreams.add(up);
    down.pipe(up, { end: false });
    up.pipe(down, { end: false });
    down.on("error", () => {});
    up.on("error", () => {});
    down.on("close", () => {
      if (!keepServerSide) up.destroy();
      else up.unpipe(down);
    });
    up.on("close", () => down.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    halfOpen() {
      keepServerSide = true;
    },
    close() {
      for (const up of upstreams) up.destroy();
      server.close();
    },
  };
}

recoveryTest(
  "a client back before its old connection is known to be gone takes its socket over",
  async ({ server, client, track }) => {
    const proxy = await proxyTo(Number(new URL(server.url).port));
    try {
      const { io } = await import("socket.io-client");
      const sub = track(io(proxy.url, { forceNew: true, ...WS }));
      const pub = client("/", { transports: ["websocket"] });
      await Promise.all([connected(sub), connected(pub)]);
      await subscribe(sub, "open:r");
      const msgs = inbox(sub, "msg");
      await publish(pub, "open:r", "msg", 0);
      await within(() => msgs.length === 1, "the first event");
      const id = sub.id;
      proxy.halfOpen();
      await killTransport(sub);
      // Written by the server to its end of the dead connection.
      await publish(pub, "open:r", "msg", 1);
      await publish(pub, "open:r", "msg", 2);
      await reconnect(sub);
      assert.equal(sub.recovered, true, "recovered while the old connection was still open on the server");
      assert.equal(sub.id, id);
      await publish(pub, "open:r", "msg", 3);
      await within(() => msgs.length === 4, () => `the events (got ${JSON.stringify(msgs)})`);
      await sleep(200);
      assert.deepEqual(msgs.map(([d]) => d), [0, 1, 2, 3], "each once, in order");
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /^roomcast_sockets\{namespace="\/"\} 2$/m, "the old socket left the namespace");
    } finally {
      proxy.close();
    }
  },
  // The server would not notice the dead connection for seconds.
  { env: { ROOMCAST__ENGINE__PING_INTERVAL_MS: "5000", ROOMCAST__ENGINE__PING_TIMEOUT_MS: "5000" } },
);

recoveryTest("a client that received no event before it lost its connection recovers too", async ({ client }) => {
  const sub = client("/", WS);
  const pub = client("/", { transports: ["websocket"] });
  await Promise.all([connected(sub), connected(pub)]);
  await subscribe(sub, "open:quiet");
  const msgs = inbox(sub, "msg");
  const id = sub.id;
  await killTransport(sub);
  await publish(pub, "open:quiet", "msg", 1);
  await publish(pub, "open:quiet", "msg", 2);
  await reconnect(sub);
  assert.equal(sub.recovered, true, "recovered without an offset");
  assert.equal(sub.id, id);
  await within(() => msgs.length === 2, "the missed events");
  assert.deepEqual(msgs.map(([d]) => d), [1, 2]);
});

recoveryTest(
  "a quiet socket in a busy namespace recovers after more than the window of others' traffic",
  async ({ client }) => {
    const sub = client("/", WS);
    const pub = client("/", { transports: ["websocket"] });
    await Promise.all([connected(sub), connected(pub)]);
    await subscribe(sub, "open:quiet");
    const msgs = inbox(sub, "msg");
    // Others' traffic for longer than the window: the log has nothing left
    // of the time the quiet socket joined.
    const until = Date.now() + 2600;
    for (let n = 0; Date.now() < until; n++) {
      await publish(pub, "open:busy", "msg", n);
      await sleep(20);
    }
    const id = sub.id;
    await killTransport(sub);
    await publish(pub, "open:quiet", "msg", "missed");
    await reconnect(sub);
    assert.equal(sub.recovered, true, "recovered: nothing reached it before, so it missed nothing older");
    assert.equal(sub.id, id);
    await within(() => msgs.length === 1, "the missed event");
    assert.deepEqual(msgs.map(([d]) => d), ["missed"]);
  },
  { env: { ROOMCAST__RECOVERY__MAX_DISCONNECTION_MS: "1000" } },
);
