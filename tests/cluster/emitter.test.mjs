// @socket.io/redis-emitter 5.x (with the `redis` 4 client) emits into a
// cluster of two roomcast nodes; socket.io-client 4.8 clients on both nodes
// (WebSocket and long-polling) receive each emit exactly once:
// - to one room (with binary arguments, nested and top-level),
// - to several rooms (a member of two of them gets it once),
// - to the whole namespace,
// - to a room except another room, and to all except one socket id.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Cluster, binaryBytes, uniq } from "./lib/cluster.mjs";

describe("@socket.io/redis-emitter 5.x into roomcast nodes", { timeout: 60_000 }, () => {
  const cluster = new Cluster("emitter + two roomcast nodes");
  let emitter;
  let all = [];
  const s = {}; // by label

  before(
    cluster.wrap(async () => {
      await cluster.startRedis();
      const [A, B] = await cluster.startRoomcast("A", "B");
      all = await Promise.all([
        cluster.client(A, "A-news-vip", { rooms: ["news", "vip"] }),
        cluster.client(A, "A-news", { transport: "polling", rooms: ["news"] }),
        cluster.client(A, "A-none"),
        cluster.client(B, "B-news-vip", { transport: "polling", rooms: ["news", "vip"] }),
        cluster.client(B, "B-news", { rooms: ["news"] }),
        cluster.client(B, "B-sport", { transport: "polling", rooms: ["sport"] }),
      ]);
      for (const socket of all) s[socket.label] = socket;
      emitter = await cluster.emitter();
    }),
  );
  after(() => cluster.close());

  /**
   * Positive control: the emitter sends a marker to everyone after the emits
   * under test (same Redis connection, so Redis delivers it after them).
   */
  async function settle() {
    const id = uniq("marker");
    emitter.emit("marker", { id });
    await Promise.all(
      all.map((r) => r.inbox.until((inbox) => inbox.of("marker").some((m) => m?.id === id), 5000, `marker ${id} at ${r.label}`)),
    );
  }

  /** Labels of the sockets that got `event` with `tag`, each with its count. */
  function receivedBy(event, tag) {
    const out = {};
    for (const r of all) {
      const n = r.inbox.of(event).filter((p) => p?.tag === tag).length;
      if (n) out[r.label] = n;
    }
    return out;
  }
  const once = (...labels) => Object.fromEntries(labels.map((l) => [l, 1]));

  /** Waits until each of `labels` got `event` with `tag`, then settles. */
  async function expectAt(event, tag, labels) {
    await Promise.all(
      labels.map((l) => s[l].inbox.until((inbox) => inbox.of(event).some((p) => p?.tag === tag), 5000, `${l}: ${event} ${tag}`)),
    );
    await settle();
  }

  it(
    "to a room, with binary: every member on both nodes once, nobody else",
    cluster.wrap(async () => {
      const tag = uniq("room");
      const blob = Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]);
      emitter.to("news").emit("headline", { tag, text: "extra", blob, list: [1, Buffer.from("xy")] }, Buffer.from([1, 2, 3]));
      await expectAt("headline", tag, ["A-news-vip", "A-news", "B-news-vip", "B-news"]);
      assert.deepEqual(receivedBy("headline", tag), once("A-news-vip", "A-news", "B-news-vip", "B-news"));
      for (const l of ["A-news-vip", "A-news", "B-news-vip", "B-news"]) {
        const ev = s[l].inbox.events.find((e) => e.event === "headline" && e.args[0]?.tag === tag);
        assert.equal(ev.args.length, 2, `${l}: two arguments`);
        const [obj, top] = ev.args;
        assert.equal(obj.text, "extra");
        assert.deepEqual(binaryBytes(obj.blob, `${l}: blob`), [...blob]);
        assert.equal(obj.list[0], 1);
        assert.deepEqual(binaryBytes(obj.list[1], `${l}: list[1]`), [...Buffer.from("xy")]);
        assert.deepEqual(binaryBytes(top, `${l}: top-level binary argument`), [1, 2, 3]);
      }
    }),
  );

  it(
    "to several rooms: a member of two of them gets it once",
    cluster.wrap(async () => {
      const tag = uniq("rooms");
      emitter.to(["news", "vip", "sport"]).emit("multi", { tag });
      const expected = ["A-news-vip", "A-news", "B-news-vip", "B-news", "B-sport"];
      await expectAt("multi", tag, expected);
      assert.deepEqual(receivedBy("multi", tag), once(...expected));
    }),
  );

  it(
    "to the whole namespace: every socket on both nodes once",
    cluster.wrap(async () => {
      const tag = uniq("all");
      emitter.emit("everyone", { tag });
      await expectAt("everyone", tag, Object.keys(s));
      assert.deepEqual(receivedBy("everyone", tag), once(...Object.keys(s)));
    }),
  );

  it(
    "except a room, and except a socket id",
    cluster.wrap(async () => {
      const tag = uniq("except-room");
      emitter.to("news").except("vip").emit("plebs", { tag });
      const tag2 = uniq("except-sid");
      emitter.except(s["B-news"].id).emit("not-b-news", { tag: tag2 });
      const tag3 = uniq("except-two");
      emitter.to(["news", "sport"]).except(["vip", s["A-news"].id]).emit("narrow", { tag: tag3 });
      await Promise.all([
        expectAt("plebs", tag, ["A-news", "B-news"]),
        expectAt("not-b-news", tag2, ["A-news-vip", "A-news", "A-none", "B-news-vip", "B-sport"]),
        expectAt("narrow", tag3, ["B-news", "B-sport"]),
      ]);
      assert.deepEqual(receivedBy("plebs", tag), once("A-news", "B-news"), "to(news).except(vip)");
      assert.deepEqual(receivedBy("not-b-news", tag2), once("A-news-vip", "A-news", "A-none", "B-news-vip", "B-sport"), "except(<B-news id>)");
      assert.deepEqual(receivedBy("narrow", tag3), once("B-news", "B-sport"), "to([news, sport]).except([vip, <A-news id>])");
    }),
  );

  it(
    "nobody was disconnected",
    cluster.wrap(async () => {
      assert.deepEqual(cluster.disconnected(), []);
    }),
  );
});
