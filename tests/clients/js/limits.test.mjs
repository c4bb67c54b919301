// The per-connection rate limit ([limits] packets_per_second) as
// socket.io-client 4.8 sees it, against a real roomcast process started
// with tests/clients/roomcast-pubsub.toml and a small rate (20 messages of
// burst, 1 per second, closed after 10 refusals). Covers:
// - a client that emits faster than its rate: the events within the burst
//   are acked { ok: true }, the next ones get the error ack
//   { ok: false, error: { code: "rate_limited" } }, and the connection stays
//   usable while refusals are below the threshold;
// - a client that keeps going is disconnected by the server (a forced
//   close: "transport close" on the client); a bystander connected to the
//   same server still publishes and receives.

import assert from "node:assert/strict";
import { PUBSUB, ack, collect, connected, once, serverTest } from "../lib/roomcast.mjs";

const WS = { transports: ["websocket"] };
const LIMITED = {
  config: PUBSUB.config,
  env: {
    ROOMCAST__LIMITS__PACKETS_PER_SECOND: "1",
    ROOMCAST__LIMITS__PACKETS_BURST: "20",
    ROOMCAST__LIMITS__REFUSED_BEFORE_CLOSE: "10",
  },
};

serverTest(
  "events over the rate get rate_limited error acks, then the flooder is disconnected and others are not",
  async ({ client }) => {
    const bystander = client("/", WS);
    const bystanderPublisher = client("/", WS);
    await connected(bystander);
    await connected(bystanderPublisher);
    assert.deepEqual(await ack(bystander, "subscribe", { room: "open:news" }), { ok: true });

    const flooder = client("/", WS);
    await connected(flooder);
    // Its CONNECT took one token: 19 events pass.
    const acks = await Promise.all(
      Array.from({ length: 25 }, (_, i) =>
        ack(flooder, "publish", { room: "open:void", event: "e", data: i }).catch((e) => e),
      ),
    );
    const ok = acks.filter((a) => a && a.ok === true).length;
    const limited = acks.filter((a) => a && a.ok === false && a.error?.code === "rate_limited").length;
    assert.equal(ok, 19, JSON.stringify(acks));
    assert.equal(limited, 6, JSON.stringify(acks));
    assert.ok(flooder.connected, "a few refusals do not close the connection");

    // Five more refusals (11 in all) cross refused_before_close.
    const gone = once(flooder, "disconnect", 5000);
    for (let i = 0; i < 5; i++) flooder.emit("publish", { room: "open:void", event: "e", data: i });
    const [reason] = await gone;
    // A forced close ends the Engine.IO connection (as close-me does in
    // disconnect.test.mjs): the client sees "transport close" and would
    // reconnect, with fresh buckets, as fast as limits.handshakes_per_second
    // lets it.
    assert.equal(reason, "transport close");

    // The bystander is not affected.
    const inbox = collect(bystander, "news");
    const published = await ack(bystanderPublisher, "publish", { room: "open:news", event: "news", data: "still here" });
    assert.equal(published.ok, true, JSON.stringify(published));
    await inbox.until((list) => list.includes("still here"), 3000, "the bystander's news");
  },
  LIMITED,
);
