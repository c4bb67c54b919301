// The live dashboard (/dashboard) in a real browser: Debian's headless
// Chromium driven by playwright-core, against a real roomcast process
// started with tests/clients/roomcast-pubsub.toml. Covers:
// - with the socket.io-client bundle (the build embeds it from npm): the page
//   loads it from /socket.io/socket.io.js and its own socket goes live; its
//   numbers change when a socket.io-client client connects (the session
//   count rises by one) and its room list (with the API key) shows the room
//   the client subscribed to; a publish from its form (with the API key)
//   reaches the subscribed client. A screenshot is saved as
//   target/dashboard.png for people to look at;
// - without the bundle (server.serve_client off: the binary serves what a
//   build without npm serves, the bundle's route answers 404 with the hint):
//   the page says the live view is off and why, asks for no script it
//   cannot have, and its numbers still update (a client connecting and
//   leaving moves the session count); publishing needs the API key, and
//   works with it;
// - with server.path = /realtime/: the page loads the bundle from
//   /realtime/socket.io.js, its socket connects under /realtime/ (never
//   /socket.io/), it goes live, counts a client, and watches a room;
// - no script error on any page.
// Chromium comes from Debian (apt-get install chromium) or CHROMIUM_PATH;
// without it the test fails and says so.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import { io as ioClient } from "socket.io-client";
import { PUBSUB, REPO_ROOT, ack, connected, once, serverTest, within } from "../lib/roomcast.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ROOM = "open:dashboard";
const WS = { transports: ["websocket"] };

/**
 * Runs `fn(page, problems)` in a fresh headless Chromium; `problems` collects
 * the page's script errors, console errors and failed loads.
 */
