#!/usr/bin/env node
// A Node.js Socket.IO node of a mixed cluster: socket.io 4.8 with the
// official @socket.io/redis-adapter 8.x (classic pub/sub, or with
// --sharded the sharded adapter on Redis 7 sharded pub/sub), or with
// --streams @socket.io/redis-streams-adapter 0.3 (Redis streams), speaking
// roomcast's client protocol (docs/protocol.md) for the events the cluster
// tests use: subscribe, unsubscribe, publish (acks as roomcast's) and a
// node-local presence; and, standing in for a backend, cluster-wide
// requests through the adapter and `emit-to` (`io.to(id).emit(...)`).
// For a balancer in front of it, GET /readyz answers 200; with --api-key,
// POST /api/v1/publish {room, event, data} (bearer key) is a backend's
// `io.to(room).emit(event, data)`, answered 202 as roomcast's API does.
// --recovery turns on socket.io's connectionStateRecovery (the defaults: 2
// minutes, skipMiddlewares), as a Node.js user would (what it does with each
// adapter: see below).
//
//   node lib/node-server.mjs --redis redis://127.0.0.1:P/ [--port 0] [--key socket.io]
//                            [--sharded dynamic|static | --streams] [--recovery] [--api-key KEY]
//                            [--admin-ui BCRYPT_HASH]
//
// --admin-ui runs @socket.io/admin-ui's instrument() (user "admin", the
// password of that hash, serverId "node-<pid>", development mode: every
// socket and room update), as a Node.js node of a mixed cluster would.
// Prints "READY <port> <adapter uid of />" once it listens and the adapter's
// subscriptions are confirmed by Redis (with --streams: and its stream
// reader is waiting in XREAD). SIGTERM/SIGINT close it cleanly (every
// socket closed with "server shutting down"), within 5 s.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createClient } from "redis";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { createAdapter as createStreamsAdapter } from "@socket.io/redis-streams-adapter";
import { instrument } from "@socket.io/admin-ui";

const { values: opts } = parseArgs({
  options: {
    redis: { type: "string", default: "redis://127.0.0.1:6379/" },
    port: { type: "string", default: "0" },
    key: { type: "string", default: "socket.io" },
    sharded: { type: "string" },
    streams: { type: "boolean", default: false },
    recovery: { type: "boolean", default: false },
    "api-key": { type: "string" },
    "admin-ui": { type: "string" },
  },
});

const ROOM_RE = /^[A-Za-z0-9_\-.:@/#=+]{1,128}$/;
// A name shaped like a socket id (20 of [A-Za-z0-9_-]) is not a room, as in
// roomcast (docs/protocol.md): it addresses one socket.
const SOCKET_ID_RE = /^[A-Za-z0-9_-]{20}$/;
const RESERVED = new Set(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]);
const refuse = (code, message) => ({ ok: false, error: { code, message } });

// A client name of this process: the streams adapter's own connections
// (duplicates of `pub`) carry it too, so CLIENT LIST shows its reader.
const clientName = `node-server-${process.pid}`;
const pub = createClient({ url: opts.redis, name: clientName });
const sub = pub.duplicate();
pub.on("error", (e) => console.error("redis pub error:", e.message));
sub.on("error", (e) => console.error("redis sub error:", e.message));
await Promise.all([pub.connect(), opts.streams ? null : sub.connect()]);

// Requests outside the Socket.IO path: engine.io hands them to the
// listeners the server had before it attached.
const httpServer = createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.method === "GET" && req.url === "/readyz") return reply(200, { ready: true, clients: io.engine.clientsCount });
  if (req.method !== "POST" || req.url !== "/api/v1/publish" || !opts["api-key"]) return reply(404, { error: "not found" });
  if (req.headers.authorization !== `Bearer ${opts["api-key"]}`) return reply(401, { error: "unauthorized" });
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      return reply(400, { error: "bad json" });
    }
    const { room, event, data } = msg ?? {};
    if (typeof room !== "string" || !ROOM_RE.test(room) || typeof event !== "string" || !event || RESERVED.has(event)) {
      return reply(400, { error: "expected {room, event, data}" });
    }
    // Here and, through the adapter's PUBLISH, on the other nodes.
    nsp.to(room).emit(event, data);
    reply(202, { recipients: nsp.adapter.rooms.get(room)?.size ?? 0 });
  });
});
const adapter = opts.streams
  ? createStreamsAdapter(pub, { channelPrefix: opts.key })
  : opts.sharded
    ? createShardedAdapter(pub, sub, { channelPrefix: opts.key, subscriptionMode: opts.sharded })
    : createAdapter(pub, sub, { key: opts.key });
// connectionStateRecovery as the docs show it. The adapter given here takes
// the place of the SessionAwareAdapter that option would bring: the streams
// adapter keeps sessions in Redis, but the classic and sharded Redis
// adapters' persistSession / restoreSession do nothing, so with them no
// socket is ever recovered.
const io = new Server(httpServer, { adapter, ...(opts.recovery ? { connectionStateRecovery: {} } : {}) });
const nsp = io.of("/");
if (opts["admin-ui"]) {
  instrument(io, {
    auth: { type: "basic", username: "admin", password: opts["admin-ui"] },
    serverId: `node-${process.pid}`,
    mode: "development",
  });
}

