// Slow consumers (config engine.max_buffered_packets, docs/protocol.md:
// the broker never waits on a connection) with socket.io-client 4.8
// against a real roomcast process started with
// tests/clients/roomcast-pubsub.toml (max_buffered_packets = 128). Covers:
// - a websocket client in a room stops reading (its TCP socket is paused,
//   and a control shows that it really gets nothing any more while the
//   others do);
// - a flood of 6 kB messages to the room (paced so that the three clients
//   that do read never lag by more than one batch of 100): the server
//   closes the paused client as a slow consumer (a forced close with
//   "slow consumer" in the audit log) once the kernel buffers and its
//   queues are full, while every other member receives every message,
//   exactly once and in order; after the close the publish acks count
//   only the three;
// - the paused client, resumed, observes the disconnect, having received
//   an in-order prefix of the flood;
// - the server stays usable: a new client subscribes and receives;
// - (Linux) once closed as a slow consumer, the connection is let go of
//   within 5 s even if the client never reads again (its TCP connection
//   leaves ESTABLISHED in /proc/net/tcp), so a client that stops reading
//   cannot pin the server's buffers;
// - a polling client that stops polling is closed as a slow consumer once
//   max_buffered_packets frames wait for it (raw Engine.IO requests); its
//   next GETs get the buffered frames in order, then the close packet.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { PUBSUB, ack, apiRequest, collect, connected, once, serverTest, sleep } from "../lib/roomcast.mjs";

const WS = { transports: ["websocket"] };

