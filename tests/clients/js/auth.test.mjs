// JWT authentication and room permissions (docs/protocol.md "Connecting")
// with socket.io-client 4.8 against a real roomcast process started with
// tests/clients/roomcast-pubsub.toml (HS256, audience "roomcast-tests";
// "/" and "/other" anonymous with subscribe ["open:*","public:*"] and
// publish ["open:*"]; "/private" needs a token). Tokens are minted with the
// npm `jsonwebtoken` package. Covers:
// - a valid token on "/private" connects; its `sub` is the user in presence,
//   in presence:join and in GET /api/v1/rooms/{room};
// - the token's `subscribe` / `publish` patterns (`*`, `?`), allowed and
//   denied (code "forbidden") for subscribe, presence and publish; a
//   forbidden publish delivers nothing; a token without patterns may do
//   nothing; a token on an anonymous namespace gets its own patterns;
// - anonymous sockets on "/" and "/other" get the anonymous patterns;
// - refused CONNECTs: no token on "/private" → auth_required; bad
//   signature, wrong audience, garbage, alg "none", HS384, no exp, nbf in
//   the future, no `aud` although an audience is configured, a non-string
//   token → invalid_token (on "/" too: a bad token is not downgraded to
//   anonymous); an expired token → token_expired;
// - live expiry, on a websocket-only and a polling-only client at once: a
//   socket whose token expires (exp ≈ now + 2 s; exp is in whole seconds)
//   gets "token_expired" while still connected, then is disconnected
//   ("transport close") no earlier than exp, leaves its rooms (presence:leave
//   to the others), the forced close is in the audit log (target
//   roomcast::audit, kind="forced_close", "token expired"); its automatic
//   reconnect with the same token is refused with token_expired (and never
//   accepted); with a fresh token (socket.auth) it connects again. All
//   deviations are collected and reported together.

import assert from "node:assert/strict";
import jwt from "jsonwebtoken";
import { FAST_RECONNECT, PUBSUB, ack, apiRequest, collect, connectError, connected, serverTest } from "../lib/roomcast.mjs";

const pubsubTest = (name, fn, opts = {}) => serverTest(name, fn, { config: PUBSUB.config, ...opts });
const WS = { transports: ["websocket"] };
const now = () => Math.floor(Date.now() / 1000);

/**
 * A token for the profile: HS256 with its secret, its audience and an
 * `exp` an hour away unless `claims` says otherwise.
 */
function mint(claims = {}, { secret = PUBSUB.jwtSecret, algorithm = "HS256" } = {}) {
  return jwt.sign({ aud: PUBSUB.jwtAudience, exp: now() + 3600, ...claims }, secret, { algorithm });
}

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** Subscribes and asserts the ack is { ok: true }. */
async function subscribe(socket, room) {
  assert.deepEqual(await ack(socket, "subscribe", { room }), { ok: true }, `subscribe ${room}`);
}

function assertForbidden(reply, what) {
  assert.equal(reply?.ok, false, `${what}: expected forbidden, got ${JSON.stringify(reply)}`);
  assert.equal(reply.error?.code, "forbidden", `${what}: ${JSON.stringify(reply)}`);
}

pubsubTest("a valid token connects to /private; sub is the user in presence, notifications and the API", async ({ client, server }) => {
  const room = "chat:lobby";
  const ann = client("/private", { ...WS, auth: { token: mint({ sub: "ann", subscribe: ["chat:*"] }) } });
  const bob = client("/private", { transports: ["polling", "websocket"], auth: { token: mint({ sub: "bob", subscribe: ["chat:*"] }) } });
  await Promise.all([connected(ann), connected(bob)]);
  const annJoins = collect(ann, "presence:join");
  await subscribe(ann, room);
  await subscribe(bob, room);
  await annJoins.until((l) => l.length === 1);
  assert.deepEqual(annJoins.list, [{ room, id: bob.id, user: "bob" }]);

  const reply = await ack(bob, "presence", { room });
  assert.deepEqual(reply, {
    ok: true,
    room,
    count: 2,
    members: [
      { id: ann.id, user: "ann" },
      { id: bob.id, user: "bob" },
    ],
  });
  const res = await apiRequest(server, "GET", `/rooms/${encodeURIComponent(room)}?namespace=${encodeURIComponent("/private")}`);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { namespace: "/private", room, count: 2, members: reply.members });

  const annLeaves = collect(ann, "presence:leave");
  bob.disconnect();
  await annLeaves.until((l) => l.length === 1);
  assert.deepEqual(annLeaves.list, [{ room, id: reply.members[1].id, user: "bob" }]);

  // `aud` may be a list that holds the audience.
  const listAud = client("/private", { ...WS, auth: { token: mint({ sub: "cy", aud: ["elsewhere", PUBSUB.jwtAudience] }) } });
  await connected(listAud);
});

