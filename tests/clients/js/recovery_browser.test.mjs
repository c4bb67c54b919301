// Connection state recovery with the socket.io-client *browser bundle*
// (the one roomcast serves at /socket.io/socket.io.js) in Debian's headless
// Chromium, driven by playwright-core, against a real roomcast process
// (tests/clients/roomcast-pubsub.toml with [recovery] on). Covers:
// - a page's socket over WebSocket, and one over polling, loses its
//   transport (the page closes its WebSocket / its engine: the server sees
//   "transport close"), events are published meanwhile from Node (a
//   socket.io-client publisher, a binary payload among them, and the HTTP
//   API), then the page connects again: `recovered` is true, the id is the
//   same, every missed event arrives exactly once and in publish order (the
//   binary one as an ArrayBuffer), each with its offset as the last
//   argument, then a newer event arrives after them (its room is kept);
// - after the page's own `disconnect()` and `connect()`: `recovered` is
//   false and the socket has a new id.
// Chromium comes from Debian (apt-get install chromium) or CHROMIUM_PATH;
// without it the test fails and says so.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before } from "node:test";
import { chromium } from "playwright-core";
import { PUBSUB, ack, apiRequest, connected, serverTest } from "../lib/roomcast.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const RECOVERY = { ROOMCAST__RECOVERY__ENABLED: "true", ROOMCAST__RECOVERY__NAMESPACES: "/" };
const OFFSET = /^\d+-\d+$/;
const ROOM = "open:browser";

/**
 * The page's own code, run after the bundle: one socket, what it received
 * ("msg" events, summarised so that they cross into Node: an ArrayBuffer
 * becomes its bytes) and a few actions that resolve on the socket's events.
 */
const HELPERS = `
  const view = (v) =>
    v instanceof ArrayBuffer ? { arrayBuffer: Array.from(new Uint8Array(v)) }
    : Array.isArray(v) ? v.map(view)
    : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, view(x)]))
    : v;
  const next = (event) => new Promise((resolve) => window.socket.once(event, resolve));
  // The next connect, or the next connect_error as a rejection.
  const connects = () => new Promise((resolve, reject) => {
    const s = window.socket;
    const ok = () => { s.off("connect_error", refused); resolve(); };
    const refused = (e) => { s.off("connect", ok); reject(new Error("connect_error: " + e.message)); };
    s.once("connect", ok);
    s.once("connect_error", refused);
  });
  window.msgs = [];
  window.t = {
    start(transports) {
      window.socket = io("/", { transports, reconnection: false, forceNew: true });
      window.socket.on("msg", (...args) => window.msgs.push(view(args)));
      return connects().then(() => window.socket.id);
    },
    subscribe(room) {
      return window.socket.timeout(3000).emitWithAck("subscribe", { room });
    },
    // Ends the transport as a lost connection would (not a disconnect()).
    kill() {
      const gone = next("disconnect");
      const engine = window.socket.io.engine;
      if (engine.transport.name === "websocket") engine.transport.ws.close();
      else engine.close();
      return gone;
    },
    reconnect() {
      const back = connects();
      window.socket.connect();
      return back.then(() => ({ id: window.socket.id, recovered: window.socket.recovered }));
    },
    disconnect() {
      window.socket.disconnect();
    },
  };
`;

let browser;
before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
});

/**
 * Opens a page of `server` (its /healthz: a real document of roomcast's
 * origin, so that the page's requests are same-origin and loopback to
 * loopback, which Chromium's local network access checks let through),
 * loads the bundle from /socket.io/socket.io.js into it, then HELPERS, runs
 * `fn(page)`, and asserts the page had no script error.
 */
