// A chat on roomcast's client protocol (docs/protocol.md): rooms, presence,
// no history. Everything goes through four acknowledged requests:
//   subscribe / unsubscribe {room}      join and leave a room
//   publish {room, event, data}         everyone else in the room gets `event`
//   presence {room}                     who is in it (every node of a cluster)
// Events published here ("chat:…" in a room "chat:<name>"):
//   chat:message {room, id, name, text}  a message
//   chat:hello   {room, id, name}        someone joined (the others answer chat:here)
//   chat:here    {room, id, name}        "I am here", so a newcomer learns names
//   chat:bye     {room, id, name}        someone left
// Presence itself comes from roomcast: the list is refreshed on each of those
// events, on presence:join / presence:leave where roomcast announces them
// (rooms.notify_namespaces), and every few seconds, which notices a closed
// tab where it does not. `id` is the Socket.IO socket id, which presence
// lists; `name` is what the user typed (with tokens, also the token's sub,
// which presence reports as `user`).
"use strict";

const $ = (id) => document.getElementById(id);
const config = document.body.dataset;
const ROOM = /^[A-Za-z0-9_.-]{1,64}$/;
// As server.mjs allows it in a token.
const NAME = /^[\p{L}\p{N} _.-]{1,32}$/u;
const PRESENCE_EVERY_MS = 5000;

let socket = null;
let me = "";
/** The room we are in (without the "chat:" prefix), or null. */
let room = null;
/** Socket id → name, as announced. */
const names = new Map();

const full = (name) => `chat:${name}`;
const ack = (event, arg) => socket.timeout(5000).emitWithAck(event, arg);

function status(text, connected = false) {
  $("status").textContent = text;
  $("status").classList.toggle("connected", connected);
}

function problem(text) {
  $("problem").textContent = text;
  $("problem").hidden = !text;
}

