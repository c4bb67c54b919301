// Socket ids and rooms never mix, across a cluster: three roomcast nodes and
// a Node.js socket.io 4.8 server with @socket.io/redis-adapter 8.x
// (lib/node-server.mjs) on one private Redis, in each protocol (classic;
// sharded, dynamic and static), one socket.io-client 4.8 client on each:
// - every node's socket ids have Socket.IO's form (20 of [A-Za-z0-9_-]);
// - a roomcast client cannot name a socket id as a room: subscribe,
//   publish and presence to another socket's id (on its node, another
//   roomcast node or the Node server), its own or an id-shaped name of no
//   socket are refused with invalid_room, and nothing reaches any socket;
// - a backend reaches a socket by its id wherever it lives, exactly that
//   socket and once: roomcast's HTTP API on each roomcast node, the Node
//   server's `io.to(id)` (which the sharded adapter publishes as a private
//   room), and @socket.io/redis-emitter's `to(id)` (classic: the emitter
//   does not speak the sharded protocol).
//
// Absence is proven with markers: after its messages under test, each
// sender sends a marker to every socket on the same connection, so a stray
// copy would arrive before it.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, MODES, ack, uniq } from "./lib/cluster.mjs";

const SOCKET_ID = /^[A-Za-z0-9_-]{20}$/;

for (const mode of MODES) describe(`socket ids are not rooms: three roomcast nodes and a Node server (${mode})`, { timeout: 60_000 }, () => {
  const cluster = new Cluster(`socket-ids-${mode}`, { mode });
  let N, R1, R2, R3;
  let sockets = [];
  let emitter = null;
  const s = {};

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [N, [R1, R2, R3]] = await Promise.all([cluster.startNodeServer("N"), cluster.startRoomcast("R1", "R2", "R3")]);
      sockets = await Promise.all([
        cluster.client(R1, "R1-ws"),
        cluster.client(R2, "R2-poll", { transport: "polling" }),
        cluster.client(R3, "R3-upgrade", { transport: "upgrade" }),
        cluster.client(N, "N-ws"),
      ]);
      for (const socket of sockets) s[socket.label] = socket;
      if (mode === "classic") {
        emitter = await cluster.emitter();
      }
    }),
  );
  after(() => cluster.close());

  /** The backends: each sends `event` with `data` to `to` (a socket id or a list of them). */
  const senders = () => [
    ...[R1, R2, R3].map((node) => ({
      name: `api@${node.name}`,
      async send(to, event, data) {
        const res = await cluster.api(node, "POST", "/publish", { ...(Array.isArray(to) ? { rooms: to } : { room: to }), event, data });
        assert.equal(res.status, 202, `${node.name}: POST /publish to ${to}: ${res.text}`);
      },
    })),
    {
      name: "io.to@N",
      async send(to, event, data) {
        // Through a client of the Node server standing in for its backend code.
        const reply = await ack(s["N-ws"], "emit-to", { to, event, data }, 4000);
        assert.equal(reply?.ok, true, JSON.stringify(reply));
      },
    },
    ...(emitter
      ? [{ name: "emitter", async send(to, event, data) { emitter.to(to).emit(event, data); } }]
      : []),
  ];

  /** Each sender sends a marker to every socket; resolves once every socket has all of them. */
  async function settle() {
    const id = uniq("marker");
    const ids = sockets.map((x) => x.id);
    const all = senders();
    for (const sender of all) await sender.send(ids, "marker", { id, from: sender.name });
    await Promise.all(
      sockets.map((r) =>
        r.inbox.until(
          (inbox) => all.every((x) => inbox.of("marker").some((m) => m?.id === id && m.from === x.name)),
          5000,
          `markers ${id} at ${r.label}`,
        ),
      ),
    );
  }

  it("socket ids have Socket.IO's form on every node", cluster.wrap(async () => {
    for (const socket of sockets) assert.match(socket.id, SOCKET_ID, socket.label);
  }));

  it("a client cannot subscribe, publish or ask presence with a socket id as the room", cluster.wrap(async () => {
    const tag = uniq("client");
    // roomcast's clients (the Node server is the backend's own code).
    for (const from of sockets.filter((x) => x.node.kind === "roomcast")) {
      const targets = [...sockets.map((x) => x.id), "AAAAAAAAAAAAAAAAAAA_"];
      for (const room of targets) {
        for (const event of ["subscribe", "publish", "presence"]) {
          const reply = await ack(from, event, { room, event: "direct", data: { tag, from: from.label } });
          assert.equal(reply?.ok, false, `${from.label}: ${event} ${room}: ${JSON.stringify(reply)}`);
          assert.equal(reply.error?.code, "invalid_room", `${from.label}: ${event} ${room}: ${JSON.stringify(reply)}`);
        }
      }
    }
    await settle();
    for (const r of sockets) {
      assert.deepEqual(r.inbox.of("direct").filter((p) => p?.tag === tag), [], `${r.label}: nothing from a client`);
    }
  }));

  it("a backend's .to(socket id) reaches exactly that socket, on any node, once", cluster.wrap(async () => {
    const tag = uniq("direct");
    const all = senders();
    for (const sender of all) {
      for (const target of sockets) await sender.send(target.id, "direct", { tag, from: sender.name, to: target.label });
    }
    await Promise.all(
      sockets.map((r) =>
        r.inbox.until(
          (inbox) => all.every((x) => inbox.of("direct").some((p) => p?.tag === tag && p.from === x.name)),
          5000,
          () => `${r.label}: direct messages from ${all.map((x) => x.name).join(", ")} (has ${JSON.stringify(r.inbox.of("direct").filter((p) => p?.tag === tag))})`,
        ),
      ),
    );
    await settle();
    for (const r of sockets) {
      const got = r.inbox
        .of("direct")
        .filter((p) => p?.tag === tag)
        .map((p) => `${p.from}->${p.to}`)
        .sort();
      assert.deepEqual(got, all.map((x) => `${x.name}->${r.label}`).sort(), `${r.label} (on ${r.node.name})`);
    }
  }));

  it("nobody was disconnected", cluster.wrap(async () => {
    assert.deepEqual(cluster.disconnected(), []);
  }));
});
