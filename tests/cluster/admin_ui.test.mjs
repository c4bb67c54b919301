// The official Socket.IO Admin UI (@socket.io/admin-ui 0.5.1), as roomcast
// embeds and serves it, in Debian's headless Chromium (playwright-core),
// against three roomcast nodes on one private Redis, socket.io-client 4.8
// clients on each:
// - the page, served by node A at /admin-ui/, loads nothing from another
//   site and logs in (the connection form: server URL, user, password);
// - its server list shows the three nodes, each with its own socket count
//   (the page's own session counted on A);
// - the page of a socket on node C lists its rooms; from there it makes the
//   socket join a room and leave it (the HTTP API counts the room's
//   members), then disconnects it: the client sees "io server disconnect";
// - a wrong password is refused ("Invalid credentials" on the form);
// - a fourth node in read-only mode: the UI logs in there, and the same
//   join is refused (the room stays empty; the node counts the refusal).
// Chromium comes from Debian (apt-get install chromium) or CHROMIUM_PATH;
// without it the test fails and says so.

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import { API_KEY, Cluster, within } from "./lib/cluster.mjs";
import { REPO_ROOT, sleep } from "./lib/procs.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const PASSWORD = "roomcast-admin-ui-test";
// bcrypt of PASSWORD (cost 4: a test's; the check is the same).
const HASH = "$2a$04$Y7BDY4lxt58PU3zV9yGt6OtbXOE6H75qhpyxcaSlY4iBNidpiiP0S";
const UI_ENV = {
  ROOMCAST__ADMIN_UI__ENABLED: "true",
  ROOMCAST__ADMIN_UI__PASSWORD_HASH: HASH,
  ROOMCAST__ADMIN_UI__STATS_INTERVAL_MS: "500",
};

