// The pub/sub protocol of docs/protocol.md (subscribe / unsubscribe /
// publish / presence with acks) with socket.io-client 4.8 against a real
// roomcast process started with tests/clients/roomcast-pubsub.toml.
// Covers:
// - 40 clients (half websocket-only, half polling that upgrades to
//   websocket) in 4 rooms of "/", each publishing once, concurrently: every
//   publish reaches exactly the other members of its room, exactly once
//   (counted per receiver and sender), the publisher never gets its own,
//   nothing leaks across rooms; a client in two rooms gets each publish to
//   either once; the same room names in "/other" get nothing; every publish
//   ack says `recipients` = the other members; presence counts and lists
//   the members by their socket.id. Completeness is proven with a marker
//   published (through the HTTP API) after every publish was acked: the
//   broker hands out in order, so nothing acked earlier can arrive later;
// - presence lists members in join order; subscribing twice is harmless;
// - unsubscribe stops delivery (proven with a later marker in another room);
// - presence:join / presence:leave {room, id, user} in a notify namespace
//   ("/other"), never to the socket itself, also on disconnect; none in "/";
// - binary data in a publish arrives as binary (websocket and polling
//   receivers), nested and top-level;
// - error acks: bad_request, invalid_room, invalid_event, unknown_event,
//   too_many_rooms (rooms.max_per_socket = 5) — each followed by a check
//   that the connection still works; an unknown event without an ack is
//   ignored.

import assert from "node:assert/strict";
import { PUBSUB, ack, apiRequest, collect, connected, once, serverTest } from "../lib/roomcast.mjs";

const pubsubTest = (name, fn, opts = {}) => serverTest(name, fn, { config: PUBSUB.config, ...opts });

const WS = { transports: ["websocket"] };
const POLLING_UPGRADE = { transports: ["polling", "websocket"], upgrade: true };

/** Subscribes and asserts the ack is { ok: true }. */
async function subscribe(socket, room) {
  assert.deepEqual(await ack(socket, "subscribe", { room }), { ok: true }, `subscribe ${room}`);
}

