// The chat example (examples/chat) as a newcomer runs it: its own web
// server (`node examples/chat/server.mjs`, what `npm start` runs) in front of
// a real roomcast process, used by people in Debian's headless Chromium
// (playwright-core), each in a browser context of their own. Covers:
// - roomcast's defaults (what `cargo run --release` runs): ann and bob join
//   "lobby" and see each other in its presence list, by name; their messages
//   reach each other; carol, in "other", gets none of them (a message there
//   after them reaches her, so they would have arrived first); bob leaves
//   and ann sees him go. A screenshot of ann's page is saved as
//   target/example-chat.png for people to look at;
// - the production profile (config/production.toml, what docker compose
//   runs): sockets need a JWT, which the example's server signs with
//   ROOMCAST_JWT_SECRET, and pages come only from the allowed origins:
//   ann and bob chat, presence names them from their tokens;
// - two nodes sharing Redis (as behind the compose balancer): ann on one,
//   bob on the other, see each other and each other's messages;
// - no script error or failed load on any page.
// Chromium comes from Debian (apt-get install chromium) or CHROMIUM_PATH;
// without it the test fails and says so.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { chromium } from "playwright-core";
import { io as ioClient } from "socket.io-client";
import { REPO_ROOT, ack, connectError, connected, serverTest, startRoomcast, within } from "../lib/roomcast.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const CHAT_SERVER = join(REPO_ROOT, "examples", "chat", "server.mjs");
const DEFAULTS = join(REPO_ROOT, "config", "default.toml");
const PRODUCTION = join(REPO_ROOT, "config", "production.toml");
// The profiles listen on every interface; the helpers read 127.0.0.1.
const LOCAL = { ROOMCAST__SERVER__HOST: "127.0.0.1" };
const WAIT = { timeout: 10000 };

/**
 * `node examples/chat/server.mjs` pointed at `roomcastUrl` on `port` (0 =
 * any): { url, log, kill }, once it says where it listens.
 */
async function startChat(roomcastUrl, { port = 0, env = {} } = {}) {
  const child = spawn(process.execPath, [CHAT_SERVER], {
    cwd: join(REPO_ROOT, "examples", "chat"),
    env: { ...process.env, ROOMCAST_URL: roomcastUrl, PORT: String(port), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
  const kill = async () => {
    child.kill("SIGKILL");
    await exited;
  };
  const url = await within(
    new Promise((resolveUrl, reject) => {
      for (const stream of [child.stdout, child.stderr]) {
        stream.setEncoding("utf8");
        stream.on("data", (chunk) => {
          log += chunk;
          const m = /^chat at (http:\/\/[^/\s]+)\//m.exec(log);
          if (m) resolveUrl(m[1]);
        });
      }
      exited.then((how) => reject(new Error(`the chat server exited (${JSON.stringify(how)}):\n${log}`)));
    }),
    10000,
    () => `the chat server did not say where it listens:\n${log}`,
  ).catch(async (e) => {
    await kill();
    throw e;
  });
  return { url, log: () => log, kill };
}

/** A port nothing listens on right now. */
function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
    probe.on("error", reject);
  });
}

/**
 * Runs `fn(open)` with a headless Chromium; `open(url)` is a new person: a
 * page in a browser context of its own. Every page's script errors,
 * console errors and failed loads fail the test.
 */
async function withBrowser(fn) {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  try {
    await fn(async (url) => {
      const page = await (await browser.newContext()).newPage();
      page.on("pageerror", (e) => problems.push(`${url}: script error: ${e.message}`));
      page.on("console", (m) => m.type() === "error" && problems.push(`${url}: console: ${m.text()}`));
      page.on("response", (r) => r.status() >= 400 && problems.push(`${url}: HTTP ${r.status()} for ${r.url()}`));
      await page.goto(url);
      return page;
    });
    assert.deepEqual(problems, [], "errors on the pages");
  } finally {
    await browser.close();
  }
}

