// The Admin UI's protocol in a mixed cluster, with socket.io-client 4.8
// logging in as the UI does (its options, its auth payloads): two roomcast
// nodes with [admin_ui] on, and a Node.js socket.io 4.8 server running
// @socket.io/admin-ui 0.5.1's instrument(), on one Redis (classic
// @socket.io/redis-adapter):
// - a wrong password is refused with "invalid credentials";
// - logged in to roomcast: session, config, all_sockets (the Node.js
//   server's sockets listed too), and server_stats from all three nodes;
//   the session id logs in again;
// - commands from roomcast's admin namespace act on a socket of the
//   Node.js server (join, leave through the adapter's requests; its
//   room_joined reaches the UI from instrument()), and disconnect it ("io
//   server disconnect");
// - logged in to the Node.js server's instrument(): roomcast's
//   server_stats reach it, and its join makes a roomcast socket join.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { API_KEY, Cluster, ack, ioClient, within } from "./lib/cluster.mjs";

const PASSWORD = "roomcast-admin-ui-test";
// bcrypt of PASSWORD (cost 4).
const HASH = "$2a$04$Y7BDY4lxt58PU3zV9yGt6OtbXOE6H75qhpyxcaSlY4iBNidpiiP0S";

/** An admin socket as the UI makes it (App.vue's tryConnect), collecting every event. */
function admin(node, auth) {
  const socket = ioClient(`${node.url}/admin`, {
    forceNew: true,
    reconnection: false,
    withCredentials: true,
    transports: ["polling", "websocket"],
    path: "/socket.io",
    auth,
  });
  socket.events = [];
  socket.onAny((name, ...args) => socket.events.push([name, ...args]));
  return socket;
}

/** Resolves with the first event (past or future) named `name` that `pick` accepts. */
function event(socket, name, pick = () => true, timeoutMs = 10_000) {
  const found = () => socket.events.find(([n, ...args]) => n === name && pick(...args));
  return within(
    new Promise((resolveEvent) => {
      const check = () => {
        const e = found();
        if (e) {
          socket.offAny(check);
          resolveEvent(e.slice(1));
        }
      };
      socket.onAny(check);
      check();
    }),
    timeoutMs,
    `the admin event ${name}`,
  );
}

function connected(socket) {
  return within(
    new Promise((ok, fail) => {
      socket.once("connect", ok);
      socket.once("connect_error", (e) => fail(new Error(`connect_error: ${e.message}`)));
    }),
    10_000,
    "the admin socket's login",
  );
}

async function members(node, room) {
  const res = await fetch(`${node.url}/api/v1/rooms/${room}`, { headers: { authorization: `Bearer ${API_KEY}` } });
  return (await res.json()).count;
}

describe("the Admin UI's protocol in a mixed roomcast and Node.js cluster", { timeout: 60_000 }, () => {
  const cluster = new Cluster("admin ui mixed", {
    env: { ROOMCAST__ADMIN_UI__ENABLED: "true", ROOMCAST__ADMIN_UI__PASSWORD_HASH: HASH, ROOMCAST__ADMIN_UI__STATS_INTERVAL_MS: "500" },
  });
  let A, B, N;
  const admins = [];
  const login = (node, auth) => {
    const socket = admin(node, auth);
    admins.push(socket);
    return socket;
  };

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [A, B] = await cluster.startRoomcast("A", "B");
      N = await cluster.startNodeServer("N", { args: ["--admin-ui", HASH] });
    }),
  );
  after(async () => {
    admins.forEach((s) => s.close());
    await cluster.close();
  });

  it(
    "roomcast's admin namespace: refused, then logged in, sees every node and acts on a Node.js socket",
    cluster.wrap(async () => {
      const wrong = login(A, { username: "admin", password: "nope" });
      await assert.rejects(connected(wrong), /connect_error: invalid credentials/);

      const target = await cluster.client(N, "N-1", { rooms: ["lobby"] });
      const ui = login(A, { username: "admin", password: PASSWORD });
      await connected(ui);
      const [sessionId] = await event(ui, "session");
      const [config] = await event(ui, "config");
      assert.ok(config.supportedFeatures.includes("JOIN"), JSON.stringify(config));
      const [sockets] = await event(ui, "all_sockets");
      const listed = sockets.find((s) => s.id === target.id);
      assert.ok(listed, "the Node.js server's socket is listed");
      assert.deepEqual(listed.rooms.sort(), [target.id, "lobby"].sort());
      // Every node reports, Node.js's instrument() included.
      for (const node of [A, B, N]) {
        const serverId = node.kind === "node" ? `node-${node.proc.pid}` : `#${node.proc.pid}`;
        await event(ui, "server_stats", (s) => s.serverId.endsWith(serverId));
      }

      ui.emit("join", "/", "vip", target.id);
      await event(ui, "room_joined", (nsp, room, id) => room === "vip" && id === target.id);
      assert.equal((await ack(target, "presence", { room: "vip" })).count, 1);
      ui.emit("leave", "/", "vip", target.id);
      await event(ui, "room_left", (nsp, room, id) => room === "vip" && id === target.id);
      const gone = new Promise((r) => target.once("disconnect", r));
      ui.emit("_disconnect", "/", false, target.id);
      assert.equal(await within(gone, 5000, "the Node.js client's disconnect"), "io server disconnect");

      // The session id, on the node that issued it.
      const again = login(A, { sessionId });
      await connected(again);
      await event(again, "config");
    }),
  );

  it(
    "Node.js's instrument() sees roomcast's nodes and its commands reach a roomcast socket",
    cluster.wrap(async () => {
      const target = await cluster.client(B, "B-1", { rooms: ["lobby"] });
      const ui = login(N, { username: "admin", password: PASSWORD });
      await connected(ui);
      await event(ui, "server_stats", (s) => s.serverId.endsWith(`#${B.proc.pid}`));
      ui.emit("join", "/", "vip-node", target.id);
      for (let i = 0; (await members(A, "vip-node")) !== 1; i++) {
        assert.ok(i < 200, "the roomcast socket joined vip-node");
        await new Promise((r) => setTimeout(r, 25));
      }
      // roomcast's update of that join reaches instrument()'s admin sockets.
      await event(ui, "room_joined", (nsp, room, id) => room === "vip-node" && id === target.id);
    }),
  );
});