async function withPage(server, fn) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    page.on("response", (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${new URL(r.url()).pathname}`);
    });
    await page.goto(`${server.url}/healthz`);
    await page.addScriptTag({ url: "/socket.io/socket.io.js" });
    assert.equal(await page.evaluate(() => typeof window.io), "function", "the bundle defines io()");
    await page.addScriptTag({ content: HELPERS });
    await fn(page);
    assert.deepEqual(problems, [], "errors on the page");
  } finally {
    await context.close();
  }
}

/** Waits until the page holds `n` "msg" events, and returns them all. */
async function pageMsgs(page, n) {
  await page
    .waitForFunction((want) => window.msgs.length >= want, n, { timeout: 5000 })
    .catch(async (e) => {
      throw new Error(`${e.message}\nthe page has ${JSON.stringify(await page.evaluate(() => window.msgs))}`);
    });
  return page.evaluate(() => window.msgs);
}

async function publish(socket, data) {
  const answer = await ack(socket, "publish", { room: ROOM, event: "msg", data });
  assert.equal(answer.ok, true, `publish ${JSON.stringify(data)}: ${JSON.stringify(answer)}`);
}

async function recoversInTheBrowser({ server, client }, transports) {
  const pub = client("/", { transports: ["websocket"] });
  await connected(pub);
  await withPage(server, async (page) => {
    const id = await page.evaluate((tr) => window.t.start(tr), transports);
    assert.deepEqual(await page.evaluate((room) => window.t.subscribe(room), ROOM), { ok: true });
    await publish(pub, { n: 0 });
    await pageMsgs(page, 1);

    // The client's view: its WebSocket closed under it, or its engine
    // closed by the page (the server sees "transport close" either way).
    const reason = await page.evaluate(() => window.t.kill());
    assert.equal(reason, transports[0] === "websocket" ? "transport close" : "forced close");
    for (let n = 1; n <= 3; n++) await publish(pub, { n });
    await publish(pub, { n: 4, bin: Buffer.from([1, 2, 3]) });
    const api = await apiRequest(server, "POST", "/publish", { body: { room: ROOM, event: "msg", data: { n: 5 } } });
    assert.ok([200, 202].includes(api.status), `${api.status} ${api.text}`);

    const back = await page.evaluate(() => window.t.reconnect());
    assert.deepEqual(back, { id, recovered: true }, "the same socket, recovered");
    await pageMsgs(page, 6);
    await publish(pub, { n: 6 });
    const msgs = await pageMsgs(page, 7);
    assert.deepEqual(msgs.map(([data]) => data.n), [0, 1, 2, 3, 4, 5, 6], "every event exactly once, in order, then the new one");
    assert.deepEqual(msgs[4][0].bin, { arrayBuffer: [1, 2, 3] }, "the binary payload replayed as binary");
    for (const m of msgs) {
      assert.equal(m.length, 2, `the data and its offset: ${JSON.stringify(m)}`);
      assert.match(m[1], OFFSET);
    }
    assert.equal(new Set(msgs.map((m) => m[1])).size, msgs.length, "distinct offsets");
    // The server's view: the transport was lost (not a client disconnect),
    // and it resumed the socket with the 5 events it had missed.
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /^roomcast_disconnects_total\{reason="transport close"\} 1$/m);
    assert.match(metrics, /^roomcast_recoveries_total 1$/m);
    assert.match(metrics, /^roomcast_recovery_replayed_total 5$/m);
  });
}

serverTest(
  "browser bundle, websocket: a lost transport recovers the id and every missed event once, in order",
  (ctx) => recoversInTheBrowser(ctx, ["websocket"]),
  { timeout: 60000, config: PUBSUB.config, env: RECOVERY },
);

serverTest(
  "browser bundle, polling: a lost transport recovers the id and every missed event once, in order",
  (ctx) => recoversInTheBrowser(ctx, ["polling"]),
  { timeout: 60000, config: PUBSUB.config, env: RECOVERY },
);

serverTest(
  "browser bundle: after the page's own disconnect() and connect() the socket is new, not recovered",
  async ({ server, client }) => {
    const pub = client("/", { transports: ["websocket"] });
    await connected(pub);
    await withPage(server, async (page) => {
      const id = await page.evaluate(() => window.t.start(["websocket"]));
      assert.deepEqual(await page.evaluate((room) => window.t.subscribe(room), ROOM), { ok: true });
      await publish(pub, { n: 0 });
      await pageMsgs(page, 1);
      await page.evaluate(() => window.t.disconnect());
      await publish(pub, { n: 1 });
      const back = await page.evaluate(() => window.t.reconnect());
      assert.equal(back.recovered, false, "a client's own disconnect keeps no session");
      assert.notEqual(back.id, id, "a new socket id");
      // Nothing replayed, and the old room is gone: a new room's event is
      // the only one after the first.
      assert.deepEqual(await page.evaluate(() => window.t.subscribe("open:marker")), { ok: true });
      const answer = await ack(pub, "publish", { room: "open:marker", event: "msg", data: { n: 2 } });
      assert.equal(answer.ok, true, JSON.stringify(answer));
      const msgs = await pageMsgs(page, 2);
      assert.deepEqual(msgs.map(([data]) => data.n), [0, 2]);
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /^roomcast_recoveries_total 0$/m);
    });
  },
  { timeout: 60000, config: PUBSUB.config, env: RECOVERY },
);