/** The bytes of a binary value as received (Buffer or ArrayBuffer); fails on anything else. */
function asBuffer(value, what) {
  assert.ok(
    Buffer.isBuffer(value) || value instanceof ArrayBuffer || ArrayBuffer.isView(value),
    `${what}: expected binary, got ${JSON.stringify(value)}`,
  );
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** Asserts an error ack with `code`. */
function assertError(reply, code, what) {
  assert.equal(reply?.ok, false, `${what}: expected an error ack, got ${JSON.stringify(reply)}`);
  assert.equal(reply.error?.code, code, `${what}: ${JSON.stringify(reply)}`);
  assert.equal(typeof reply.error.message, "string", `${what}: error.message`);
}

pubsubTest(
  "40 clients in 4 rooms: each publish reaches exactly the other members of its room, once",
  async ({ client, server }) => {
    const N = 40;
    const ROOMS = ["open:room-0", "open:room-1", "open:room-2", "open:room-3"];
    const roomOf = (i) => ROOMS[i % ROOMS.length];

    const clients = Array.from({ length: N }, (_, i) => client("/", i % 2 === 0 ? WS : POLLING_UPGRADE));
    // Not a publisher: in room-0 and room-1 both.
    const dual = client("/", WS);
    // "/other": the same room names, another namespace (one polling).
    const others = ROOMS.map((_, k) => client("/other", k === 0 ? POLLING_UPGRADE : WS));
    await Promise.all([...clients, dual, ...others].map((s) => connected(s, 5000)));

    // Inboxes before any subscribe, so nothing can be missed.
    const inbox = new Map();
    for (const s of [...clients, dual, ...others]) {
      inbox.set(s, { msg: collect(s, "msg"), marker: collect(s, "marker") });
    }

    await Promise.all(clients.map((s, i) => subscribe(s, roomOf(i))));
    await subscribe(dual, ROOMS[0]);
    await subscribe(dual, ROOMS[1]);
    await Promise.all(others.map((s, k) => subscribe(s, ROOMS[k])));

    // Who is in which room of "/".
    const members = new Map(ROOMS.map((r) => [r, []]));
    clients.forEach((s, i) => members.get(roomOf(i)).push(s));
    members.get(ROOMS[0]).push(dual);
    members.get(ROOMS[1]).push(dual);

    // presence: complete count, members by socket.id, anonymous (user null).
    for (const room of ROOMS) {
      const asker = members.get(room)[0];
      const reply = await ack(asker, "presence", { room });
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.equal(reply.room, room);
      assert.equal(reply.count, members.get(room).length, `presence count of ${room}`);
      assert.deepEqual(
        reply.members.map((m) => m.id).sort(),
        members.get(room).map((s) => s.id).sort(),
        `presence members of ${room}`,
      );
      for (const m of reply.members) assert.equal(m.user, null);
    }
    // In "/other" each room has one member.
    for (const [k, s] of others.entries()) {
      const reply = await ack(s, "presence", { room: ROOMS[k] });
      assert.deepEqual(reply, { ok: true, room: ROOMS[k], count: 1, members: [{ id: s.id, user: null }] });
    }

    // Everyone publishes once, all at the same time.
    const acks = await Promise.all(
      clients.map((s, i) => ack(s, "publish", { room: roomOf(i), event: "msg", data: { from: i, room: roomOf(i) } }, 5000)),
    );
    acks.forEach((reply, i) => {
      assert.deepEqual(
        reply,
        { ok: true, recipients: members.get(roomOf(i)).length - 1 },
        `publish ack of client ${i} (${roomOf(i)})`,
      );
    });

    // Markers, after every publish was acked: once they arrived, nothing
    // of the above can still be on its way.
    const marker = await apiRequest(server, "POST", "/publish", { body: { rooms: ROOMS, event: "marker", data: "/" } });
    assert.equal(marker.status, 202, marker.text);
    assert.deepEqual(marker.json, { local_recipients: N + 1, cluster: false, recipients: N + 1 }, "the marker reaches each of / once (dual too)");
    const otherMarker = await apiRequest(server, "POST", "/publish", {
      body: { namespace: "/other", rooms: ROOMS, event: "marker", data: "/other" },
    });
    assert.deepEqual(otherMarker.json, { local_recipients: ROOMS.length, cluster: false, recipients: ROOMS.length });
    await Promise.all(
      [...inbox.entries()].map(([s, box]) => box.marker.until((l) => l.length >= 1, 5000, `marker at ${s.id}`)),
    );

    // Per receiver: from whom, how often.
    const indexOf = new Map(clients.map((s, i) => [s, i]));
    for (const [s, box] of inbox.entries()) {
      assert.equal(box.marker.list.length, 1, `marker exactly once at ${s.id}`);
      const got = new Map();
      for (const data of box.msg.list) got.set(data.from, (got.get(data.from) ?? 0) + 1);
      let expected;
      if (others.includes(s)) {
        expected = [];
      } else if (s === dual) {
        expected = [...members.get(ROOMS[0]), ...members.get(ROOMS[1])].filter((m) => m !== dual).map((m) => indexOf.get(m));
      } else {
        const i = indexOf.get(s);
        expected = members.get(roomOf(i)).filter((m) => m !== s && m !== dual).map((m) => indexOf.get(m));
        for (const data of box.msg.list) assert.equal(data.room, roomOf(i), `client ${i} got a message of another room`);
      }
      const who = s === dual ? "dual" : others.includes(s) ? `/other ${others.indexOf(s)}` : `client ${indexOf.get(s)}`;
      assert.deepEqual([...got.keys()].sort((a, b) => a - b), expected.sort((a, b) => a - b), `senders received by ${who}`);
      for (const [from, n] of got) assert.equal(n, 1, `${who} got client ${from}'s publish ${n} times`);
    }
    // Every polling client upgrades (most did so during the run).
    for (const [i, s] of clients.entries()) {
      if (i % 2 === 1 && s.io.engine.transport.name !== "websocket") {
        await once(s.io.engine, "upgrade", 5000).catch(() => assert.fail(`client ${i} did not upgrade to websocket`));
      }
    }
  },
  { timeout: 30000 },
);

pubsubTest("presence lists members in join order; subscribing twice is harmless", async ({ client }) => {
  const room = "open:order";
  const [a, b, c] = [client("/", WS), client("/", POLLING_UPGRADE), client("/", WS)];
  await Promise.all([a, b, c].map((s) => connected(s)));
  for (const s of [a, b, c]) await subscribe(s, room);
  await subscribe(a, room); // again: no change
  let reply = await ack(c, "presence", { room });
  assert.deepEqual(reply, {
    ok: true,
    room,
    count: 3,
    members: [a, b, c].map((s) => ({ id: s.id, user: null })),
  });

  // Leave and join again: b goes to the end.
  assert.deepEqual(await ack(b, "unsubscribe", { room }), { ok: true });
  await subscribe(b, room);
  reply = await ack(a, "presence", { room });
  assert.deepEqual(reply.members.map((m) => m.id), [a.id, c.id, b.id]);

  // a, subscribed twice, still gets a publish once.
  const got = collect(a, "twice");
  const marker = collect(a, "marker");
  assert.deepEqual(await ack(c, "publish", { room, event: "twice", data: 1 }), { ok: true, recipients: 2 });
  assert.deepEqual(await ack(c, "publish", { room, event: "marker" }), { ok: true, recipients: 2 });
  await marker.until((l) => l.length === 1);
  assert.deepEqual(got.list, [1]);

  // A room nobody is in: count 0; publishing to it reaches no one, and the
  // publisher need not be subscribed.
  assert.deepEqual(await ack(a, "presence", { room: "open:empty" }), { ok: true, room: "open:empty", count: 0, members: [] });
  assert.deepEqual(await ack(a, "publish", { room: "open:empty", event: "x" }), { ok: true, recipients: 0 });
});

pubsubTest("unsubscribe stops delivery", async ({ client }) => {
  const room = "open:unsub";
  const [a, b, c] = [client("/", WS), client("/", POLLING_UPGRADE), client("/", WS)];
  await Promise.all([a, b, c].map((s) => connected(s)));
  for (const s of [a, b, c]) await subscribe(s, room);
  await subscribe(b, "open:marker");
  const bMsgs = collect(b, "msg");
  const cMsgs = collect(c, "msg");
  const bMarker = collect(b, "marker");

  assert.deepEqual(await ack(a, "publish", { room, event: "msg", data: "before" }), { ok: true, recipients: 2 });
  await bMsgs.until((l) => l.length === 1);
  assert.deepEqual(await ack(b, "unsubscribe", { room }), { ok: true });
  // Unsubscribing from a room one is not in is fine too.
  assert.deepEqual(await ack(b, "unsubscribe", { room: "open:never" }), { ok: true });

  assert.deepEqual(await ack(a, "publish", { room, event: "msg", data: "after" }), { ok: true, recipients: 1 });
  assert.deepEqual(await ack(a, "publish", { room: "open:marker", event: "marker" }), { ok: true, recipients: 1 });
  await bMarker.until((l) => l.length === 1);
  await cMsgs.until((l) => l.length === 2);
  assert.deepEqual(cMsgs.list, ["before", "after"]);
  assert.deepEqual(bMsgs.list, ["before"], "b got a publish after it unsubscribed");

  const reply = await ack(a, "presence", { room });
  assert.deepEqual(reply.members.map((m) => m.id), [a.id, c.id]);
});

pubsubTest("presence:join and presence:leave in a notify namespace, none in /", async ({ client }) => {
  const room = "open:lobby";
  const [a, b, c] = [client("/other", WS), client("/other", POLLING_UPGRADE), client("/other", WS)];
  await Promise.all([a, b, c].map((s) => connected(s)));
  const joins = new Map([a, b, c].map((s) => [s, collect(s, "presence:join")]));
  const leaves = new Map([a, b, c].map((s) => [s, collect(s, "presence:leave")]));
  const markers = new Map([a, b, c].map((s) => [s, collect(s, "marker")]));
  const bId = b.id;
  const cId = c.id;

  await subscribe(a, room);
  await subscribe(b, room);
  await joins.get(a).until((l) => l.length === 1);
  assert.deepEqual(joins.get(a).list, [{ room, id: bId, user: null }]);

  await subscribe(c, room);
  await joins.get(a).until((l) => l.length === 2);
  await joins.get(b).until((l) => l.length === 1);
  assert.deepEqual(joins.get(a).list[1], { room, id: cId, user: null });
  assert.deepEqual(joins.get(b).list, [{ room, id: cId, user: null }]);

  assert.deepEqual(await ack(b, "unsubscribe", { room }), { ok: true });
  await leaves.get(a).until((l) => l.length === 1);
  await leaves.get(c).until((l) => l.length === 1);
  assert.deepEqual(leaves.get(a).list, [{ room, id: bId, user: null }]);
  assert.deepEqual(leaves.get(c).list, [{ room, id: bId, user: null }]);

  // A disconnect is a leave too.
  c.disconnect();
  await leaves.get(a).until((l) => l.length === 2);
  assert.deepEqual(leaves.get(a).list[1], { room, id: cId, user: null });

  // Nobody heard of their own join or leave: a marker to each of a and b
  // arrives after anything already sent to them. (b joins open:marker
  // first, alone; a's join of it goes to b.)
  await subscribe(b, "open:marker");
  await subscribe(a, "open:marker");
  await joins.get(b).until((l) => l.length === 2);
  assert.deepEqual(joins.get(b).list[1], { room: "open:marker", id: a.id, user: null });
  const d = client("/other", WS);
  await connected(d);
  assert.deepEqual(await ack(d, "publish", { room: "open:marker", event: "marker" }), { ok: true, recipients: 2 });
  await markers.get(a).until((l) => l.length === 1);
  await markers.get(b).until((l) => l.length === 1);
  assert.deepEqual(joins.get(a).list.map((j) => j.id), [bId, cId], "a saw exactly the joins of b and c");
  assert.ok(joins.get(b).list.every((j) => j.id !== bId), "b was told of its own join");
  assert.deepEqual(leaves.get(b).list, [], "b was told of a leave (its own)");
  assert.equal(leaves.get(a).list.length, 2);
  assert.ok(joins.get(c).list.every((j) => j.id !== cId), "c was told of its own join");

  // "/" is not a notify namespace: no presence events there.
  const [x, y] = [client("/", WS), client("/", WS)];
  await Promise.all([x, y].map((s) => connected(s)));
  const xJoins = collect(x, "presence:join");
  const xLeaves = collect(x, "presence:leave");
  const xMarker = collect(x, "marker");
  await subscribe(x, "open:quiet");
  await subscribe(y, "open:quiet");
  assert.deepEqual(await ack(y, "unsubscribe", { room: "open:quiet" }), { ok: true });
  assert.deepEqual(await ack(y, "publish", { room: "open:quiet", event: "marker" }), { ok: true, recipients: 1 });
  await xMarker.until((l) => l.length === 1);
  assert.deepEqual(xJoins.list, [], "presence:join in /");
  assert.deepEqual(xLeaves.list, [], "presence:leave in /");
});

pubsubTest("binary data in a publish arrives as binary", async ({ client }) => {
  const room = "open:bin";
  const [pub, wsRecv, pollRecv] = [client("/", WS), client("/", WS), client("/", { transports: ["polling"] })];
  await Promise.all([pub, wsRecv, pollRecv].map((s) => connected(s)));
  await subscribe(wsRecv, room);
  await subscribe(pollRecv, room);
  const inboxes = [wsRecv, pollRecv].map((s) => collect(s, "bin"));

  const ALL = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const UTF8 = Buffer.from("héllo ✓", "utf8");
  const BIG = Buffer.alloc(100_000, 0xab);
  assert.deepEqual(
    await ack(pub, "publish", { room, event: "bin", data: { all: ALL, nested: { list: [UTF8, 7, "x"] }, empty: Buffer.alloc(0) } }),
    { ok: true, recipients: 2 },
  );
  assert.deepEqual(await ack(pub, "publish", { room, event: "bin", data: BIG }), { ok: true, recipients: 2 });
  for (const [k, box] of inboxes.entries()) {
    const who = k === 0 ? "websocket receiver" : "polling receiver";
    await box.until((l) => l.length === 2, 3000, `2 binary messages at the ${who}`);
    const [first, second] = box.list;
    assert.ok(asBuffer(first.all, `${who} all`).equals(ALL), `${who}: bytes 0..255`);
    assert.ok(asBuffer(first.nested.list[0], `${who} utf8`).equals(UTF8), `${who}: utf8 bytes`);
    assert.deepEqual(first.nested.list.slice(1), [7, "x"]);
    assert.equal(asBuffer(first.empty, `${who} empty`).length, 0);
    assert.ok(asBuffer(second, `${who} big`).equals(BIG), `${who}: 100 kB top-level Buffer`);
  }
});

pubsubTest("error acks, and the connection keeps working after each", async ({ client }) => {
  const s = client("/", WS);
  const peer = client("/", WS);
  await Promise.all([s, peer].map((x) => connected(x)));
  await subscribe(peer, "open:alive");
  const peerInbox = collect(peer, "alive");
  let n = 0;
  /** The connection still works: an ack round-trip and a publish that arrives. */
  const stillWorks = async (what) => {
    assert.ok(s.connected, `${what}: disconnected`);
    n += 1;
    const reply = await ack(s, "publish", { room: "open:alive", event: "alive", data: n });
    assert.deepEqual(reply, { ok: true, recipients: 1 }, `${what}: publish after the error`);
    await peerInbox.until((l) => l.includes(n), 3000, `alive #${n} after ${what}`);
  };

  const cases = [
    ["subscribe", { room: "bad room!" }, "invalid_room"],
    ["subscribe", { room: "" }, "invalid_room"],
    ["subscribe", { room: `open:${"x".repeat(124)}` }, "invalid_room"], // 129 bytes
    ["subscribe", { room: "salon:café" }, "invalid_room"],
    ["unsubscribe", { room: "bad room!" }, "invalid_room"],
    ["presence", { room: "bad room!" }, "invalid_room"],
    ["publish", { room: "bad room!", event: "x" }, "invalid_room"],
    ["subscribe", {}, "bad_request"],
    ["subscribe", { room: 5 }, "bad_request"],
    ["subscribe", "open:x", "bad_request"],
    ["subscribe", ["open:x"], "bad_request"],
    ["presence", null, "bad_request"],
    ["publish", { event: "x" }, "bad_request"],
    ["publish", { room: "open:alive" }, "invalid_event"],
    ["publish", { room: "open:alive", event: "" }, "invalid_event"],
    ["publish", { room: "open:alive", event: 5 }, "invalid_event"],
    ["publish", { room: "open:alive", event: "e".repeat(129) }, "invalid_event"],
    ...["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"].map((event) => [
      "publish",
      { room: "open:alive", event },
      "invalid_event",
    ]),
    ["frobnicate", { room: "open:alive" }, "unknown_event"],
    ["message", "hello", "unknown_event"],
  ];
  for (const [event, arg, code] of cases) {
    const what = `${event} ${JSON.stringify(arg)?.slice(0, 40)}`;
    assertError(await ack(s, event, arg), code, what);
    await stillWorks(what);
  }
  // Without an argument at all.
  assertError(await s.timeout(3000).emitWithAck("subscribe"), "bad_request", "subscribe without argument");
  await stillWorks("subscribe without argument");

  // Longest names are fine.
  const longRoom = `open:${"r".repeat(123)}`;
  assert.equal(longRoom.length, 128);
  assert.deepEqual(await ack(s, "presence", { room: longRoom }), { ok: true, room: longRoom, count: 0, members: [] });
  assert.deepEqual(await ack(s, "publish", { room: "open:alive", event: "e".repeat(128) }), { ok: true, recipients: 1 });
  // Every allowed character.
  const odd = "open:AZaz09_-.:@/#=+";
  await subscribe(s, odd);
  assert.deepEqual((await ack(s, "presence", { room: odd })).count, 1);
  assert.deepEqual(await ack(s, "unsubscribe", { room: odd }), { ok: true });

  // An unknown event without an ack is ignored.
  s.emit("frobnicate", { room: "open:alive" });
  await stillWorks("unknown event without ack");

  // rooms.max_per_socket = 5: the sixth room is refused, re-subscribing
  // one of the five is not a new room, and leaving one makes room.
  for (let i = 1; i <= PUBSUB.maxPerSocket; i++) await subscribe(s, `open:cap-${i}`);
  assertError(await ack(s, "subscribe", { room: "open:cap-6" }), "too_many_rooms", "sixth room");
  await stillWorks("too_many_rooms");
  await subscribe(s, "open:cap-1");
  assert.deepEqual(await ack(s, "unsubscribe", { room: `open:cap-${PUBSUB.maxPerSocket}` }), { ok: true });
  await subscribe(s, "open:cap-6");
  assertError(await ack(s, "subscribe", { room: "open:cap-7" }), "too_many_rooms", "sixth room again");
  await stillWorks("too_many_rooms again");
  // The refused rooms were not created.
  const reply = await ack(s, "presence", { room: "open:cap-7" });
  assert.equal(reply.count, 0);
});