pubsubTest("token patterns: subscribe, presence and publish allowed and denied", async ({ client, server }) => {
  const token = mint({
    sub: "ann",
    subscribe: ["chat:*", "user:ann", "dm:??"],
    publish: ["chat:general", "user:*"],
  });
  const ann = client("/private", { ...WS, auth: { token } });
  const listener = client("/private", { ...WS, auth: { token: mint({ sub: "lis", subscribe: ["*"] }) } });
  await Promise.all([connected(ann), connected(listener)]);

  for (const room of ["chat:general", "chat:", "chat:a:b", "user:ann", "dm:ab"]) await subscribe(ann, room);
  for (const room of ["user:bob", "user:ann2", "dm:abc", "dm:a", "other", "CHAT:general", "xchat:general"]) {
    assertForbidden(await ack(ann, "subscribe", { room }), `subscribe ${room}`);
    assertForbidden(await ack(ann, "presence", { room }), `presence ${room}`);
  }
  assert.equal((await ack(ann, "presence", { room: "chat:general" })).ok, true);

  // Publish: allowed where the publish patterns say, whatever subscribe says.
  for (const room of ["chat:random", "user:zed", "dm:ab"]) await subscribe(listener, room);
  await subscribe(listener, "chat:general");
  const got = collect(listener, "msg");
  assert.deepEqual(await ack(ann, "publish", { room: "chat:general", event: "msg", data: "chat:general" }), { ok: true, recipients: 1 });
  assert.deepEqual(await ack(ann, "publish", { room: "user:zed", event: "msg", data: "user:zed" }), { ok: true, recipients: 1 });
  for (const room of ["chat:random", "dm:ab", "other", "User:zed"]) {
    assertForbidden(await ack(ann, "publish", { room, event: "msg", data: room }), `publish ${room}`);
  }
  // Nothing of the forbidden publishes arrived before this marker.
  const marker = await apiRequest(server, "POST", "/publish", {
    body: { namespace: "/private", rooms: ["chat:random", "dm:ab", "chat:general"], event: "msg", data: "marker" },
  });
  assert.deepEqual(marker.json, { local_recipients: 2, cluster: false, recipients: 2 }, marker.text); // listener and ann (in chat:general)
  await got.until((l) => l.includes("marker"));
  assert.deepEqual(got.list, ["chat:general", "user:zed", "marker"]);

  // A token without patterns may do nothing.
  const bare = client("/private", { ...WS, auth: { token: mint({ sub: "bare" }) } });
  await connected(bare);
  assertForbidden(await ack(bare, "subscribe", { room: "chat:general" }), "bare subscribe");
  assertForbidden(await ack(bare, "publish", { room: "chat:general", event: "msg" }), "bare publish");
  assertForbidden(await ack(bare, "presence", { room: "open:x" }), "bare presence");

  // On an anonymous namespace a token brings its own patterns.
  const vip = client("/", { ...WS, auth: { token: mint({ sub: "vip", subscribe: ["vip:*"], publish: ["vip:*"] }) } });
  await connected(vip);
  await subscribe(vip, "vip:lounge");
  assert.deepEqual(await ack(vip, "publish", { room: "vip:lounge", event: "msg" }), { ok: true, recipients: 0 });
  assertForbidden(await ack(vip, "subscribe", { room: "secret:x" }), "vip subscribe secret:x");
  const presence = await ack(vip, "presence", { room: "vip:lounge" });
  assert.deepEqual(presence.members, [{ id: vip.id, user: "vip" }]);
});

pubsubTest("anonymous sockets get the anonymous patterns", async ({ client, server }) => {
  for (const nsp of ["/", "/other"]) {
    const anon = client(nsp, WS);
    const peer = client(nsp, { transports: ["polling"] });
    await Promise.all([connected(anon), connected(peer)]);
    for (const room of ["public:news", "open:x"]) await subscribe(anon, room);
    for (const room of ["secret:x", "publicnews", "chat:x"]) {
      assertForbidden(await ack(anon, "subscribe", { room }), `${nsp} subscribe ${room}`);
      assertForbidden(await ack(anon, "presence", { room }), `${nsp} presence ${room}`);
    }
    await subscribe(peer, "public:news");
    await subscribe(peer, "open:x");
    const got = collect(peer, "msg");
    assert.deepEqual(await ack(anon, "publish", { room: "open:x", event: "msg", data: 1 }), { ok: true, recipients: 1 });
    for (const room of ["public:news", "secret:x"]) {
      assertForbidden(await ack(anon, "publish", { room, event: "msg", data: room }), `${nsp} publish ${room}`);
    }
    const marker = await apiRequest(server, "POST", "/publish", {
      body: { namespace: nsp, room: "public:news", event: "msg", data: "marker" },
    });
    assert.equal(marker.status, 202, marker.text);
    await got.until((l) => l.includes("marker"));
    assert.deepEqual(got.list, [1, "marker"], `${nsp}: a forbidden publish was delivered`);
    const presence = await ack(anon, "presence", { room: "public:news" });
    assert.deepEqual(presence.members.map((m) => m.user), [null, null]);
  }
});