async function withPage(fn) {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    // A failed load is reported with its URL here, and by the console
    // without it. The browser's own /favicon.ico is not the page's.
    page.on("response", (r) => {
      const url = new URL(r.url());
      if (r.status() >= 400 && url.pathname !== "/favicon.ico") problems.push(`HTTP ${r.status()} for ${url.pathname}`);
    });
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console: ${m.text()}`);
    });
    await fn(page, problems);
  } finally {
    await browser.close();
  }
}

/** Waits until the dashboard's session count is `n`. */
function sessionsAre(page, n, timeout = 5000) {
  return page.waitForFunction((want) => document.querySelector("#sessions").textContent === String(want), n, { timeout });
}

serverTest(
  "the dashboard shows live numbers and publishes to a room",
  async ({ server, client }) => {
    await withPage(async (page, problems) => {
      await page.goto(`${server.url}/dashboard`);
      // The bundle loaded and the page's own socket connected.
      await page.waitForSelector("#status.live", { timeout: 10000 });
      assert.equal(await page.isVisible("#live-hint"), false, "no 'live view off' notice");
      await page.waitForFunction(() => Number(document.querySelector("#sessions").textContent) >= 1);
      const before = Number(await page.textContent("#sessions"));

      const watcher = client("/", WS);
      await connected(watcher);
      assert.deepEqual(await ack(watcher, "subscribe", { room: ROOM }), { ok: true });
      await sessionsAre(page, before + 1);

      await page.fill("#api-key", PUBSUB.apiKey);
      await page.dispatchEvent("#api-key", "change");
      await page.waitForFunction((room) => document.querySelector("#rooms").textContent.includes(room), ROOM, { timeout: 5000 });

      await page.fill("#pub-room", ROOM);
      await page.fill("#pub-event", "news");
      await page.fill("#pub-data", '{"from": "dashboard"}');
      const got = once(watcher, "news", 5000);
      await page.click("#pub-send");
      assert.deepEqual(await got, [{ from: "dashboard" }]);
      await page.waitForFunction(() => document.querySelector("#publish-result").textContent.startsWith("HTTP 202"));

      mkdirSync(join(REPO_ROOT, "target"), { recursive: true });
      await page.screenshot({ path: join(REPO_ROOT, "target", "dashboard.png"), fullPage: true });
      assert.deepEqual(problems, [], "errors on the page");
    });
  },
  { timeout: 60000, config: PUBSUB.config },
);

serverTest(
  "without the client bundle the dashboard's numbers still update and it says why the live view is off",
  async ({ server, client }) => {
    // What a build without npm serves: 404 and the reason.
    const res = await fetch(`${server.url}/socket.io/socket.io.js`);
    assert.equal(res.status, 404);
    const hint = (await res.json()).error;
    assert.match(hint, /socket\.io-client bundle/);

    await withPage(async (page, problems) => {
      await page.goto(`${server.url}/dashboard`);
      await page.waitForSelector("#status.off", { timeout: 10000 });
      assert.equal(await page.textContent("#status"), "no live view");
      assert.ok(await page.isVisible("#live-hint"), "the notice is shown");
      const notice = await page.textContent("#live-hint");
      assert.ok(notice.startsWith("Live view off: ") && notice.includes(hint), notice);
      assert.equal(await page.isDisabled("#watch button"), true, "no room to watch without a socket");

      // The numbers come from /metrics alone: no socket of the page's own,
      // one for a client while it is connected.
      await sessionsAre(page, 0);
      const watcher = client("/", WS);
      await connected(watcher);
      await sessionsAre(page, 1);
      assert.deepEqual(await ack(watcher, "subscribe", { room: ROOM }), { ok: true });

      // Publishing: without the API key it says what it needs, with it the
      // HTTP API delivers.
      await page.fill("#pub-room", ROOM);
      await page.fill("#pub-event", "news");
      await page.fill("#pub-data", '{"from": "dashboard"}');
      await page.click("#pub-send");
      await page.waitForFunction(() => document.querySelector("#publish-result").textContent.includes("API key"));
      await page.fill("#api-key", PUBSUB.apiKey);
      await page.dispatchEvent("#api-key", "change");
      const got = once(watcher, "news", 5000);
      await page.click("#pub-send");
      assert.deepEqual(await got, [{ from: "dashboard" }]);

      watcher.disconnect();
      await sessionsAre(page, 0);
      assert.deepEqual(problems, [], "errors on the page (it must not even ask for the missing bundle)");
    });
  },
  { timeout: 60000, config: PUBSUB.config, env: { ROOMCAST__SERVER__SERVE_CLIENT: "false" } },
);

/**
 * roomcast with tests/clients/roomcast-pubsub.toml and `server.path` =
 * `path` on a free port: { url, kill, log }. (lib/roomcast.mjs's
 * startRoomcast reads the port from a log line with the default path.)
 */
async function startAtPath(path) {
  const bin = process.env.ROOMCAST_BIN || resolve(REPO_ROOT, "target", "release", "roomcast");
  assert.ok(existsSync(bin), `roomcast binary not found at ${bin}: set ROOMCAST_BIN or run cargo build --release --bin roomcast`);
  const dir = mkdtempSync(join(tmpdir(), "roomcast-dashboard-"));
  const child = spawn(bin, ["--config", PUBSUB.config], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      NO_COLOR: "1",
      ROOMCAST__SERVER__PORT: "0",
      ROOMCAST__SERVER__PATH: path,
      ROOMCAST__DATABASE__URL: `sqlite://${join(dir, "audit.db")}`,
      ROOMCAST__AUDIT__SPILL_FILE: join(dir, "spill.jsonl"),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const exited = new Promise((r) => child.on("exit", r));
  const listening = new RegExp(`roomcast listening on (http://127\\.0\\.0\\.1:\\d+)${path.replaceAll("/", "\\/")}`);
  const url = await within(
    new Promise((resolveUrl, reject) => {
      for (const stream of [child.stdout, child.stderr]) {
        stream.setEncoding("utf8");
        stream.on("data", (chunk) => {
          log += chunk;
          const m = listening.exec(log);
          if (m) resolveUrl(m[1]);
        });
      }
      exited.then(() => reject(new Error(`roomcast exited before listening:\n${log}`)));
    }),
    10000,
    () => `roomcast did not log that it listens on ${path}:\n${log}`,
  ).catch(async (e) => {
    child.kill("SIGKILL");
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw e;
  });
  return {
    url,
    log: () => log,
    async kill() {
      child.kill("SIGKILL");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("the dashboard follows server.path for the bundle and its socket", { timeout: 60000 }, async () => {
  const path = "/realtime/";
  const server = await startAtPath(path);
  const other = ioClient(server.url, { path, forceNew: true, autoConnect: false, ...WS });
  try {
    assert.equal((await fetch(`${server.url}/realtime/socket.io.js`)).status, 200);
    assert.equal((await fetch(`${server.url}/socket.io/socket.io.js`)).status, 404);
    await withPage(async (page, problems) => {
      const asked = [];
      page.on("request", (r) => asked.push(new URL(r.url()).pathname));
      page.on("websocket", (ws) => asked.push(new URL(ws.url()).pathname));
      await page.goto(`${server.url}/dashboard`);
      await page.waitForSelector("#status.live", { timeout: 10000 });
      assert.equal(await page.getAttribute("body", "data-sio-path"), path);
      assert.ok(asked.includes("/realtime/socket.io.js"), `the bundle from /realtime/: ${asked}`);
      assert.ok(asked.includes("/realtime/"), `the socket under /realtime/: ${asked}`);
      assert.ok(!asked.some((p) => p.startsWith("/socket.io/")), `nothing from /socket.io/: ${asked}`);

      // Its numbers: its own socket, then a client's too.
      await sessionsAre(page, 1);
      other.connect();
      await connected(other);
      await sessionsAre(page, 2);

      // Its live view: it watches a room and sees what is published there.
      await page.fill("#watch-room", ROOM);
      await page.click("#watch button");
      await page.waitForFunction(() => document.querySelector("#watch-log").textContent.includes('subscribe: {"ok":true}'));
      assert.deepEqual(await ack(other, "publish", { room: ROOM, event: "news", data: { n: 1 } }), { ok: true, recipients: 1 });
      await page.waitForFunction(() => document.querySelector("#watch-log").textContent.includes('news {"n":1}'));
      assert.deepEqual(problems, [], "errors on the page");
    });
  } catch (e) {
    const log = `\n--- roomcast at ${path} ---\n${server.log()}`;
    e.message += log;
    if (typeof e.stack === "string") e.stack += log;
    throw e;
  } finally {
    other.io.reconnection(false);
    other.disconnect();
    await server.kill();
  }
});