/** The members of `room` in "/" over the cluster, by `node`'s HTTP API. */
async function members(node, room) {
  const res = await fetch(`${node.url}/api/v1/rooms/${encodeURIComponent(room)}`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(res.status, 200);
  return (await res.json()).count;
}

/** Polls `check` until it holds (at most `ms`). */
async function until(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

/** A counter of `node`'s /metrics (`name` with its labels), 0 when absent. */
async function metric(node, name) {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** Logs the page in to `node` through the UI's connection form. */
async function logIn(page, node, password = PASSWORD) {
  const form = page.locator(".v-dialog--active form");
  await form.waitFor({ timeout: 10_000 });
  await form.getByLabel("Server URL").fill(node.url);
  await form.getByLabel("Username").fill("admin");
  await form.getByLabel("Password").fill(password);
  await form.getByRole("button", { name: "Connect" }).click();
}

/**
 * Opens the page of socket `id` as a user does: from the socket list, once
 * the UI has it (the socket page looks the socket up once, when shown).
 */
async function openSocket(page, node, id) {
  await page.goto(`${node.url}/admin-ui/#/sockets/`);
  const row = page.locator("tbody tr:visible", { hasText: id }).first();
  await row.waitFor({ timeout: 10_000 });
  await row.click();
  await page.waitForURL((url) => url.hash.includes(`/sockets/${id}`), { timeout: 10_000 });
}

describe("the Admin UI against three roomcast nodes", { timeout: 120_000 }, () => {
  const cluster = new Cluster("admin ui", { env: UI_ENV });
  let A, B, C;
  let browser;

  before(
    cluster.wrap(async () => {
      assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
      await cluster.startRedis();
      [A, B, C] = await cluster.startRoomcast("A", "B", "C");
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync"],
      });
    }),
  );
  after(async () => {
    await browser?.close();
    await cluster.close();
  });

  /** A new page; `page.problems` collects its script errors, failed loads, requests to other sites. */
  async function newPage() {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const problems = (page.problems = []);
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    page.on("request", (r) => {
      const url = new URL(r.url());
      if (url.hostname !== "127.0.0.1") problems.push(`a request to another site: ${r.url()}`);
    });
    page.on("response", (r) => {
      // The wrong password's refusal is the one expected failure.
      if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${new URL(r.url()).pathname}`);
    });
    return page;
  }

  it(
    "logs in, shows the nodes and their counts, lists a socket's rooms, joins, leaves and disconnects it",
    cluster.wrap(async () => {
      await cluster.client(A, "A-1", { rooms: ["lobby"] });
      await cluster.client(B, "B-1", { rooms: ["lobby"] });
      await cluster.client(B, "B-2", { transport: "polling" });
      const target = await cluster.client(C, "C-1", { rooms: ["lobby", "news"] });
      await cluster.client(C, "C-2");
      await cluster.client(C, "C-3", { transport: "upgrade" });

      const page = await newPage();
      await page.goto(`${A.url}/admin-ui/`);
      await logIn(page, A, "not-the-password");
      await page.locator(".v-dialog--active").getByText("Invalid credentials").waitFor({ timeout: 10_000 });
      await logIn(page, A);
      await page.locator(".v-dialog--active").waitFor({ state: "detached", timeout: 10_000 });

      // Every node reports: A has the page's session besides its client.
      await page.goto(`${A.url}/admin-ui/#/servers`);
      const expected = [
        [A, 2],
        [B, 2],
        [C, 3],
      ];
      for (const [node, count] of expected) {
        const row = page.locator("tbody tr:visible", { hasText: `#${node.proc.pid}` }).first();
        await row.waitFor({ timeout: 10_000 });
        await until(`${node.name}'s row shows ${count} clients`, async () =>
          (await row.locator("td").allTextContents()).map((t) => t.trim()).includes(String(count)),
        );
      }
      mkdirSync(join(REPO_ROOT, "target"), { recursive: true });
      await page.screenshot({ path: join(REPO_ROOT, "target", "admin-ui-servers.png"), fullPage: true });
      // Three servers, no more (the table's footer counts them).
      await page.locator(".v-data-footer", { hasText: "1-3 of 3" }).waitFor({ timeout: 10_000 });

      // A socket of node C: its rooms.
      await openSocket(page, A, target.id);
      const rooms = page.locator(".v-card", { hasText: "Rooms" }).last();
      for (const room of ["lobby", "news", target.id]) {
        await rooms.locator("td", { hasText: room }).first().waitFor({ timeout: 10_000 });
      }
      await page.screenshot({ path: join(REPO_ROOT, "target", "admin-ui-socket.png"), fullPage: true });

      // Join a room from the UI, then leave it.
      await rooms.getByLabel("Join a room").fill("vip");
      await rooms.locator("form button[type=submit]").click();
      await until("the socket joined vip", async () => (await members(B, "vip")) === 1);
      const vip = rooms.locator("tr", { hasText: "vip" });
      await vip.waitFor({ timeout: 10_000 });
      // (The click reaches the row too, which opens the room's page.)
      await vip.locator("button").click();
      await until("the socket left vip", async () => (await members(B, "vip")) === 0);
      await page.locator(".v-chip", { hasText: "Deleted" }).waitFor({ timeout: 10_000 });
      await openSocket(page, A, target.id);
      await rooms.locator("td", { hasText: "lobby" }).first().waitFor({ timeout: 10_000 });
      assert.equal(await rooms.locator("td", { hasText: "vip" }).count(), 0, "vip is gone from its rooms");

      // Disconnect the socket (not its client): "io server disconnect".
      const gone = new Promise((r) => target.once("disconnect", r));
      // The second logout button: the socket's (the first is its client's).
      await page.locator("button:has(i.mdi-logout)").last().click();
      assert.equal(await within(gone, 10_000, "the client's disconnect"), "io server disconnect");
      assert.deepEqual(page.problems, [], "errors on the page");
      await page.close();
    }),
  );

  it(
    "a read-only node refuses the UI's commands",
    cluster.wrap(async () => {
      const [D] = await Promise.all([
        (async () => {
          const saved = cluster.env;
          cluster.env = { ...UI_ENV, ROOMCAST__ADMIN_UI__READ_ONLY: "true" };
          try {
            return (await cluster.startRoomcast("D"))[0];
          } finally {
            cluster.env = saved;
          }
        })(),
      ]);
      const target = await cluster.client(D, "D-1", { rooms: ["lobby"] });
      const page = await newPage();
      await page.goto(`${D.url}/admin-ui/`);
      await logIn(page, D);
      await page.locator(".v-dialog--active").waitFor({ state: "detached", timeout: 10_000 });
      await openSocket(page, D, target.id);
      const rooms = page.locator(".v-card", { hasText: "Rooms" }).last();
      await rooms.locator("td", { hasText: "lobby" }).first().waitFor({ timeout: 10_000 });
      // No command is offered: no leave button, no disconnect button.
      assert.equal(await rooms.locator("tbody button").count(), 0, "no leave button");
      // The join form is the UI's own: what it sends is refused.
      await rooms.getByLabel("Join a room").fill("vip-readonly");
      await rooms.locator("form button[type=submit]").click();
      await until("the join refused", async () => (await metric(D, 'roomcast_admin_ui_commands_total{code="refused"}')) === 1);
      assert.equal(await members(D, "vip-readonly"), 0);
      assert.equal(target.connected, true);
      assert.deepEqual(page.problems, [], "errors on the page");
      await page.close();
    }),
  );
});