pubsubTest("refused CONNECTs: auth_required, invalid_token, token_expired", async ({ client }) => {
  // Every case is tried; the test fails at the end with all that went wrong.
  const problems = [];
  const refused = async (nsp, auth, code, what) => {
    const socket = client(nsp, { ...WS, auth });
    try {
      const err = await connectError(socket);
      if (err.data?.code !== code) {
        problems.push(`${what} on ${nsp}: connect_error ${JSON.stringify(err.message)} data ${JSON.stringify(err.data)}, expected code ${code}`);
      } else if (typeof err.message !== "string" || socket.connected) {
        problems.push(`${what} on ${nsp}: message ${JSON.stringify(err.message)}, connected ${socket.connected}`);
      }
    } catch (e) {
      problems.push(`${what} on ${nsp}: ${e.message}, expected connect_error ${code}`);
    } finally {
      socket.io.reconnection(false);
      socket.disconnect();
    }
  };
  await refused("/private", undefined, "auth_required", "no auth payload");
  await refused("/private", {}, "auth_required", "empty auth payload");
  await refused("/private", { token: null }, "auth_required", "token null");

  const claims = { sub: "mallory", subscribe: ["*"], publish: ["*"] };
  const header = { alg: "none", typ: "JWT" };
  const unsigned = `${b64url(header)}.${b64url({ aud: PUBSUB.jwtAudience, exp: now() + 3600, ...claims })}.`;
  const good = mint(claims);
  const [h, p] = good.split(".");
  const badTokens = {
    "bad signature": mint(claims, { secret: "another-secret-of-at-least-32-bytes!!" }),
    "tampered payload": `${h}.${b64url({ aud: PUBSUB.jwtAudience, exp: now() + 3600, sub: "admin", subscribe: ["*"] })}.${good.split(".")[2]}`,
    "wrong audience": mint({ ...claims, aud: "someone-else" }),
    "no audience": jwt.sign({ ...claims, exp: now() + 3600 }, PUBSUB.jwtSecret, { algorithm: "HS256" }),
    garbage: "not-a-jwt",
    "three garbage parts": "a.b.c",
    "empty string": "",
    'alg "none"': unsigned,
    'alg "none" with the real signature': `${b64url(header)}.${p}.${good.split(".")[2]}`,
    HS384: mint(claims, { algorithm: "HS384" }),
    HS512: mint(claims, { algorithm: "HS512" }),
    "no exp": jwt.sign({ ...claims, aud: PUBSUB.jwtAudience }, PUBSUB.jwtSecret, { algorithm: "HS256" }),
    "nbf in the future": mint({ ...claims, nbf: now() + 600 }),
  };
  for (const [what, token] of Object.entries(badTokens)) {
    await refused("/private", { token }, "invalid_token", what);
  }
  await refused("/private", { token: 5 }, "invalid_token", "a number");
  await refused("/private", { token: { sub: "x" } }, "invalid_token", "an object");
  // On an anonymous namespace a bad token is refused too, not made anonymous.
  await refused("/", { token: badTokens["bad signature"] }, "invalid_token", "bad signature on /");
  await refused("/", { token: unsigned }, "invalid_token", 'alg "none" on /');

  await refused("/private", { token: mint({ ...claims, exp: now() - 10 }) }, "token_expired", "expired");
  await refused("/", { token: mint({ ...claims, exp: now() - 10 }) }, "token_expired", "expired on /");
  assert.deepEqual(problems, [], `refused CONNECTs:\n${problems.join("\n")}`);
});