/** Records the `seq` of every "flood" event; `until(n)` waits for n of them. */
function floodInbox(socket) {
  const seqs = [];
  const waiters = new Set();
  socket.on("flood", (data) => {
    seqs.push(data.seq);
    for (const w of waiters) w();
  });
  return {
    seqs,
    until(n, timeoutMs) {
      if (seqs.length >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = () => {
          if (seqs.length >= n) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${timeoutMs} ms: ${seqs.length} of ${n} flood messages at ${socket.id}`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
  };
}

serverTest(
  "a client that stops reading is closed as a slow consumer; the others get every message in order",
  async ({ t, client, server }) => {
    const room = "open:flood";
    const slow = client("/", { ...WS, reconnection: false });
    const fast = [0, 1, 2].map(() => client("/", WS));
    const publisher = client("/", WS);
    await Promise.all([slow, ...fast, publisher].map((s) => connected(s)));
    for (const s of [slow, ...fast]) {
      assert.deepEqual(await ack(s, "subscribe", { room }), { ok: true });
    }
    const slowInbox = floodInbox(slow);
    const fastInboxes = fast.map(floodInbox);
    const slowProbes = collect(slow, "probe");
    const fastProbes = fast.map((s) => collect(s, "probe"));
    let slowDisconnectReason = null;
    slow.on("disconnect", (reason) => {
      slowDisconnectReason = reason;
    });

    // 1. Stop reading: pause the TCP socket under the client's WebSocket.
    const tcp = slow.io.engine.transport.ws?._socket;
    assert.ok(tcp && typeof tcp.pause === "function", "the websocket transport exposes its net.Socket");
    tcp.pause();
    // Control: the others get these, the paused one gets nothing.
    for (let k = 0; k < 5; k++) {
      assert.deepEqual(await ack(publisher, "publish", { room, event: "probe", data: k }), { ok: true, recipients: 4 });
    }
    await Promise.all(fastProbes.map((p) => p.until((l) => l.length === 5)));
    await sleep(300); // a bounded window, after the positive control
    assert.deepEqual(slowProbes.list, [], "the paused client still reads");

    // 2. Flood, in batches of 100 (pipelined publishes, acks awaited), each
    // batch read by the three readers before the next. Stop 2 batches after
    // the audit line shows up, or at MAX.
    const BATCH = 100;
    const MAX = 4000;
    const pad = "x".repeat(6 * 1024);
    let audited = null;
    server
      .waitForLog(/roomcast::audit.*slow consumer|slow consumer.*roomcast::audit/, 20000)
      .then((line) => {
        audited = line;
      })
      .catch(() => {});
    let seq = 0;
    let batchesAfterAudit = 0;
    const acksAfterAudit = [];
    const started = Date.now();
    while (seq < MAX && batchesAfterAudit < 2) {
      const auditedBefore = audited !== null;
      const pending = [];
      for (let k = 0; k < BATCH; k++, seq++) {
        pending.push(ack(publisher, "publish", { room, event: "flood", data: { seq, pad } }, 10000));
      }
      const replies = await Promise.all(pending);
      for (const r of replies) assert.equal(r.ok, true, JSON.stringify(r));
      if (auditedBefore) {
        batchesAfterAudit += 1;
        acksAfterAudit.push(...replies.map((r) => r.recipients));
      }
      await Promise.all(fastInboxes.map((box) => box.until(seq, 10000)));
    }
    const floodMs = Date.now() - started;
    assert.ok(audited, `no slow-consumer audit line after ${seq} messages of 6 kB in ${floodMs} ms`);
    assert.match(audited, /kind="?forced_close"?/, audited);

    // 3. Every reader got every message, once, in order.
    const expected = Array.from({ length: seq }, (_, i) => i);
    for (const [k, box] of fastInboxes.entries()) {
      assert.equal(box.seqs.length, seq, `reader ${k}: count`);
      assert.deepEqual(box.seqs, expected, `reader ${k}: order`);
      assert.ok(fast[k].connected, `reader ${k} was disconnected`);
    }
    // Once the slow one was closed, publishes reach only the three.
    assert.ok(acksAfterAudit.length > 0);
    assert.deepEqual([...new Set(acksAfterAudit)], [3], "recipients after the slow consumer was closed");

    // 4. The paused client, resumed, sees the disconnect; what it got is an
    // in-order prefix of the flood.
    assert.equal(slowDisconnectReason, null, "disconnected while paused?");
    const disconnected = slowDisconnectReason === null ? once(slow, "disconnect", 10000) : Promise.resolve([slowDisconnectReason]);
    tcp.resume();
    const [reason] = await disconnected;
    assert.ok(["transport close", "transport error"].includes(reason), `disconnect reason ${reason}`);
    assert.ok(slowInbox.seqs.length < seq, "the slow consumer got everything?");
    assert.deepEqual(
      slowInbox.seqs,
      Array.from({ length: slowInbox.seqs.length }, (_, i) => i),
      "the slow consumer's messages are not an in-order prefix",
    );
    assert.deepEqual(slowProbes.list, [0, 1, 2, 3, 4], "the probes reached the slow consumer after resume");

    // 5. The server is still fine.
    const late = client("/", WS);
    await connected(late);
    assert.deepEqual(await ack(late, "subscribe", { room }), { ok: true });
    const lateInbox = floodInbox(late);
    assert.deepEqual(await ack(publisher, "publish", { room, event: "flood", data: { seq } }), { ok: true, recipients: 4 });
    await lateInbox.until(1, 3000);
    const presence = await ack(late, "presence", { room });
    assert.equal(presence.count, 4);
    t.diagnostic(`slow consumer closed after ~${seq - 2 * BATCH}..${seq - BATCH} messages (${floodMs} ms flood, slow got ${slowInbox.seqs.length}, ${PUBSUB.maxBufferedPackets} buffered max): ${audited}`);
  },
  { timeout: 30000, config: PUBSUB.config },
);

/**
 * TCP connections between the local ports `a` and `b` (either direction)
 * from /proc/net/tcp and /proc/net/tcp6: [{ state, txQueue, rxQueue }].
 */
function tcpBetween(a, b) {
  const STATES = { "01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING" };
  const found = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      const local = parseInt(f[1].split(":")[1], 16);
      const remote = parseInt(f[2].split(":")[1], 16);
      if ((local === a && remote === b) || (local === b && remote === a)) {
        const [tx, rx] = f[4].split(":").map((h) => parseInt(h, 16));
        found.push({ local, remote, state: STATES[f[3]] ?? f[3], txQueue: tx, rxQueue: rx });
      }
    }
  }
  return found;
}

serverTest(
  "a slow consumer's connection is let go of even if it never reads again",
  async ({ t, client, server }) => {
    if (!existsSync("/proc/net/tcp")) {
      t.skip("needs /proc/net/tcp (Linux)");
      return;
    }
    const room = "open:stuck";
    const slow = client("/", { ...WS, reconnection: false });
    const publisher = client("/", WS);
    await Promise.all([slow, publisher].map((s) => connected(s)));
    assert.deepEqual(await ack(slow, "subscribe", { room }), { ok: true });
    const tcp = slow.io.engine.transport.ws._socket;
    const clientPort = tcp.localPort;
    tcp.pause();

    const pad = "x".repeat(6 * 1024);
    let seq = 0;
    const isAudited = () => server.lines().some((l) => /roomcast::audit/.test(l) && /slow consumer/.test(l));
    while (!isAudited() && seq < 4000) {
      const pending = [];
      for (let k = 0; k < 100; k++, seq++) pending.push(ack(publisher, "publish", { room, event: "flood", data: { seq, pad } }, 10000));
      await Promise.all(pending);
    }
    assert.ok(isAudited(), `no slow-consumer audit line after ${seq} messages`);
    const closedAt = Date.now();

    // The server side of the connection should leave ESTABLISHED (closed
    // or reset) within 5 s although the client reads nothing.
    let sockets = tcpBetween(server.port, clientPort);
    while (Date.now() - closedAt < 5000) {
      sockets = tcpBetween(server.port, clientPort);
      const serverSide = sockets.find((s) => s.local === server.port);
      if (!serverSide || serverSide.state !== "ESTABLISHED") break;
      await sleep(100);
    }
    const serverSide = sockets.find((s) => s.local === server.port);
    const state = serverSide ? `${serverSide.state}, ${serverSide.txQueue} bytes unsent` : "gone";
    tcp.resume();
    await once(slow, "disconnect", 10000);
    assert.ok(
      !serverSide || serverSide.state !== "ESTABLISHED",
      `5 s after the slow-consumer close the server still holds the TCP connection (${state}) of a client that does not read`,
    );
  },
  { timeout: 20000, config: PUBSUB.config },
);

serverTest(
  "a polling client that stops polling is closed as a slow consumer after max_buffered_packets",
  async ({ server }) => {
    const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const get = async (sid) => {
      const res = await fetch(`${base}&sid=${sid}`, { signal: AbortSignal.timeout(5000) });
      return [res.status, await res.text()];
    };
    const post = async (sid, body) => {
      const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body, headers: { "content-type": "text/plain;charset=UTF-8" }, signal: AbortSignal.timeout(5000) });
      return [res.status, await res.text()];
    };
    const open = await (await fetch(base, { signal: AbortSignal.timeout(5000) })).text();
    assert.match(open, /^0\{/);
    const { sid } = JSON.parse(open.slice(1));
    assert.deepEqual(await post(sid, "40"), [200, "ok"]);
    const [, connect] = await get(sid);
    assert.match(connect, /^40\{"sid":"[^"]+"\}$/);
    assert.deepEqual(await post(sid, '420["subscribe",{"room":"open:poll"}]'), [200, "ok"]);
    assert.deepEqual(await get(sid), [200, '430[{"ok":true}]']);

    // The client does not poll; the buffer fills.
    const N = PUBSUB.maxBufferedPackets + 20;
    const recipients = [];
    for (let i = 0; i < N; i++) {
      const res = await apiRequest(server, "POST", "/publish", { body: { room: "open:poll", event: "m", data: i } });
      assert.equal(res.status, 202, res.text);
      recipients.push(res.json.recipients);
    }
    const line = await server.waitForLog(/roomcast::audit.*slow consumer/, 3000);
    assert.match(line, /kind="?forced_close"?/, line);
    assert.match(line, /transport="?polling"?/, line);
    // Handed over until the buffer was full, then no more.
    assert.equal(recipients[0], 1);
    assert.equal(recipients[N - 1], 0, `recipients: ${recipients.join(",")}`);
    const members = await apiRequest(server, "GET", "/rooms/open:poll");
    assert.equal(members.json.count, 0, members.text);

    // The next GETs: what was buffered, in order (at most
    // engine.max_packets_per_poll a GET), then the close packet (in the
    // last response or the next one), then the session is gone.
    const packets = [];
    let status;
    let body = "";
    for (let polls = 0; polls < PUBSUB.maxBufferedPackets + 2 && !packets.includes("1"); polls++) {
      [status, body] = await get(sid);
      assert.equal(status, 200, `poll ${polls}: ${body}`);
      packets.push(...body.split("\x1e"));
    }
    assert.equal(packets.at(-1), "1", `the close packet comes last: ...${packets.slice(-3).join(" | ")}`);
    const data = packets.slice(0, -1).map((p) => {
      const m = /^42\["m",(\d+)\]$/.exec(p);
      assert.ok(m, `unexpected packet ${p}`);
      return Number(m[1]);
    });
    assert.ok(data.length <= PUBSUB.maxBufferedPackets, `${data.length} frames buffered, more than max_buffered_packets`);
    assert.deepEqual(data, Array.from({ length: data.length }, (_, i) => i), "buffered frames in order");
    const [after] = await get(sid);
    assert.equal(after, 400, "the session is gone");
  },
  { timeout: 20000, config: PUBSUB.config },
);
