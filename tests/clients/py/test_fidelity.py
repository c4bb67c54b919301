"""Payload fidelity with python-socketio 5 against a real roomcast process.

What a publisher sends is what every subscriber receives, as a Python
client sees it: python-socketio writes JSON with json.dumps (keys in dict
order, integers of any size, floats with their ".0") and reads it with
json.loads, so a payload is compared as json.dumps of what was sent and of
what arrived, which holds only if every dict has its keys in the same order
and every number the same type and value. Covers, with
tests/clients/roomcast-pubsub.toml:
- a client's publish to a WebSocket and a long-polling subscriber: the
  reported payload, nested lists of dicts, unicode, numbers (1.0 stays a
  float, 12345678901234567890123 stays an int, 10**400 arrives and the
  publisher keeps its connection), bytes among keys;
- an HTTP API publish (requests, body written by json.dumps).
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import engineio.packet  # noqa: E402
import requests  # noqa: E402
import socketio.packet  # noqa: E402
from roomcast_proc import PUBSUB_API_KEY, PUBSUB_CONFIG, Inbox, Roomcast, RoomcastTestCase  # noqa: E402

ROOM = "open:fidelity"

PAYLOADS = (
    ("the reported payload", {"zeta": 1, "alpha": {"yak": 2, "bee": [3, {"q": 1, "c": 2}]}}),
    ("keys of every kind", {"b": 1, "10": 2, "2": 3, "": 4, "a": 5}),
    ("lists of dicts, nested", [{"z": 1, "a": 2}, {"y": [{"x": None, "b": True}, {"m": [], "d": {}}]}]),
    ("unicode", {"é": "é", "emoji": "😀", "ctl": "a\tb\nc\u0000", "han": "中文"}),
    (
        "numbers",
        {"whole float": 1.0, "big int": 12345678901234567890123, "thousand": 1000.0, "tenth": 0.1, "neg zero": -0.0},
    ),
    ("a float", 1.0),
)
# json.dumps writes it in full; the server's own parser cannot hold it.
HUGE = ("an integer of 401 digits", {"n": 10**400, "after": 0})
BINARY = ("bytes among keys", {"zeta": b"\x01\x02\x03", "alpha": [{"yak": b"\xff\x00", "bee": 1}], "mid": {"q": "x"}})


def canon(value):
    """json.dumps with bytes written as their hex, keys in their order."""
    return json.dumps(value, default=lambda b: f"<binary {bytes(b).hex()}>", ensure_ascii=False)


class FidelityTest(RoomcastTestCase):
    def setUp(self):
        self.server = Roomcast(config=PUBSUB_CONFIG)
        self.addCleanup(self.server.kill)

    def client(self, transports, *events, **options):
        sio = self.track(socketio.Client(reconnection=False, **options))
        inbox = Inbox(sio, *events)
        sio.connect(self.server.url, transports=transports)
        return sio, inbox

    def subscriber(self, transports, **options):
        sio, inbox = self.client(transports, "chat", "news", **options)
        self.assertEqual(sio.call("subscribe", {"room": ROOM}, timeout=3), {"ok": True})
        return sio, inbox

    def assert_all_same(self, results, path):
        bad = [
            f"{what}:\n    sent     {canon(sent)}\n    received {canon(received)}"
            for what, sent, received in results
            if canon(sent) != canon(received)
        ]
        if bad:
            self.fail(f"{path}: {len(bad)} of {len(results)} payload(s) did not arrive as sent:\n\n" + "\n\n".join(bad))

    def test_a_client_publish_arrives_as_sent(self):
        publisher, _ = self.client(["websocket"])
        subscribers = {"websocket": self.subscriber(["websocket"]), "polling": self.subscriber(["polling"])}
        results = []
        for name, data in PAYLOADS + (BINARY,):
            reply = publisher.call("publish", {"room": ROOM, "event": "chat", "data": data}, timeout=3)
            self.assertEqual(reply, {"ok": True, "recipients": 2}, name)
            for transport, (_, inbox) in subscribers.items():
                (received,) = inbox.get("chat")
                results.append((f"{name} ({transport})", data, received))
        self.assert_all_same(results, "client publish")

    def test_an_integer_too_big_for_a_double_arrives_and_the_publisher_stays(self):
        # python-engineio's default JSON module (engineio/json.py) refuses,
        # on reading, an integer of more than 100 digits: a guard of the
        # client's own. A client that wants such numbers passes the standard
        # json module (python-socketio's `json` option, which sets it on the
        # packet classes, for every client of the process: put back after).
        for packet_class in (socketio.packet.Packet, engineio.packet.Packet):
            self.addCleanup(setattr, packet_class, "json", packet_class.json)
        publisher, _ = self.client(["websocket"])
        _, inbox = self.subscriber(["websocket"], json=json)
        name, data = HUGE
        try:
            reply = publisher.call("publish", {"room": ROOM, "event": "chat", "data": data}, timeout=3)
        except socketio.exceptions.SocketIOError:
            reply = "no ack"
        self.assertTrue(publisher.connected, f"the publisher was disconnected for publishing {name}")
        self.assertEqual(reply, {"ok": True, "recipients": 1}, name)
        (received,) = inbox.get("chat")
        self.assert_all_same([(name, data, received)], "huge integer")

    def test_an_http_api_publish_arrives_as_sent(self):
        _, inbox = self.subscriber(["websocket"])
        results = []
        for name, data in PAYLOADS:
            body = json.dumps({"room": ROOM, "event": "news", "data": data})
            resp = requests.post(
                f"{self.server.url}/api/v1/publish",
                data=body.encode(),
                headers={"authorization": f"Bearer {PUBSUB_API_KEY}", "content-type": "application/json"},
                timeout=5,
            )
            self.assertEqual(resp.status_code, 202, resp.text)
            (received,) = inbox.get("news")
            results.append((name, data, received))
        self.assert_all_same(results, "HTTP API publish")


if __name__ == "__main__":
    unittest.main()
