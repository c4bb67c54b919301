// The chat example's web server: it serves the page (public/) and, when
// ROOMCAST_JWT_SECRET is set, the tokens the page's sockets connect with.
// The page talks to roomcast directly (Socket.IO over a WebSocket) and loads
// socket.io-client from roomcast itself (/socket.io/socket.io.js): this
// server never sees a message and needs no package.
//
//   node server.mjs [ROOMCAST_URL]        (npm start [-- ROOMCAST_URL])
//
// Environment (defaults in brackets):
//   ROOMCAST_URL         where roomcast is, as the browser reaches it [http://127.0.0.1:3000]
//   ROOMCAST_PATH        roomcast's server.path [/socket.io/]
//   ROOMCAST_JWT_SECRET  roomcast's auth.jwt_secret (HS256) when its sockets
//                        need a token (the production profile, docker compose);
//                        empty = anonymous sockets (roomcast's defaults)
//   HOST, PORT           where this server listens [127.0.0.1, 8000; PORT=0 = any free port]

import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

const env = process.env;
const roomcast = new URL(process.argv[2] || env.ROOMCAST_URL || "http://127.0.0.1:3000");
const path = env.ROOMCAST_PATH || "/socket.io/";
const secret = env.ROOMCAST_JWT_SECRET || "";
const host = env.HOST || "127.0.0.1";
const port = Number(env.PORT ?? 8000);

if (!/^https?:$/.test(roomcast.protocol)) throw new Error(`ROOMCAST_URL must be http(s)://host:port, not ${roomcast}`);
const origin = roomcast.origin;
const bundle = `${origin}${path.replace(/\/?$/, "/")}socket.io.js`;

const file = (name) => readFileSync(new URL(`public/${name}`, import.meta.url), "utf8");
const escape = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = file("index.html")
  .replaceAll("{{roomcast_url}}", escape(origin))
  .replaceAll("{{roomcast_path}}", escape(path))
  .replaceAll("{{auth}}", secret ? "token" : "anonymous")
  .replaceAll("{{client_bundle}}", escape(bundle));
const assets = {
  "/": ["text/html; charset=utf-8", page],
  "/chat.js": ["text/javascript; charset=utf-8", file("chat.js")],
  "/chat.css": ["text/css; charset=utf-8", file("chat.css")],
};
// The page's scripts come from here and from roomcast, its connections go
// to roomcast (polling or WebSocket).
const csp = [
  "default-src 'self'",
  `script-src 'self' ${origin}`,
  `connect-src 'self' ${origin} ${origin.replace(/^http/, "ws")}`,
  "img-src 'self' data:",
  "frame-ancestors 'none'",
].join("; ");

// A user name, as the page allows it: it is the token's `sub`.
const NAME = /^[\p{L}\p{N} _.-]{1,32}$/u;

/**
 * An HS256 JWT for `name` that may use the chat's rooms (`chat:*`) for an
 * hour: what roomcast's production profile asks of a socket. A real
 * application issues it after its own sign-in; this example trusts the name.
 */
function token(name) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims = { sub: name, subscribe: ["chat:*"], publish: ["chat:*"], iat: now, exp: now + 3600 };
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

function send(res, status, type, body) {
  res.writeHead(status, {
    "content-type": type,
    "content-security-policy": csp,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.end(body);
}

const server = createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (req.method !== "GET" && req.method !== "HEAD") {
    return send(res, 405, "text/plain", "method not allowed\n");
  }
  if (url.pathname === "/token") {
    const name = url.searchParams.get("name") ?? "";
    if (!secret) return send(res, 404, "application/json", JSON.stringify({ error: "no ROOMCAST_JWT_SECRET: sockets are anonymous" }));
    if (!NAME.test(name)) return send(res, 400, "application/json", JSON.stringify({ error: "a name is 1 to 32 letters, digits, spaces, _ . -" }));
    return send(res, 200, "application/json", JSON.stringify({ token: token(name) }));
  }
  const asset = assets[url.pathname];
  if (!asset) return send(res, 404, "text/plain", "not found\n");
  send(res, 200, ...asset);
});

server.listen(port, host, async () => {
  const { port: bound } = server.address();
  const shown = host.includes(":") ? `[${host}]` : host;
  console.log(`chat at http://${shown}:${bound}/ (roomcast at ${origin}${path}, ${secret ? "sockets with tokens" : "anonymous sockets"})`);
  // What a newcomer most likely got wrong, said once at the start; the
  // page says it too.
  try {
    const res = await fetch(bundle, { signal: AbortSignal.timeout(3000) });
    if (res.status === 404) {
      const why = await res.json().then((b) => b.error, () => "");
      console.warn(`roomcast answers ${bundle} with 404: ${why || "is ROOMCAST_PATH right?"}`);
    } else if (!res.ok) {
      console.warn(`roomcast answers ${bundle} with HTTP ${res.status}`);
    }
  } catch (e) {
    console.warn(`no roomcast at ${origin} yet (${e.cause?.code ?? e.message}): start it (cargo run --release), then reload the page`);
  }
});

server.on("error", (e) => {
  console.error(`cannot listen on ${host}:${port}: ${e.message} (choose another port: PORT=8001)`);
  process.exit(1);
});

for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