/** `name` joins `room` on the chat page and sees themself in it. */
async function enterRoom(page, name, room) {
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join-button");
  await page.waitForSelector("#status.connected", WAIT);
  await sees(page, "#members", `${name} (you)`);
  assert.equal(await page.textContent("#room-title"), `# ${room}`);
}

const sees = (page, selector, text) =>
  page.waitForFunction(([sel, want]) => document.querySelector(sel).textContent.includes(want), [selector, text], WAIT);
const members = (page) => page.$$eval("#members li", (lis) => lis.map((li) => li.textContent).sort());
const messages = (page) => page.$$eval("#messages li", (lis) => lis.map((li) => li.textContent));

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send button");
}

/** Until `page`'s presence list is exactly `want` (sorted). */
async function membersAre(page, want) {
  await page
    .waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll("#members li")].map((li) => li.textContent).sort()) === JSON.stringify(w),
      [...want].sort(),
      WAIT,
    )
    .catch(async (e) => {
      throw new Error(`members ${JSON.stringify(await members(page))}, expected ${JSON.stringify(want)}: ${e.message}`);
    });
}

serverTest(
  "the chat example on roomcast's defaults: rooms, presence and messages between people",
  async ({ server, client, t }) => {
    const chat = await startChat(server.url);
    t.after(chat.kill);
    await withBrowser(async (open) => {
      const ann = await open(chat.url);
      await enterRoom(ann, "ann", "lobby");
      const bob = await open(chat.url);
      await enterRoom(bob, "bob", "lobby");
      // Each learns the other's name (chat:hello, answered by chat:here).
      await membersAre(ann, ["ann (you)", "bob"]);
      await membersAre(bob, ["ann", "bob (you)"]);
      await sees(ann, "#messages", "bob joined");
      assert.equal(await ann.textContent("#member-count"), "(2)");

      const carol = await open(chat.url);
      await enterRoom(carol, "carol", "other");
      await membersAre(carol, ["carol (you)"]);

      await say(ann, "hi bob");
      await sees(bob, "#messages", "annhi bob");
      await sees(ann, "#messages", "annhi bob");
      await say(bob, "hi ann");
      await sees(ann, "#messages", "bobhi ann");

      // Room "other" only: a publish there after the lobby's messages were
      // delivered reaches carol, and nothing of the lobby did.
      const other = client("/", { transports: ["websocket"] });
      await connected(other);
      const marker = { room: "other", id: "test", name: "test", text: "only in other" };
      assert.deepEqual(await ack(other, "publish", { room: "chat:other", event: "chat:message", data: marker }), { ok: true, recipients: 1 });
      await sees(carol, "#messages", "testonly in other");
      const seen = await messages(carol);
      assert.ok(!seen.some((m) => m.includes("hi bob") || m.includes("hi ann") || m.includes("bob joined")), `carol saw the lobby: ${seen}`);

      mkdirSync(join(REPO_ROOT, "target"), { recursive: true });
      await ann.screenshot({ path: join(REPO_ROOT, "target", "example-chat.png"), fullPage: true });

      await bob.click("#leave");
      await sees(ann, "#messages", "bob left");
      await membersAre(ann, ["ann (you)"]);
      assert.equal(await ann.textContent("#member-count"), "(1)");
      assert.ok(await bob.isHidden("#chat"), "bob's chat is gone");
    });
  },
  { timeout: 60000, config: DEFAULTS, env: LOCAL },
);

/**
 * Runs `fn()`; on failure adds the logs of `procs` ({ name: {log} }) to the
 * error.
 */
async function withLogs(procs, fn) {
  try {
    await fn();
  } catch (e) {
    for (const [name, proc] of Object.entries(procs)) {
      const log = `\n--- ${name} ---\n${proc.log()}`;
      e.message += log;
      if (typeof e.stack === "string") e.stack += log;
    }
    throw e;
  }
}

