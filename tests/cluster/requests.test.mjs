// The requests of @socket.io/redis-adapter 8.x between a Node.js socket.io
// 4.8 server (lib/node-server.mjs) and a roomcast node on one private Redis,
// in each protocol (classic; sharded, dynamic and static). roomcast
// subscribes to the request channel (classic) or the namespace's sharded
// channel, so Node counts it (PUBSUB NUMSUB / SHARDNUMSUB) and waits for its
// answers:
// - fetchSockets on the Node server lists roomcast's members of the room, and
//   completes without waiting for its timeout;
// - allRooms includes roomcast's rooms (classic: the sharded protocol has no
//   room-list request);
// - emitWithAck to a room reaches roomcast's member and completes;
// - serverSideEmitWithAck completes (roomcast answers with null);
// - socketsJoin and disconnectSockets from Node act on a roomcast socket;
// - roomcast's presence counts the Node server's members (Node answers
//   roomcast's REMOTE_FETCH).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, MODES, ack, within } from "./lib/cluster.mjs";

const ROOM = "req:lobby";

for (const mode of MODES) describe(`adapter requests between Node socket.io and roomcast (${mode})`, { timeout: 60_000 }, () => {
  const cluster = new Cluster(`requests-${mode}`, { mode });
  let N, R;
  let onNode, onRoomcast;

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      [N, [R]] = await Promise.all([cluster.startNodeServer("N"), cluster.startRoomcast("R")]);
      onNode = await cluster.client(N, "N-ws", { rooms: [ROOM] });
      onRoomcast = await cluster.client(R, "R-ws", { rooms: [ROOM] });
    }),
  );
  after(() => cluster.close());

  it("fetchSockets on Node lists roomcast's members, without a timeout", cluster.wrap(async () => {
    const reply = await ack(onNode, "presence", { room: ROOM }, 4000);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.equal(reply.count, 2, JSON.stringify(reply));
    assert.ok(reply.members.some((m) => m.id === onRoomcast.id), JSON.stringify(reply));
    assert.ok(reply.ms < 1000, `took ${reply.ms} ms`);
  }));

  // The sharded protocol has no room-list request: Node's allRooms is local there.
  if (mode === "classic") it("allRooms on Node includes roomcast's rooms", cluster.wrap(async () => {
    const reply = await ack(onNode, "all-rooms", {}, 4000);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.ok(reply.rooms.includes(ROOM), JSON.stringify(reply));
    assert.ok(reply.rooms.includes(onRoomcast.id), JSON.stringify(reply));
    assert.ok(reply.ms < 1000, `took ${reply.ms} ms`);
  }));

  it("emitWithAck from Node reaches roomcast's member and completes", cluster.wrap(async () => {
    const asked = new Promise((resolve) => onRoomcast.once("ask", (n) => resolve(n)));
    onNode.on("ask", (n, cb) => cb?.("from-node-client"));
    const reply = await ack(onNode, "ask-all", { room: ROOM }, 4000);
    assert.equal(await within(asked, 3000, "roomcast's member gets the ask"), 1);
    assert.equal(reply.ok, true, JSON.stringify(reply));
  }));

  it("serverSideEmitWithAck from Node completes", cluster.wrap(async () => {
    const reply = await ack(onNode, "server-side-emit", {}, 4000);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.deepEqual(reply.responses, [null]);
    assert.ok(reply.ms < 1000, `took ${reply.ms} ms (the adapter's timeout is 5 s)`);
  }));

  it("roomcast's presence counts the Node server's members", cluster.wrap(async () => {
    const reply = await ack(onRoomcast, "presence", { room: ROOM }, 4000);
    assert.equal(reply.ok, true, JSON.stringify(reply));
    assert.equal(reply.count, 2, JSON.stringify(reply));
    assert.equal(reply.partial, false, JSON.stringify(reply));
    assert.ok(reply.members.some((m) => m.id === onNode.id), JSON.stringify(reply));
  }));

  it("socketsJoin and disconnectSockets from Node act on a roomcast socket", cluster.wrap(async () => {
    let reply = await ack(onNode, "sockets-join", { target: onRoomcast.id, room: "req:joined" }, 4000);
    assert.equal(reply.ok, true);
    // Joined: a publish from Node to that room reaches it.
    const got = new Promise((resolve) => onRoomcast.once("joined-news", resolve));
    let delivered = false;
    for (let i = 0; i < 20 && !delivered; i++) {
      await ack(onNode, "publish", { room: "req:joined", event: "joined-news", data: i });
      delivered = await Promise.race([got.then(() => true), new Promise((r) => setTimeout(() => r(false), 100))]);
    }
    assert.ok(delivered, "roomcast's socket joined the room on Node's request");
    const gone = new Promise((resolve) => onRoomcast.once("disconnect", resolve));
    reply = await ack(onNode, "disconnect-sockets", { target: onRoomcast.id }, 4000);
    assert.equal(reply.ok, true);
    assert.equal(await within(gone, 3000, "roomcast's socket disconnected"), "transport close");
  }));
});
