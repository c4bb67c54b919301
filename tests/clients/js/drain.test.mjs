// Draining, as socket.io-client 4.8 clients see it, against a real roomcast
// process: SIGTERM closes every session with the server-side reason
// "server shutting down", which a client sees as "transport close" (no
// DISCONNECT packet is sent, so it reconnects, to another node behind a
// balancer), in batches over server.drain_window_ms; new handshakes are
// refused with 503 meanwhile, and the process exits 0.

import assert from "node:assert/strict";
import { connected, serverTest, within } from "../lib/roomcast.mjs";

const CLIENTS = 8;

serverTest(
  "SIGTERM: clients see \"transport close\" in batches, new sessions get 503, exit 0",
  async ({ server, client }) => {
    const sockets = [];
    for (let i = 0; i < CLIENTS; i++) {
      const transports = i % 2 ? ["polling"] : ["websocket"];
      const s = client("/", { transports, reconnection: false });
      await connected(s);
      sockets.push(s);
    }
    const gone = sockets.map(
      (s) => new Promise((resolve) => s.once("disconnect", (reason) => resolve({ reason, at: Date.now() }))),
    );
    server.signal("SIGTERM");
    // Refused while draining (as soon as the signal is handled).
    let refused;
    for (let i = 0; i < 100 && !refused; i++) {
      const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
      if (res.status === 503) refused = await res.json();
      else await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(refused, { code: 4, message: "Server shutting down" });
    const ends = await within(Promise.all(gone), 10_000, "every client disconnected");
    for (const e of ends) assert.equal(e.reason, "transport close");
    const times = ends.map((e) => e.at).sort((a, b) => a - b);
    assert.ok(times[times.length - 1] - times[0] >= 300, `the disconnects are spread: ${times.map((t) => t - times[0])}`);
    const exit = await within(server.exited, 10_000, "the process to exit");
    assert.deepEqual(exit, { code: 0, signal: null });
  },
  { env: { ROOMCAST__SERVER__DRAIN_WINDOW_MS: "2000", ROOMCAST__SERVER__DRAIN_BATCHES: "4" } },
);