nsp.on("connection", (socket) => {
  console.error(`connect ${socket.id} (${socket.conn.transport.name})${socket.recovered ? " recovered" : ""}`);
  socket.on("disconnect", (reason) => console.error(`disconnect ${socket.id}: ${reason}`));
  const handle = (fn) => (arg, ack) => {
    if (typeof ack !== "function") return;
    if (!arg || typeof arg !== "object" || typeof arg.room !== "string") return ack(refuse("bad_request", "expected {room}"));
    if (!ROOM_RE.test(arg.room)) return ack(refuse("invalid_room", "bad room name"));
    if (SOCKET_ID_RE.test(arg.room)) return ack(refuse("invalid_room", "a socket id is not a room"));
    ack(fn(arg));
  };
  socket.on("subscribe", handle(({ room }) => {
    socket.join(room);
    return { ok: true };
  }));
  socket.on("unsubscribe", handle(({ room }) => {
    socket.leave(room);
    return { ok: true };
  }));
  socket.on("publish", handle(({ room, event, data }) => {
    if (typeof event !== "string" || !event || event.length > 128 || RESERVED.has(event)) {
      return refuse("invalid_event", "bad event");
    }
    const members = nsp.adapter.rooms.get(room);
    const recipients = members ? [...members].filter((id) => id !== socket.id).length : 0;
    // Through the adapter: delivered here and PUBLISHed on Redis for the
    // other nodes, with this socket's id in `except`.
    socket.to(room).emit(event, data);
    return { ok: true, recipients };
  }));
  // Cluster-wide through the adapter's requests, which roomcast answers.
  const cluster = (fn) => async (arg, ack) => {
    if (typeof ack !== "function") return;
    const started = Date.now();
    try {
      ack({ ok: true, ms: Date.now() - started, ...(await fn(arg ?? {})), ms: Date.now() - started });
    } catch (err) {
      ack({ ok: false, error: String(err?.message ?? err), ms: Date.now() - started });
    }
  };
  socket.on("presence", cluster(async ({ room }) => {
    const sockets = await nsp.in(room).fetchSockets();
    return { room, count: sockets.length, members: sockets.map((s) => ({ id: s.id, user: s.data?.user ?? null })) };
  }));
  socket.on("all-rooms", cluster(async () => ({ rooms: [...(await nsp.adapter.allRooms())] })));
  socket.on("ask-all", cluster(async ({ room }) => ({ replies: await nsp.to(room).timeout(1500).emitWithAck("ask", 1) })));
  socket.on("server-side-emit", cluster(async () => ({ responses: await nsp.serverSideEmitWithAck("hello") })));
  socket.on("server-count", cluster(async () => ({ count: await nsp.adapter.serverCount() })));
  socket.on("sockets-join", cluster(async ({ target, room }) => {
    nsp.in(target).socketsJoin(room);
    return {};
  }));
  socket.on("sockets-leave", cluster(async ({ target, room }) => {
    nsp.in(target).socketsLeave(room);
    return {};
  }));
  // The backend's `io.to(to).except(except).emit(event, data)`: `to` a
  // socket id, a room or a list of them; absent = the whole namespace.
  socket.on("emit-to", cluster(async ({ to, except, event, data }) => {
    (to === undefined ? nsp : nsp.to(to)).except(except ?? []).emit(event, data);
    return {};
  }));
  socket.on("disconnect-sockets", cluster(async ({ target }) => {
    nsp.in(target).disconnectSockets(true);
    return {};
  }));
});

// The adapter subscribes on the sub connection, its own response channel
// last; once Redis counts a subscriber there, all are in place.
const uid = nsp.adapter.uid;
const ownChannel = opts.sharded || opts.streams ? `${opts.key}#/#${uid}#` : `${opts.key}-response#/#${uid}#`;
const subscribers = async () => {
  if (!opts.sharded) return (await pub.pubSubNumSub(ownChannel))[ownChannel];
  const [, n] = await pub.sendCommand(["PUBSUB", "SHARDNUMSUB", ownChannel]);
  return Number(n);
};
// The streams adapter's reader starts at the stream's end ("$") with its
// first XREAD: entries added before that are not its. It is in place once
// Redis shows one of this process's connections blocked in XREAD.
const reading = async () =>
  !opts.streams ||
  (await pub.sendCommand(["CLIENT", "LIST"])).split("\n").some((l) => l.includes(` name=${clientName} `) && l.includes(" cmd=xread"));
for (let i = 0; ; i++) {
  if ((await subscribers()) >= 1 && (await reading())) break;
  if (i > 200) throw new Error(`the adapter did not subscribe to ${ownChannel}${opts.streams ? " or read its stream" : ""}`);
  await new Promise((r) => setTimeout(r, 25));
}

httpServer.listen(Number(opts.port), "127.0.0.1", () => {
  console.log(`READY ${httpServer.address().port} ${uid}`);
});

const stop = () => {
  // A balancer's idle keep-alive connections would hold httpServer.close.
  setTimeout(() => process.exit(0), 5000).unref();
  io.close(() => {
    Promise.allSettled([pub.quit(), opts.streams ? null : sub.quit()]).then(() => process.exit(0));
  });
  httpServer.closeIdleConnections?.();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