pubsubTest(
  "a live socket whose token expires gets token_expired, is disconnected and cannot reconnect with it",
  async ({ client, server }) => {
    const room = "chat:expiring";
    const exp = now() + 2;
    const token = mint({ sub: "eve", exp, subscribe: ["chat:*"] });
    const watcher = client("/private", { ...WS, auth: { token: mint({ sub: "wat", subscribe: ["chat:*"] }) } });
    await connected(watcher);
    await subscribe(watcher, room);
    const watcherLeaves = collect(watcher, "presence:leave");

    // The same token on a websocket-only and a polling-only client; both
    // reconnect by themselves (quickly).
    const variants = [
      ["websocket", { transports: ["websocket"] }],
      ["polling", { transports: ["polling"] }],
    ].map(([name, opts]) => {
      const socket = client("/private", { ...opts, ...FAST_RECONNECT, auth: { token } });
      const log = []; // [ms since exp, event, detail]
      const at = () => Date.now() - exp * 1000;
      socket.on("connect", () => log.push([at(), "connect", socket.id]));
      socket.on("token_expired", (payload) => log.push([at(), "token_expired", payload]));
      socket.on("disconnect", (reason) => log.push([at(), "disconnect", reason]));
      socket.on("connect_error", (err) => log.push([at(), "connect_error", err.data?.code ?? err.message]));
      return { name, socket, log, events: (kind) => log.filter((e) => e[1] === kind) };
    });
    await Promise.all(variants.map((v) => connected(v.socket)));
    for (const v of variants) {
      v.firstId = v.socket.id;
      await subscribe(v.socket, room);
    }
    await watcher.timeout(3000).emitWithAck("presence", { room }); // the joins are through

    // Until each socket's automatic reconnect is refused (or 5 s after exp).
    const refusedOrTimeout = (v) =>
      new Promise((resolveWait) => {
        const deadline = setTimeout(resolveWait, exp * 1000 + 5000 - Date.now());
        v.socket.on("connect_error", () => {
          clearTimeout(deadline);
          resolveWait();
        });
      });
    await Promise.all(variants.map(refusedOrTimeout));

    const problems = [];
    for (const v of variants) {
      const show = () => `${v.name}: events (ms after exp): ${JSON.stringify(v.log)}`;
      const firstDisconnect = v.log.findIndex((e) => e[1] === "disconnect");
      if (firstDisconnect < 0) {
        problems.push(`${v.name}: never disconnected — ${show()}`);
        continue;
      }
      const [disconnectAt, , reason] = v.log[firstDisconnect];
      if (reason !== "transport close") problems.push(`${v.name}: disconnect reason ${reason}, expected "transport close" — ${show()}`);
      if (disconnectAt < -50) problems.push(`${v.name}: disconnected ${-disconnectAt} ms before exp — ${show()}`);
      if (disconnectAt > 1500) problems.push(`${v.name}: disconnected ${disconnectAt} ms after exp — ${show()}`);
      const expiredBefore = v.log.slice(0, firstDisconnect).filter((e) => e[1] === "token_expired");
      if (expiredBefore.length !== 1) {
        problems.push(`${v.name}: ${expiredBefore.length} "token_expired" events before the disconnect, expected 1 — ${show()}`);
      } else if (JSON.stringify(expiredBefore[0][2]) !== JSON.stringify({ message: "Token expired" })) {
        problems.push(`${v.name}: token_expired payload ${JSON.stringify(expiredBefore[0][2])} — ${show()}`);
      }
      // After it: no successful reconnect with the expired token, then a
      // refusal with token_expired.
      const after = v.log.slice(firstDisconnect + 1);
      const reconnects = after.filter((e) => e[1] === "connect");
      if (reconnects.length > 0) {
        problems.push(`${v.name}: the expired token was accepted again on ${reconnects.length} reconnect(s) — ${show()}`);
      }
      const refusals = after.filter((e) => e[1] === "connect_error");
      if (refusals.length === 0 || refusals[0][2] !== "token_expired") {
        problems.push(`${v.name}: the reconnect with the expired token was not refused with token_expired — ${show()}`);
      }
      if (v.socket.connected) problems.push(`${v.name}: still connected at the end — ${show()}`);
    }

    // The forced closes are audited.
    const audit = server.lines().filter((l) => /roomcast::audit/.test(l) && /token expired/.test(l));
    if (audit.length === 0) problems.push("no audit line for the forced close (token expired)");
    for (const line of audit) if (!/kind="?forced_close"?/.test(line)) problems.push(`audit line without kind="forced_close": ${line}`);

    // The expired sockets left their rooms.
    const left = watcherLeaves.list.map((l) => l.id);
    for (const v of variants) {
      if (!left.includes(v.firstId)) problems.push(`${v.name}: no presence:leave for the expired socket (got ${JSON.stringify(watcherLeaves.list)})`);
    }
    assert.deepEqual(problems, [], `live token expiry:\n${problems.join("\n")}`);

    // With a fresh token they connect again.
    for (const v of variants) {
      v.socket.auth = { token: mint({ sub: "eve", subscribe: ["chat:*"] }) };
      v.socket.connect();
      await connected(v.socket, 5000);
      assert.notEqual(v.socket.id, v.firstId);
      await subscribe(v.socket, room);
    }
    const again = await ack(watcher, "presence", { room });
    assert.deepEqual(again.members.map((m) => m.user), ["wat", "eve", "eve"]);
  },
  { timeout: 20000 },
);
