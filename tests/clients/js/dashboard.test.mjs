// The live dashboard (/dashboard) in a real browser: Debian's headless
// Chromium driven by playwright-core, against a real roomcast process
// started with tests/clients/roomcast-pubsub.toml. Covers:
// - the page loads the socket.io-client bundle roomcast serves at
//   /socket.io/socket.io.js and its own socket goes live;
// - its live numbers change when a socket.io-client client connects (the
//   session count rises by one) and its room list (with the API key) shows
//   the room the client subscribed to;
// - a publish from its form (with the API key) reaches the subscribed
//   client;
// - no script error on the page. A screenshot is saved as
//   target/dashboard.png for people to look at.
// Chromium comes from Debian (apt-get install chromium) or CHROMIUM_PATH;
// without it the test fails and says so.

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { PUBSUB, REPO_ROOT, ack, connected, once, serverTest } from "../lib/roomcast.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ROOM = "open:dashboard";

serverTest(
  "the dashboard shows live numbers and publishes to a room",
  async ({ server, client }) => {
    assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const errors = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${server.url}/dashboard`);
      // The bundle loaded and the page's own socket connected.
      await page.waitForSelector("#status.live", { timeout: 10000 });
      await page.waitForFunction(() => Number(document.querySelector("#sessions").textContent) >= 1);
      const before = Number(await page.textContent("#sessions"));

      const watcher = client("/", { transports: ["websocket"] });
      await connected(watcher);
      assert.deepEqual(await ack(watcher, "subscribe", { room: ROOM }), { ok: true });
      await page.waitForFunction((n) => Number(document.querySelector("#sessions").textContent) === n, before + 1, { timeout: 5000 });

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
      assert.deepEqual(errors, [], "script errors on the page");
    } finally {
      await browser.close();
    }
  },
  { timeout: 60000, config: PUBSUB.config },
);
