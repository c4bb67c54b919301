// Client-side shim loaded into mocha with --require (scripts/conformance does
// this). It changes neither the suites' code nor their assertions.
//
// Why: the suites wait for frames with `await waitFor(socket, "message")`, which
// registers a one-shot listener only after the previous await has resumed (a
// microtask later). The pinned `ws` client (8.5.0) emits every frame found in one
// TCP read synchronously, so when two server frames arrive coalesced (e.g. the
// CONNECT reply "40{...}" immediately followed by the "auth" event) the second one
// is emitted while nobody listens and is lost: the test then reads the next ping
// ("2") instead, or times out. With the Node reference server this hit 16 of 20
// socket.io-suite runs (1 to 4 failed tests each).
//
// Fix: per socket, the first 'message'/'close' event of a macrotask is emitted
// synchronously, exactly as before; any further one that ws produces before the
// next turn of the event loop is queued and emitted one per setImmediate, i.e.
// after pending promise continuations ran. That is what the client would see if
// every frame had arrived in its own TCP read. Frames that arrive while no
// listener is registered are still dropped, as without the shim (the engine.io
// suite's upgrade tests rely on "3probe" being dropped that way).
const WebSocket = require(require.resolve("ws", { paths: [process.cwd()] }));

const kQueue = Symbol("conformanceQueue");
const kBusy = Symbol("conformanceBusy");
const emit = WebSocket.prototype.emit;

function release(socket) {
  setImmediate(() => {
    const next = socket[kQueue].shift();
    if (!next) {
      socket[kBusy] = false;
      return;
    }
    emit.call(socket, next[0], ...next[1]);
    release(socket);
  });
}

WebSocket.prototype.emit = function (event, ...args) {
  if (event !== "message" && event !== "close") return emit.call(this, event, ...args);
  if (this[kBusy]) {
    this[kQueue].push([event, args]);
    return true;
  }
  this[kBusy] = true;
  this[kQueue] ??= [];
  release(this);
  return emit.call(this, event, ...args);
};
