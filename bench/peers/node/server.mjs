#!/usr/bin/env node
// The Node.js peer of roomcast's benchmarks: socket.io 4.8 serving the same
// application protocol as roomcast (docs/protocol.md) for what
// roomcast-bench uses: `subscribe` and `publish`, acknowledged
// ({ok:true} / {ok:true, recipients}), the publisher excluded.
//
//   node bench/peers/node/server.mjs --port 3000
//
// Prints "listening on 127.0.0.1:<port>" once it accepts connections.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: opts } = parseArgs({
  options: { port: { type: "string", default: "3000" }, host: { type: "string", default: "127.0.0.1" } },
});

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });
const nsp = io.of("/");
const refuse = (code) => ({ ok: false, error: { code, message: code } });

nsp.on("connection", (socket) => {
  socket.on("subscribe", (arg, ack) => {
    if (typeof ack !== "function") return;
    if (typeof arg?.room !== "string") return ack(refuse("bad_request"));
    socket.join(arg.room);
    ack({ ok: true });
  });
  socket.on("publish", (arg, ack) => {
    if (typeof ack !== "function") return;
    if (typeof arg?.room !== "string" || typeof arg?.event !== "string") return ack(refuse("bad_request"));
    const members = nsp.adapter.rooms.get(arg.room);
    const recipients = members ? members.size - (members.has(socket.id) ? 1 : 0) : 0;
    socket.to(arg.room).emit(arg.event, arg.data);
    ack({ ok: true, recipients });
  });
});

httpServer.listen(Number(opts.port), opts.host, () => {
  const { address, port } = httpServer.address();
  console.log(`listening on ${address}:${port}`);
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
