// The HTTP API under /api/v1 (docs/protocol.md "From a backend", the
// OpenAPI document src/api/openapi.json) with Node's fetch, against a real
// roomcast process started with tests/clients/roomcast-pubsub.toml, and
// socket.io-client 4.8 sockets as the audience. Covers:
// - POST /publish reaches the subscribed sockets (room and rooms forms, a
//   socket in several of the rooms gets it once, `except` skips the listed
//   socket ids, other namespaces, JSON values of every kind in order, no
//   data), 202 with the recipients count; "data": null arrives as null (as
//   it does from a socket's publish);
// - keys: none, wrong, "Basic …", an empty Bearer → 401
//   {"error":{"code":"unauthorized"}} with WWW-Authenticate: Bearer, on
//   every endpoint;
// - GET /rooms and /rooms/{room} agree with what the sockets subscribed
//   (names, counts, members in join order), also for room names with
//   characters that need escaping in a URL;
// - unknown namespace → 404 unknown_namespace; invalid body, room, event →
//   400 with the documented codes; unknown endpoint → 404 not_found;
// - POST /sockets/{id}/disconnect → 202, the client (websocket and polling)
//   sees "transport close" and reconnects, the forced close is audited;
//   unknown id → 404; a polling session closed between two polls gets the
//   close packet on its next GET (raw Engine.IO);
// - GET /openapi.json needs no key and is an OpenAPI 3 document.

import assert from "node:assert/strict";
import { FAST_RECONNECT, PUBSUB, ack, apiRequest, collect, connected, once, serverTest } from "../lib/roomcast.mjs";

const pubsubTest = (name, fn, opts = {}) => serverTest(name, fn, { config: PUBSUB.config, ...opts });
const WS = { transports: ["websocket"] };

async function subscribe(socket, room) {
  assert.deepEqual(await ack(socket, "subscribe", { room }), { ok: true }, `subscribe ${room}`);
}

