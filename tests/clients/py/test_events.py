"""python-socketio 5 against a real roomcast process: events, acks, binary.

Covers, on websocket-only and polling-only clients:
- client→server events round-trip ("message" → "message-back") with JSON
  arguments of every type;
- client→server acks with sio.call (one argument, several arguments) and
  with emit(callback=...);
- server→client acks: "request-ack" makes the server emit "ack-request" with
  an ack; the client's handler return value answers it and the server
  reports it as "ack-response" (a tuple return = several arguments; a None
  return = an empty ack);
- binary payloads (bytes) both ways: top-level, nested in dicts and lists,
  in events and in client→server acks (sio.call); the bytes are asserted;
- binary through the server's own ack round-trip (bytes in "request-ack"
  data → "ack-request"; bytes returned by the client's handler →
  "ack-response");
- a burst on polling: more packets than python-engineio takes in one
  polling answer (16) are waiting at once, and every one arrives, in
  order, on the same session (engine.max_packets_per_poll).
"""

import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import socketio  # noqa: E402
from roomcast_proc import Inbox, RoomcastTestCase  # noqa: E402

JSON_ARGS = ("str", 0, -1.5, True, False, None, [1, [2, [3]]], {"a": {"b": "ü"}, "empty": {}})
ALL_BYTES = bytes(range(256))
UTF8 = "héllo wörld ✓".encode()
SMALL = b"\x00\x01\x02\x03"
BINARY_ARGS = ("text", ALL_BYTES, {"nested": {"buf": UTF8, "list": [SMALL, 7, "x"]}, "flag": True})

TRANSPORTS = (["websocket"], ["polling"])


class EventsTest(RoomcastTestCase):
    def connect(self, transports, *events):
        sio = self.track(socketio.Client(reconnection=False))
        inbox = Inbox(sio, *events)
        sio.connect(self.server.url, transports=transports)
        return sio, inbox

    def test_event_round_trip(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, inbox = self.connect(transports, "message-back")
                sio.emit("message", JSON_ARGS)
                self.assertEqual(inbox.get("message-back"), JSON_ARGS)
                sio.emit("message", "single")
                self.assertEqual(inbox.get("message-back"), ("single",))
                sio.disconnect()

    def test_client_to_server_ack(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, _ = self.connect(transports)
                self.assertEqual(sio.call("message-with-ack", "one", timeout=3), "one")
                self.assertEqual(sio.call("message-with-ack", JSON_ARGS, timeout=3), JSON_ARGS)

                got = []
                done = threading.Event()

                def callback(*args):
                    got.append(args)
                    done.set()

                sio.emit("message-with-ack", ("a", 1), callback=callback)
                self.assertTrue(done.wait(3), "ack callback called")
                self.assertEqual(got, [("a", 1)])
                sio.disconnect()

    def test_server_to_client_ack(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, inbox = self.connect(transports, "ack-response")
                requests = []

                def on_ack_request(data):
                    requests.append(data)
                    return ("answer", {"echo": data}, 3)

                sio.on("ack-request", on_ack_request)
                sio.emit("request-ack", {"question": 42})
                self.assertEqual(inbox.get("ack-response"), ("answer", {"echo": {"question": 42}}, 3))
                self.assertEqual(requests, [{"question": 42}])

                # A handler that returns a single value answers with one argument,
                # one that returns None with an empty ack.
                sio.on("ack-request", lambda data: "single")
                sio.emit("request-ack", "x")
                self.assertEqual(inbox.get("ack-response"), ("single",))
                sio.on("ack-request", lambda data: None)
                sio.emit("request-ack", "x")
                self.assertEqual(inbox.get("ack-response"), ())
                sio.disconnect()

    def assert_binary_args(self, args):
        self.assertEqual(len(args), 3)
        self.assertEqual(args[0], "text")
        self.assertIsInstance(args[1], bytes)
        self.assertEqual(args[1], ALL_BYTES)
        self.assertEqual(args[2]["nested"]["buf"], UTF8)
        self.assertEqual(args[2]["nested"]["list"], [SMALL, 7, "x"])
        self.assertIs(args[2]["flag"], True)

    def test_binary_events_and_client_acks(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, inbox = self.connect(transports, "message-back")
                sio.emit("message", BINARY_ARGS)
                self.assert_binary_args(inbox.get("message-back"))

                self.assert_binary_args(sio.call("message-with-ack", BINARY_ARGS, timeout=3))

                big = b"\xab" * 200_000
                sio.emit("message", big)
                self.assertEqual(inbox.get("message-back"), (big,))
                self.assertEqual(sio.call("message-with-ack", SMALL, timeout=3), SMALL)
                sio.disconnect()

    def test_binary_in_server_event_with_ack(self):
        """bytes in "request-ack" data must reach the client's "ack-request"."""
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, _ = self.connect(transports)
                got = []
                done = threading.Event()

                def on_ack_request(*args):
                    got.append(args)
                    done.set()
                    return "ok"

                sio.on("ack-request", on_ack_request)
                sio.emit("request-ack", ({"payload": SMALL}, ALL_BYTES))
                self.assertTrue(done.wait(3), "ack-request received")
                self.assertEqual(got, [({"payload": SMALL}, ALL_BYTES)])
                sio.disconnect()

    def test_binary_in_client_ack_to_server(self):
        """bytes returned by the client's ack handler must reach "ack-response"."""
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                sio, inbox = self.connect(transports, "ack-response")
                sio.on("ack-request", lambda data: BINARY_ARGS)
                sio.emit("request-ack", "send me binary")
                self.assert_binary_args(inbox.get("ack-response"))
                sio.disconnect()

    def test_a_burst_reaches_a_polling_client_whole(self):
        sio, inbox = self.connect(["polling"], "message-back")
        sid = sio.get_sid()
        lost = []
        sio.on("disconnect", lambda *reason: lost.append(reason))
        # Sent in one POST and echoed in one turn of the server: far more
        # than 16 packets (a binary event is two) wait for the next GET.
        for i in range(60):
            sio.emit("message", (i, SMALL))
        for i in range(60):
            self.assertEqual(inbox.get("message-back", timeout=5), (i, SMALL))
        self.assertEqual(lost, [])
        self.assertEqual(sio.get_sid(), sid)
        sio.disconnect()

if __name__ == "__main__":
    unittest.main()
