// The roomcast dashboard: live numbers from /metrics (and, with an API key,
// rooms and audit events from /api/v1), a publish form, and a socket of its
// own to watch a room: the live view, which needs the socket.io-client
// bundle the server serves under its Socket.IO path (server.path). The
// server writes that path, the bundle's URL and, when it has no bundle, why
// into <body>'s data attributes. Without the bundle the numbers still
// update and the page says why the live view is off.
"use strict";

const $ = (id) => document.getElementById(id);
const server = document.body.dataset;
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("roomcast-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("roomcast-api-key", keyInput.value));

function text(el, value) {
  el.textContent = value;
}

function rows(table, pairs) {
  table.replaceChildren(
    ...pairs.map(([k, v]) => {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      const b = document.createElement("td");
      b.className = "n";
      a.textContent = k;
      b.textContent = v;
      tr.append(a, b);
      return tr;
    }),
  );
}

/** Parses the Prometheus/OpenMetrics text: [{name, labels, value}]. */
function parseMetrics(body) {
  const out = [];
  for (const line of body.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function api(path, init = {}) {
  const headers = { ...(init.headers || {}), authorization: `Bearer ${keyInput.value}` };
  return fetch(`/api/v1${path}`, { ...init, headers });
}

async function refresh() {
  const samples = parseMetrics(await (await fetch("/metrics")).text());
  const of = (name) => samples.filter((s) => s.name === name);
  const sessions = of("roomcast_sessions");
  text($("sessions"), sessions.reduce((n, s) => n + s.value, 0));
  rows($("transports"), sessions.map((s) => [s.labels.transport, s.value]));
  rows($("namespaces"), of("roomcast_sockets").map((s) => [s.labels.namespace, s.value]));
  rows($("disconnects"), of("roomcast_disconnects_total").map((s) => [s.labels.reason, s.value]));
  const one = (name) => of(name)[0]?.value ?? 0;
  rows($("traffic"), [
    ["handshakes", of("roomcast_handshakes_total").reduce((n, s) => n + s.value, 0)],
    ["deliveries", one("roomcast_deliveries_total")],
    ["events in", one("roomcast_events_in_total")],
    ["events out", one("roomcast_events_out_total")],
    ["slow consumers closed", one("roomcast_slow_consumer_closes_total")],
  ]);
  if (keyInput.value) {
    const rooms = await api("/rooms");
    if (rooms.ok) {
      const body = await rooms.json();
      text($("room-count"), body.rooms.length);
      rows($("rooms"), body.rooms.slice(0, 15).map((r) => [r.name, r.members]));
      text($("rooms-hint"), body.partial ? "some nodes did not answer" : "");
    } else {
      text($("rooms-hint"), `rooms: HTTP ${rooms.status}`);
    }
    const audit = await api("/audit?limit=10");
    if (audit.ok) {
      const body = await audit.json();
      rows($("audit"), (body.events || []).map((e) => [`${e.time ?? ""} ${e.kind}`, e.reason]));
      text($("audit-hint"), "");
    } else {
      text($("audit-hint"), `audit: HTTP ${audit.status}`);
    }
  } else {
    text($("rooms-hint"), "enter the API key to list rooms");
    text($("audit-hint"), "enter the API key to list audit events");
  }
  text($("updated"), `updated ${new Date().toLocaleTimeString()}`);
}

// The numbers first: they need nothing but /metrics (and the API).
const report = (e) => text($("updated"), `error: ${e.message}`);
refresh().catch(report);
setInterval(() => refresh().catch(report), 1000);

// The live view: the dashboard's own socket, which counts as a connection,
// watches a room and publishes when no API key is given. Null when off.
let socket = null;

function liveOff(why) {
  $("status").classList.remove("live");
  $("status").classList.add("off");
  text($("status"), "no live view");
  const hint = $("live-hint");
  text(hint, `Live view off: ${why}. The numbers still update from /metrics; publishing needs the API key.`);
  hint.hidden = false;
  for (const el of $("watch").elements) el.disabled = true;
}

function liveOn() {
  socket = io({ path: server.sioPath, transports: ["websocket", "polling"] });
  socket.on("connect", () => {
    $("status").classList.add("live");
    text($("status"), "live");
  });
  socket.on("disconnect", (reason) => {
    $("status").classList.remove("live");
    text($("status"), `disconnected: ${reason}`);
  });
  socket.onAny((event, data) => {
    if (event.startsWith("presence:")) return;
    const log = $("watch-log");
    log.textContent = `${event} ${JSON.stringify(data)}\n${log.textContent}`.slice(0, 4000);
  });
  $("watch").addEventListener("submit", async (e) => {
    e.preventDefault();
    const reply = await socket.emitWithAck("subscribe", { room: $("watch-room").value });
    $("watch-log").textContent = `subscribe: ${JSON.stringify(reply)}\n${$("watch-log").textContent}`;
  });
}

if (server.clientMissing) {
  liveOff(server.clientMissing);
} else if (typeof io !== "function") {
  liveOff(`the socket.io-client bundle did not load from ${server.clientBundle}`);
} else {
  try {
    liveOn();
  } catch (e) {
    socket = null;
    liveOff(`the socket.io-client bundle failed (${e.message})`);
  }
}

$("publish").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("publish-result");
  let data;
  try {
    data = JSON.parse($("pub-data").value || "null");
  } catch (err) {
    out.textContent = `data is not JSON: ${err.message}`;
    return;
  }
  const message = { room: $("pub-room").value, event: $("pub-event").value, data };
  if (keyInput.value) {
    const res = await api("/publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(message),
    });
    out.textContent = `HTTP ${res.status} ${await res.text()}`;
  } else if (socket) {
    out.textContent = JSON.stringify(await socket.emitWithAck("publish", message));
  } else {
    out.textContent = "enter the API key to publish: the live view (the dashboard's own socket) is off";
  }
});