test("the chat example on the production profile: tokens from its server, pages from an allowed origin", { timeout: 60000 }, async (t) => {
  // As docker compose runs the nodes: a JWT secret, and the chat's origin
  // allowed (its port is chosen first, so that roomcast can allow it).
  const secret = randomBytes(32).toString("hex");
  const chatPort = await freePort();
  const origin = `http://127.0.0.1:${chatPort}`;
  const server = await startRoomcast({
    config: PRODUCTION,
    env: { ...LOCAL, ROOMCAST__AUTH__JWT_SECRET: secret, ROOMCAST__SERVER__ALLOWED_ORIGINS: origin },
  });
  t.after(() => server.kill());
  const chat = await startChat(server.url, { port: chatPort, env: { ROOMCAST_JWT_SECRET: secret } });
  t.after(chat.kill);
  await withLogs({ roomcast: server, "chat server": chat }, async () => {
    assert.equal(chat.url, origin);
    // This roomcast takes no anonymous socket.
    const anonymous = ioClient(server.url, { forceNew: true, reconnection: false, transports: ["websocket"] });
    t.after(() => anonymous.close());
    assert.equal((await connectError(anonymous)).data?.code, "auth_required");

    await withBrowser(async (open) => {
      const ann = await open(chat.url);
      await enterRoom(ann, "ann", "lobby");
      const bob = await open(chat.url);
      await enterRoom(bob, "bob", "lobby");
      await membersAre(ann, ["ann (you)", "bob"]);
      await membersAre(bob, ["ann", "bob (you)"]);
      await say(bob, "signed, bob");
      await sees(ann, "#messages", "bobsigned, bob");
    });
  });
});

/** A redis-server of this test's own on a free port: { url, log, kill }. */
async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  for (const stream of [child.stdout, child.stderr]) stream.on("data", (chunk) => (log += chunk));
  const exited = new Promise((r) => child.on("close", r));
  const failed = new Promise((_, reject) =>
    child.on("error", (e) => reject(new Error(`redis-server could not be started (${e.message}): install it (Debian: apt-get install redis-server)`))),
  );
  const kill = async () => {
    child.kill("SIGKILL");
    await exited;
  };
  await within(Promise.race([failed, new Promise((ready) => child.stdout.on("data", () => /Ready to accept/.test(log) && ready()))]), 10000, () => `redis-server did not start:\n${log}`).catch(async (e) => {
    await kill();
    throw e;
  });
  return { url: `redis://127.0.0.1:${port}/`, log: () => log, kill };
}

test("the chat example across two roomcast nodes sharing Redis", { timeout: 60000 }, async (t) => {
  const redis = await startRedis();
  t.after(redis.kill);
  const env = { ...LOCAL, ROOMCAST__REDIS__URL: redis.url };
  const nodes = await Promise.all([0, 1].map(() => startRoomcast({ config: DEFAULTS, env })));
  for (const node of nodes) t.after(() => node.kill());
  await Promise.all(nodes.map((node) => node.waitForLog(/redis adapter subscribed/, 10000)));
  const chats = await Promise.all(nodes.map((node) => startChat(node.url)));
  for (const chat of chats) t.after(chat.kill);
  await withLogs({ "node 1": nodes[0], "node 2": nodes[1] }, async () => {
    await withBrowser(async (open) => {
      const ann = await open(chats[0].url);
      await enterRoom(ann, "ann", "lobby");
      const bob = await open(chats[1].url);
      await enterRoom(bob, "bob", "lobby");
      // Presence counts both nodes; hello and here cross them.
      await membersAre(ann, ["ann (you)", "bob"]);
      await membersAre(bob, ["ann", "bob (you)"]);
      await say(ann, "from node 1");
      await sees(bob, "#messages", "annfrom node 1");
      await say(bob, "from node 2");
      await sees(ann, "#messages", "bobfrom node 2");
      await bob.click("#leave");
      await membersAre(ann, ["ann (you)"]);
    });
  });
});