/** Appends a line: kind "message" (with `who`), "mine", "system" or "error". */
function line(kind, text, who) {
  const li = document.createElement("li");
  li.className = kind;
  if (who !== undefined) {
    const span = document.createElement("span");
    span.className = "who";
    span.textContent = who;
    li.append(span);
  }
  li.append(text);
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function announce(event) {
  return ack("publish", { room: full(room), event, data: { room, id: socket.id, name: me } });
}

// Presence: one request at a time; a refresh asked for meanwhile runs once
// after it.
let presenceRunning = null;
let presenceAgain = false;
function refreshPresence() {
  if (!room || !socket?.connected) return Promise.resolve();
  if (presenceRunning) {
    presenceAgain = true;
    return presenceRunning;
  }
  presenceRunning = (async () => {
    do {
      presenceAgain = false;
      const asked = room;
      const reply = await ack("presence", { room: full(asked) }).catch((e) => ({ ok: false, error: { message: e.message } }));
      if (asked !== room) continue;
      if (!reply.ok) {
        line("error", `presence: ${reply.error.message}`);
        continue;
      }
      showMembers(reply);
    } while (presenceAgain && room);
  })().finally(() => {
    presenceRunning = null;
  });
  return presenceRunning;
}

function showMembers({ count, members, partial }) {
  $("members").replaceChildren(
    ...members.map(({ id, user }) => {
      const li = document.createElement("li");
      li.textContent = id === socket.id ? `${me} (you)` : (user ?? names.get(id) ?? "someone");
      return li;
    }),
  );
  $("member-count").textContent = `(${count}${partial ? ", some servers did not answer" : ""})`;
}

async function enter(name) {
  const reply = await ack("subscribe", { room: full(name) });
  if (!reply.ok) {
    line("error", `cannot join ${name}: ${reply.error.message}`);
    return;
  }
  room = name;
  $("room-title").textContent = `# ${name}`;
  $("chat").hidden = false;
  line("system", `you joined ${name}`);
  await announce("chat:hello");
  await refreshPresence();
}

async function leave() {
  if (!room) return;
  const left = room;
  room = null;
  $("chat").hidden = true;
  $("messages").replaceChildren();
  $("members").replaceChildren();
  await ack("unsubscribe", { room: full(left) });
  await ack("publish", { room: full(left), event: "chat:bye", data: { room: left, id: socket.id, name: me } });
}

/** Whether `data` is about the room we are in (not one we just left). */
const here = (data) => room !== null && data?.room === room;

function connect() {
  // With a token: asked from server.mjs at every (re)connection, so an
  // expired one is replaced.
  const auth =
    config.auth === "token"
      ? (cb) =>
          fetch(`/token?name=${encodeURIComponent(me)}`)
            .then((r) => r.json())
            .then(({ token, error }) => {
              if (error) problem(`no token: ${error}`);
              cb({ token });
            }, () => cb({}))
      : {};
  socket = io(config.roomcastUrl, { path: config.roomcastPath, transports: ["websocket"], auth });
  socket.on("connect", async () => {
    status(`connected as ${me}`, true);
    problem("");
    // A reconnection is a new socket: join the room again.
    if (room) {
      const again = room;
      room = null;
      await enter(again);
    }
  });
  socket.on("disconnect", (reason) => status(`disconnected (${reason}), reconnecting…`));
  socket.on("connect_error", (err) => {
    status("not connected");
    const code = err.data?.code ? ` (${err.data.code})` : "";
    problem(`cannot connect to roomcast at ${config.roomcastUrl}: ${err.message}${code}`);
  });
  socket.on("chat:message", (m) => {
    if (!here(m)) return;
    names.set(m.id, m.name);
    line("message", m.text, m.name);
  });
  socket.on("chat:hello", (m) => {
    if (!here(m)) return;
    names.set(m.id, m.name);
    line("system", `${m.name} joined`);
    announce("chat:here").catch(() => {});
    refreshPresence();
  });
  socket.on("chat:here", (m) => {
    if (!here(m)) return;
    names.set(m.id, m.name);
    refreshPresence();
  });
  socket.on("chat:bye", (m) => {
    if (!here(m)) return;
    line("system", `${m.name} left`);
    refreshPresence();
  });
  for (const event of ["presence:join", "presence:leave"]) {
    socket.on(event, (p) => p.room === full(room) && refreshPresence());
  }
  setInterval(refreshPresence, PRESENCE_EVERY_MS);
}

$("join").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("room").value.trim();
  if (!ROOM.test(name)) {
    problem("a room name is 1 to 64 letters, digits, _ . -");
    return;
  }
  problem("");
  if (!socket) {
    me = $("name").value.trim();
    if (!NAME.test(me)) {
      problem("a name is 1 to 32 letters, digits, spaces, _ . -");
      return;
    }
    problem("");
    $("name").disabled = true;
    connect();
  }
  if (!socket.connected) {
    // Joined at connection (the "connect" handler).
    room = name;
    return;
  }
  if (name === room) return;
  await leave();
  await enter(name);
});

$("leave").addEventListener("click", () => leave().catch((e) => line("error", e.message)));

$("send").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !room) return;
  $("text").value = "";
  const reply = await ack("publish", {
    room: full(room),
    event: "chat:message",
    data: { room, id: socket.id, name: me, text },
  }).catch((err) => ({ ok: false, error: { message: err.message } }));
  if (reply.ok) line("mine", text, me);
  else line("error", `not sent: ${reply.error.message}`);
});

// Leaving the page: tell the room (best effort; presence catches up anyway).
window.addEventListener("pagehide", () => {
  if (room && socket?.connected) socket.emit("publish", { room: full(room), event: "chat:bye", data: { room, id: socket.id, name: me } });
});

if (typeof io !== "function") {
  problem(
    `socket.io-client did not load from roomcast (${document.querySelector("script[src$='socket.io.js']").src}): ` +
      "is roomcast running there (cargo run --release)? If it answers 404, it was built without npm (see its build warning).",
  );
  $("join-button").disabled = true;
}
