"""python-socketio 5 and roomcast's connection state recovery.

python-socketio does not implement recovery: it sends only its `auth` in
CONNECT (never a pid or offset), reads only `sid` from the answer, and
passes every argument of an event to the handler. So, with
tests/clients/roomcast-pubsub.toml:
- recovery off (the default): a handler gets exactly the published
  arguments, no offset;
- recovery on for "/": a handler on "/" gets one more, trailing, string
  argument shaped "<ms>-<seq>" (a "*" catch-all sees it too), while "/other"
  (not a recovering namespace) gets none; a handler that takes exactly the
  published arguments is never run: python-socketio's call raises TypeError
  in its message thread (reported by threading.excepthook, not to the
  application) and the connection goes on;
- a python client whose transport is lost reconnects by itself to a fresh
  session: a new sid; the server kept the lost socket's session, and counts
  neither a recovery nor a refused one (no pid was sent).
"""

import os
import re
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import requests  # noqa: E402
import socketio  # noqa: E402
from roomcast_proc import PUBSUB_CONFIG, Inbox, Roomcast, RoomcastTestCase, wait_for  # noqa: E402

ROOM = "open:py-recovery"
OFFSET = re.compile(r"^\d+-\d+$")
RECOVERY_ON = {"ROOMCAST__RECOVERY__ENABLED": "true", "ROOMCAST__RECOVERY__NAMESPACES": "/"}


class RecoveryTest(RoomcastTestCase):
    def setUp(self):
        # Each test starts the server it needs (self.start).
        pass

    def start(self, env=None):
        self.server = Roomcast(config=PUBSUB_CONFIG, env=env)
        self.addCleanup(self.server.kill)

    def client(self, *events, namespaces=("/",), **options):
        sio = self.track(socketio.Client(**{"reconnection": False, **options}))
        inbox = Inbox(sio, *events)
        sio.connect(self.server.url, transports=["websocket"], namespaces=list(namespaces))
        return sio, inbox

    def publish(self, publisher, event, data, namespace="/"):
        answer = publisher.call("publish", {"room": ROOM, "event": event, "data": data}, namespace=namespace, timeout=3)
        self.assertTrue(answer.get("ok"), answer)

    def subscribe(self, sio, namespace="/"):
        self.assertEqual(sio.call("subscribe", {"room": ROOM}, namespace=namespace, timeout=3), {"ok": True})

    def recovery_metrics(self):
        """The roomcast_recover* series of /metrics: {series: value}."""
        text = requests.get(f"{self.server.url}/metrics", timeout=5).text
        return dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("roomcast_recover"))

    def test_recovery_off_a_handler_gets_exactly_the_published_arguments(self):
        self.start()
        sub, inbox = self.client("msg")
        self.subscribe(sub)
        publisher, _ = self.client()
        self.publish(publisher, "msg", {"n": 1})
        self.assertEqual(inbox.get("msg"), ({"n": 1},))

    def test_recovery_on_a_handler_gets_a_trailing_offset(self):
        self.start(RECOVERY_ON)
        both = ("/", "/other")
        sub, inbox = self.client("msg", ("msg", "/other"), namespaces=both)
        caught = []
        sub.on("*", lambda event, *args: caught.append((event, args)))
        for nsp in both:
            self.subscribe(sub, nsp)
        publisher, _ = self.client(namespaces=both)

        self.publish(publisher, "msg", {"n": 1})
        data, offset = inbox.get("msg")
        self.assertEqual(data, {"n": 1})
        self.assertRegex(offset, OFFSET)
        self.publish(publisher, "other", "x")
        wait_for(lambda: caught, 3, 'the "*" handler')
        [(event, args)] = caught
        self.assertEqual(event, "other")
        self.assertEqual(args[0], "x")
        self.assertRegex(args[1], OFFSET)
        self.assertEqual(len(args), 2)
        # Not a recovering namespace: no offset.
        self.publish(publisher, "msg", {"n": 2}, namespace="/other")
        self.assertEqual(inbox.get("msg", "/other"), ({"n": 2},))

    def test_recovery_on_a_handler_of_exactly_the_published_arguments_is_not_run(self):
        self.start(RECOVERY_ON)
        errors = []
        hook = threading.excepthook
        threading.excepthook = lambda info: errors.append(info.exc_value)
        self.addCleanup(setattr, threading, "excepthook", hook)
        sub, _ = self.client()
        calls = []

        @sub.on("one")
        def on_one(data):
            calls.append(data)

        self.subscribe(sub)
        publisher, _ = self.client()
        self.publish(publisher, "one", 1)
        wait_for(lambda: errors, 3, "the TypeError of the one-argument handler")
        self.assertIsInstance(errors[0], TypeError)
        self.assertEqual(calls, [])
        self.assertEqual(sub.call("subscribe", {"room": "open:after"}, timeout=3), {"ok": True}, "still connected")

    def test_a_lost_transport_reconnects_to_a_fresh_session(self):
        self.start(RECOVERY_ON)
        sub, inbox = self.client(
            "connect", "disconnect", reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2
        )
        self.assertEqual(inbox.get("connect"), ())
        self.subscribe(sub)
        first = sub.get_sid("/")
        # A network failure: the WebSocket's TCP connection ends without a
        # close frame; the server keeps a session for it.
        sub.eio.ws.sock.shutdown(socket.SHUT_RDWR)
        inbox.get("disconnect")
        self.assertEqual(inbox.get("connect", timeout=5), ())
        wait_for(lambda: sub.connected, 3, "sio.connected after reconnecting")
        self.assertNotEqual(sub.get_sid("/"), first, "a new sid")
        # The server kept the lost socket's session (it would have resumed
        # it), but the client asked for none: nothing recovered or refused.
        wait_for(lambda: self.recovery_metrics()["roomcast_recovery_sessions"] == "1", 3, "the kept session")
        metrics = self.recovery_metrics()
        self.assertEqual(metrics["roomcast_recoveries_total"], "0")
        refused = {k: v for k, v in metrics.items() if k.startswith("roomcast_recoveries_refused_total")}
        self.assertTrue(refused)
        self.assertEqual(set(refused.values()), {"0"}, f"no pid was sent, so none refused: {refused}")


if __name__ == "__main__":
    unittest.main()