function assertApiError(res, status, code, what) {
  assert.equal(res.status, status, `${what}: status ${res.status} ${res.text}`);
  assert.equal(res.json?.error?.code, code, `${what}: ${res.text}`);
  assert.equal(typeof res.json.error.message, "string", `${what}: error.message`);
  assert.deepEqual(Object.keys(res.json), ["error"], `${what}: ${res.text}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/json/, `${what}: content-type`);
}

pubsubTest("POST /publish reaches the subscribed sockets (room, rooms, except, namespaces)", async ({ client, server }) => {
  const [a, b, c] = [client("/", WS), client("/", { transports: ["polling", "websocket"] }), client("/", WS)];
  const o = client("/other", WS);
  await Promise.all([a, b, c, o].map((s) => connected(s)));
  const inbox = new Map([a, b, c, o].map((s) => [s, collect(s, "news")]));
  await subscribe(a, "open:r1");
  await subscribe(b, "open:r1");
  await subscribe(b, "open:r2");
  await subscribe(c, "open:r2");
  await subscribe(o, "open:r1"); // same name, other namespace

  const publish = (body) => apiRequest(server, "POST", "/publish", { body });
  let res = await publish({ room: "open:r1", event: "news", data: { n: 1 } });
  assert.equal(res.status, 202, res.text);
  assert.deepEqual(res.json, { local_recipients: 2, cluster: false, recipients: 2 });

  // rooms: b is in both, and gets it once.
  res = await publish({ rooms: ["open:r1", "open:r2"], event: "news", data: { n: 2 } });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 3, cluster: false, recipients: 3 }]);

  // except: skips the listed socket ids (unknown ids are harmless).
  res = await publish({ rooms: ["open:r1", "open:r2"], event: "news", data: { n: 3 }, except: [b.id, "no-such-id"] });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 2, cluster: false, recipients: 2 }]);

  // An explicit namespace.
  res = await publish({ namespace: "/other", room: "open:r1", event: "news", data: { n: 4 } });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 1, cluster: false, recipients: 1 }]);
  res = await publish({ namespace: "/", room: "open:r2", event: "news", data: { n: 5 } });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 2, cluster: false, recipients: 2 }]);

  // A room nobody is in.
  res = await publish({ room: "open:nobody", event: "news", data: { n: 0 } });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 0, cluster: false, recipients: 0 }]);

  // JSON values of every kind as data, in order; no data at all.
  // (null has a test of its own below.)
  const values = ["text", 42, -1.5, true, false, 0, "", [1, "two", { three: 3 }, null], { nested: { ü: "ok", nil: null } }];
  const valuesAtA = collect(a, "value");
  for (const data of values) {
    res = await publish({ room: "open:r1", event: "value", data });
    assert.deepEqual(res.json, { local_recipients: 2, cluster: false, recipients: 2 });
  }
  const noArgs = new Promise((resolve) => a.once("bare", (...args) => resolve(args)));
  res = await publish({ room: "open:r1", event: "bare" });
  assert.deepEqual(res.json, { local_recipients: 2, cluster: false, recipients: 2 });
  assert.deepEqual(await noArgs, [], "an event without data has no argument");
  assert.deepEqual(valuesAtA.list, values);

  // The last one (n: 6) to everyone: a marker after which nothing else can come.
  res = await publish({ rooms: ["open:r1", "open:r2"], event: "news", data: { n: 6 } });
  res = await publish({ namespace: "/other", room: "open:r1", event: "news", data: { n: 6 } });
  for (const [s, box] of inbox) await box.until((l) => l.some((d) => d.n === 6), 3000, `n=6 at ${s.id}`);

  const ns = (s) => inbox.get(s).list.map((d) => d.n);
  assert.deepEqual(ns(a), [1, 2, 3, 6]);
  assert.deepEqual(ns(b), [1, 2, 5, 6]);
  assert.deepEqual(ns(c), [2, 3, 5, 6]);
  assert.deepEqual(ns(o), [4, 6]);

});

pubsubTest('POST /publish with "data": null delivers null as the argument', async ({ client, server }) => {
  // docs: data is "Any JSON value, sent as the event's argument"; a
  // socket's publish with data null delivers null (checked as a control).
  const [a, b] = [client("/", WS), client("/", WS)];
  await Promise.all([a, b].map((s) => connected(s)));
  await subscribe(a, "open:nil");
  const viaSocket = new Promise((resolve) => a.once("nil", (...args) => resolve(args)));
  assert.deepEqual(await ack(b, "publish", { room: "open:nil", event: "nil", data: null }), { ok: true, recipients: 1 });
  assert.deepEqual(await viaSocket, [null], "socket publish with data null");
  const viaApi = new Promise((resolve) => a.once("nil", (...args) => resolve(args)));
  const res = await apiRequest(server, "POST", "/publish", { body: { room: "open:nil", event: "nil", data: null } });
  assert.deepEqual([res.status, res.json], [202, { local_recipients: 1, cluster: false, recipients: 1 }]);
  assert.deepEqual(await viaApi, [null], 'API publish with "data": null');
});

pubsubTest("API keys: missing, wrong, Basic or empty → 401 on every endpoint", async ({ server }) => {
  const endpoints = [
    ["POST", "/publish", { room: "open:x", event: "e" }],
    ["GET", "/rooms"],
    ["GET", "/rooms/open:x"],
    ["POST", "/sockets/abc/disconnect"],
  ];
  const variants = [
    ["no key", { key: null }],
    ["wrong key", { key: "not-the-right-key-at-all" }],
    ["key prefix", { key: PUBSUB.apiKey.slice(0, -1) }],
    ["key plus a character", { key: `${PUBSUB.apiKey}x` }],
    ["Basic", { authorization: `Basic ${Buffer.from(`user:${PUBSUB.apiKey}`).toString("base64")}` }],
    ["Basic with the key", { authorization: `Basic ${PUBSUB.apiKey}` }],
    ["key without scheme", { authorization: PUBSUB.apiKey }],
    ["empty Bearer", { authorization: "Bearer " }],
  ];
  for (const [method, path, body] of endpoints) {
    for (const [what, opts] of variants) {
      const res = await apiRequest(server, method, path, { body, ...opts });
      assertApiError(res, 401, "unauthorized", `${method} ${path} with ${what}`);
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/, `${method} ${path} with ${what}: WWW-Authenticate`);
    }
    const ok = await apiRequest(server, method, path, { body });
    assert.notEqual(ok.status, 401, `${method} ${path} with the key: ${ok.text}`);
  }
});

pubsubTest("GET /rooms and /rooms/{room} agree with the subscriptions", async ({ client, server }) => {
  const sockets = Array.from({ length: 6 }, (_, i) => client(i < 5 ? "/" : "/other", WS));
  await Promise.all(sockets.map((s) => connected(s)));
  const [s0, s1, s2, s3, s4, o0] = sockets;
  const odd = "open:a/b#c=d+e@f.g_h-i"; // needs escaping in a URL path
  for (const s of [s0, s1, s2]) await subscribe(s, "open:alpha");
  for (const s of [s3, s1]) await subscribe(s, "open:beta");
  await subscribe(s4, odd);
  await subscribe(o0, "open:alpha");

  let res = await apiRequest(server, "GET", "/rooms");
  assert.equal(res.status, 200, res.text);
  const expectedRooms = [
    { name: "open:alpha", members: 3 },
    { name: "open:beta", members: 2 },
    { name: odd, members: 1 },
  ].sort((x, y) => (x.name < y.name ? -1 : 1));
  assert.deepEqual(res.json.namespace, "/");
  assert.deepEqual([...res.json.rooms].sort((x, y) => (x.name < y.name ? -1 : 1)), expectedRooms);
  assert.deepEqual(await apiRequest(server, "GET", "/rooms?namespace=%2F").then((r) => r.json), res.json);

  res = await apiRequest(server, "GET", "/rooms?namespace=%2Fother");
  assert.deepEqual(res.json, { namespace: "/other", rooms: [{ name: "open:alpha", members: 1 }] });
  res = await apiRequest(server, "GET", "/rooms?namespace=%2Fprivate");
  assert.deepEqual(res.json, { namespace: "/private", rooms: [] });

  res = await apiRequest(server, "GET", `/rooms/${encodeURIComponent("open:alpha")}`);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, {
    namespace: "/",
    room: "open:alpha",
    count: 3,
    members: [s0, s1, s2].map((s) => ({ id: s.id, user: null })),
  });
  // The unescaped form of a plain name works too.
  assert.deepEqual((await apiRequest(server, "GET", "/rooms/open:alpha")).json, res.json);

  res = await apiRequest(server, "GET", `/rooms/${encodeURIComponent(odd)}`);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { namespace: "/", room: odd, count: 1, members: [{ id: s4.id, user: null }] });

  res = await apiRequest(server, "GET", `/rooms/${encodeURIComponent("open:alpha")}?namespace=${encodeURIComponent("/other")}`);
  assert.deepEqual(res.json, { namespace: "/other", room: "open:alpha", count: 1, members: [{ id: o0.id, user: null }] });

  res = await apiRequest(server, "GET", "/rooms/open:nobody");
  assert.deepEqual([res.status, res.json], [200, { namespace: "/", room: "open:nobody", count: 0, members: [] }]);

  // After changes: s1 leaves alpha, s2 disconnects; beta keeps its order.
  assert.deepEqual(await ack(s1, "unsubscribe", { room: "open:alpha" }), { ok: true });
  s2.disconnect();
  const deadline = Date.now() + 3000;
  for (;;) {
    res = await apiRequest(server, "GET", "/rooms/open:alpha");
    if (res.json.count === 1 || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.deepEqual(res.json.members, [{ id: s0.id, user: null }]);
  res = await apiRequest(server, "GET", "/rooms/open:beta");
  assert.deepEqual(res.json.members.map((m) => m.id), [s3.id, s1.id]);
  // Rooms that became empty are gone from the list.
  assert.deepEqual(await ack(s4, "unsubscribe", { room: odd }), { ok: true });
  res = await apiRequest(server, "GET", "/rooms");
  assert.deepEqual(res.json.rooms.map((r) => r.name).sort(), ["open:alpha", "open:beta"]);
});

pubsubTest("errors: unknown namespace 404, invalid body/room/event 400, unknown endpoint 404", async ({ server }) => {
  const post = (body, opts = {}) => apiRequest(server, "POST", "/publish", { body, ...opts });
  assertApiError(await apiRequest(server, "GET", "/rooms?namespace=%2Fnope"), 404, "unknown_namespace", "GET /rooms /nope");
  assertApiError(await apiRequest(server, "GET", "/rooms/open:x?namespace=nope"), 404, "unknown_namespace", "GET /rooms/x nope");
  assertApiError(await post({ namespace: "/nope", room: "open:x", event: "e" }), 404, "unknown_namespace", "publish /nope");

  const bad = [
    [{ room: "bad room!", event: "e" }, "invalid_room"],
    [{ room: "", event: "e" }, "invalid_room"],
    [{ room: "x".repeat(129), event: "e" }, "invalid_room"],
    [{ rooms: ["open:ok", "bad room!"], event: "e" }, "invalid_room"],
    [{ room: "open:x", event: "" }, "invalid_event"],
    [{ room: "open:x", event: "e".repeat(129) }, "invalid_event"],
    ...["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"].map((event) => [
      { room: "open:x", event },
      "invalid_event",
    ]),
    [{ room: "open:x" }, "bad_request"], // no event
    [{ event: "e" }, "bad_request"], // neither room nor rooms
    [{ room: "open:x", rooms: ["open:y"], event: "e" }, "bad_request"], // both
    [{ rooms: [], event: "e" }, "bad_request"],
    [{ rooms: Array.from({ length: 101 }, (_, i) => `open:${i}`), event: "e" }, "bad_request"],
    [{ room: "open:x", event: "e", except: Array.from({ length: 101 }, (_, i) => `id${i}`) }, "bad_request"],
    [{ room: "open:x", event: "e", extra: 1 }, "bad_request"], // unknown field
    [{ room: 5, event: "e" }, "bad_request"],
    [{ room: "open:x", event: 5 }, "bad_request"],
    [{ room: "open:x", event: "e", except: "id" }, "bad_request"],
    [[], "bad_request"],
    ["text", "bad_request"],
    [null, "bad_request"],
  ];
  for (const [body, code] of bad) assertApiError(await post(body), 400, code, `publish ${JSON.stringify(body).slice(0, 60)}`);
  assertApiError(await post(undefined, { rawBody: "{not json", headers: { "content-type": "application/json" } }), 400, "bad_request", "malformed JSON");
  assertApiError(await post(undefined, { rawBody: "", headers: { "content-type": "application/json" } }), 400, "bad_request", "empty body");
  assertApiError(
    await post(undefined, { rawBody: JSON.stringify({ room: "open:x", event: "e" }), headers: { "content-type": "text/plain" } }),
    400,
    "bad_request",
    "not application/json",
  );
  // Limits that are fine.
  const ok = await post({ rooms: Array.from({ length: 100 }, (_, i) => `open:${i}`), event: "e".repeat(128), except: [] });
  assert.deepEqual([ok.status, ok.json], [202, { local_recipients: 0, cluster: false, recipients: 0 }]);

  assertApiError(await apiRequest(server, "GET", "/rooms/bad%20room!"), 400, "invalid_room", "GET /rooms/bad room!");
  assertApiError(await apiRequest(server, "GET", `/rooms/${"x".repeat(129)}`), 400, "invalid_room", "GET /rooms/<129 bytes>");

  assertApiError(await apiRequest(server, "GET", "/nope"), 404, "not_found", "GET /nope");
  assertApiError(await apiRequest(server, "GET", "/publish"), 404, "not_found", "GET /publish");
  assertApiError(await apiRequest(server, "DELETE", "/rooms"), 404, "not_found", "DELETE /rooms");
});

pubsubTest("POST /sockets/{id}/disconnect closes the connection; the client reconnects", async ({ client, server }) => {
  const victim = client("/", { ...WS, ...FAST_RECONNECT });
  const pollingVictim = client("/", { transports: ["polling"], ...FAST_RECONNECT });
  const bystander = client("/", WS);
  await Promise.all([victim, pollingVictim, bystander].map((s) => connected(s)));
  for (const s of [victim, pollingVictim, bystander]) await subscribe(s, "open:kick");

  for (const s of [victim, pollingVictim]) {
    const oldId = s.id;
    const disconnected = once(s, "disconnect", 3000);
    const reconnected = once(s, "connect", 5000);
    const res = await apiRequest(server, "POST", `/sockets/${encodeURIComponent(oldId)}/disconnect`);
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(res.json, { disconnected: true });
    const [reason] = await disconnected;
    assert.equal(reason, "transport close", `${s.io.opts.transports}: disconnect reason`);
    await reconnected;
    assert.notEqual(s.id, oldId);
    // The old id is gone, from the rooms too.
    const again = await apiRequest(server, "POST", `/sockets/${encodeURIComponent(oldId)}/disconnect`);
    assertApiError(again, 404, "not_found", "the old id");
    const members = await apiRequest(server, "GET", "/rooms/open:kick");
    assert.ok(!members.json.members.some((m) => m.id === oldId), `old id still a member: ${members.text}`);
  }
  assert.ok(bystander.connected, "the bystander was not affected");
  await server.waitForLog(/roomcast::audit.*disconnected through the API/, 3000);
  const audit = server.lines().filter((l) => /roomcast::audit/.test(l) && /disconnected through the API/.test(l));
  assert.equal(audit.length, 2, audit.join("\n"));
  for (const line of audit) assert.match(line, /kind="?forced_close"?/, line);

  assertApiError(await apiRequest(server, "POST", "/sockets/no-such-socket/disconnect"), 404, "not_found", "unknown id");
  // An Engine.IO session id is not a namespace socket id.
  assertApiError(
    await apiRequest(server, "POST", `/sockets/${encodeURIComponent(bystander.io.engine.id)}/disconnect`),
    404,
    "not_found",
    "engine id",
  );
  assert.ok(bystander.connected);
});

pubsubTest("POST /sockets/{id}/disconnect on a polling session between polls: the next GET gets the close packet", async ({ server }) => {
  // Raw Engine.IO: no GET is pending when the API closes the session. The
  // close packet must wait for the next GET (as it does when data is
  // buffered), not be lost: a 400 there makes socket.io-client report
  // "transport error" instead of "transport close".
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base, { signal: AbortSignal.timeout(5000) })).text();
  assert.match(open, /^0\{/);
  const url = `${base}&sid=${JSON.parse(open.slice(1)).sid}`;
  assert.equal(await (await fetch(url, { method: "POST", body: "40", signal: AbortSignal.timeout(5000) })).text(), "ok");
  const connect = await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text();
  const m = /^40\{"sid":"([^"]+)"\}$/.exec(connect);
  assert.ok(m, connect);
  const res = await apiRequest(server, "POST", `/sockets/${encodeURIComponent(m[1])}/disconnect`);
  assert.deepEqual([res.status, res.json], [202, { disconnected: true }]);
  await server.waitForLog(/roomcast::audit.*disconnected through the API/, 3000);
  const next = await fetch(url, { signal: AbortSignal.timeout(5000) });
  assert.deepEqual([next.status, await next.text()], [200, "1"], "the GET after the forced close");
});

pubsubTest("GET /openapi.json needs no key and is an OpenAPI 3 document", async ({ server }) => {
  for (const opts of [{ key: null }, { key: "wrong-key-wrong-key" }, {}]) {
    const res = await apiRequest(server, "GET", "/openapi.json", opts);
    assert.equal(res.status, 200, res.text);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    const doc = res.json;
    assert.ok(doc, "parses as JSON");
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.equal(typeof doc.info?.title, "string");
    assert.equal(typeof doc.info?.version, "string");
    assert.deepEqual(doc.servers, [{ url: "/api/v1" }]);
    for (const path of ["/publish", "/rooms", "/rooms/{room}", "/sockets/{id}/disconnect", "/openapi.json"]) {
      assert.ok(doc.paths?.[path], `path ${path} documented`);
    }
    assert.ok(doc.paths["/publish"].post && doc.paths["/rooms"].get && doc.paths["/rooms/{room}"].get);
    assert.ok(doc.paths["/sockets/{id}/disconnect"].post);
    assert.equal(doc.components?.securitySchemes?.bearer?.scheme, "bearer");
    // Every $ref resolves inside the document.
    const refs = JSON.stringify(doc).match(/"\$ref":"[^"]+"/g) ?? [];
    for (const ref of refs) {
      const pointer = ref.slice('"$ref":"'.length, -1);
      assert.ok(pointer.startsWith("#/"), ref);
      let node = doc;
      for (const part of pointer.slice(2).split("/")) node = node?.[part.replace(/~1/g, "/").replace(/~0/g, "~")];
      assert.ok(node, `${ref} resolves`);
    }
  }
});
