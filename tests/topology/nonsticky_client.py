"""A python-socketio 5 client driven by tests/topology/nonsticky.test.mjs.

    python nonsticky_client.py URL LABEL polling|default ROOM[,ROOM...]

Connects to URL (the balancer) with `transports=["polling"]` or with
python-socketio's default transports (polling, then the upgrade to
WebSocket), subscribes to the rooms, and then talks JSON lines:

- stdout: {"type": "ready", "sid", "eio_sid", "transport"} once subscribed; every
  event received as {"type": "event", "event", "data"}; each command's
  answer as {"type": "ack", "id", "reply"}; {"type": "disconnect",
  "reason"} and {"type": "resubscribed", "transport"} after a
  reconnection (it reconnects as an application would, and subscribes
  again);
- stdin: {"id", "event", "arg"}: emits `event` with `arg` and waits for its
  ack (sio.call); {"quit": true}: disconnects and exits.

Binary values travel as {"$bytes": "<hex>"} on both pipes, so that the
test sees which values arrived as bytes. Engine.IO's and Socket.IO's
warnings (e.g. "Unexpected status code 400", which is what a "Session ID
unknown" answer looks like to python-engineio) go to stderr, which the test
reads.
"""

import json
import logging
import sys
import threading

import socketio

URL, LABEL, TRANSPORTS, ROOMS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

# One writer at a time: events arrive on python-socketio's threads.
out_lock = threading.Lock()


def to_wire(value):
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def from_wire(value):
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def say(**line):
    with out_lock:
        sys.stdout.write(json.dumps(to_wire(line)) + "\n")
        sys.stdout.flush()


def logger(name):
    log = logging.getLogger(f"nonsticky.{name}")
    log.setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{LABEL} {name} %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


sio = socketio.Client(
    reconnection=True,
    reconnection_delay=0.1,
    reconnection_delay_max=1,
    logger=logger("socketio"),
    engineio_logger=logger("engineio"),
)
connected_once = threading.Event()


def subscribe():
    for room in ROOMS:
        reply = sio.call("subscribe", {"room": room}, timeout=10)
        if not (isinstance(reply, dict) and reply.get("ok") is True):
            raise RuntimeError(f"subscribe {room} refused: {reply!r}")


@sio.on("*")
def on_any(event, *args):
    say(type="event", event=event, data=args[0] if len(args) == 1 else list(args))


@sio.event
def connect():
    if connected_once.is_set():
        # A reconnection (a new session): subscribe again, off the thread
        # that delivers the packets the subscribe's ack arrives on.
        def again():
            try:
                subscribe()
                say(type="resubscribed", sid=sio.get_sid(), eio_sid=sio.eio.sid, transport=sio.transport())
            except Exception as err:  # reported to the test, which fails on it
                say(type="error", message=f"subscribing again: {err}")

        threading.Thread(target=again, daemon=True).start()


@sio.event
def disconnect(reason=None):
    say(type="disconnect", reason=str(reason))


def main():
    transports = ["polling"] if TRANSPORTS == "polling" else None
    sio.connect(URL, transports=transports, wait_timeout=10)
    subscribe()
    connected_once.set()
    say(type="ready", sid=sio.get_sid(), eio_sid=sio.eio.sid, transport=sio.transport())
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        try:
            reply = sio.call(command["event"], from_wire(command["arg"]), timeout=10)
            say(type="ack", id=command["id"], reply=reply)
        except Exception as err:
            say(type="ack", id=command["id"], error=str(err))
    sio.disconnect()


if __name__ == "__main__":
    main()
