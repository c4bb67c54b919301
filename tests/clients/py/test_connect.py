"""python-socketio 5 against a real roomcast process: connecting.

Covers:
- websocket-only (transports=["websocket"]): connect, the "auth" event
  echoing the CONNECT payload ({} without one, the dict given as auth=),
  a "message" round-trip;
- polling-only (transports=["polling"]): the same; the transport stays
  "polling";
- polling then upgrade (default transports): the handshake happens over
  polling (it offers upgrades ["websocket"]) and the client ends on
  "websocket"; events flow after the upgrade;
- two namespaces over one connection (namespaces=["/", "/custom"]): one
  Engine.IO session, distinct namespace sids, events kept apart;
- a CONNECT refused by auth {"reject": ...}: connect() raises
  socketio.exceptions.ConnectionError, connect_error gets
  {"message": "some reason", "data": {"code": "rejected"}};
- a CONNECT to an unknown namespace: ConnectionError, connect_error gets
  {"message": "Invalid namespace"}.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import socketio  # noqa: E402
from roomcast_proc import Inbox, RoomcastTestCase  # noqa: E402

PAYLOAD = ("hello", 42, {"nested": {"list": [1, "two", None, True]}})


class ConnectTest(RoomcastTestCase):
    def client(self, **kwargs):
        return self.track(socketio.Client(reconnection=False, **kwargs))

    def round_trip(self, sio, inbox):
        sio.emit("message", PAYLOAD)
        self.assertEqual(inbox.get("message-back"), PAYLOAD)

    def test_websocket_only(self):
        sio = self.client()
        inbox = Inbox(sio, "auth", "message-back")
        sio.connect(self.server.url, transports=["websocket"])
        self.assertTrue(sio.connected)
        self.assertEqual(sio.transport(), "websocket")
        self.assertEqual(inbox.get("auth"), ({},))
        self.assertIsInstance(sio.get_sid("/"), str)
        self.round_trip(sio, inbox)

    def test_polling_only(self):
        sio = self.client()
        inbox = Inbox(sio, "auth", "message-back")
        sio.connect(self.server.url, transports=["polling"])
        self.assertEqual(sio.transport(), "polling")
        self.assertEqual(inbox.get("auth"), ({},))
        for _ in range(3):
            self.round_trip(sio, inbox)
        self.assertEqual(sio.transport(), "polling")

    def test_polling_then_upgrade(self):
        sio = self.client()
        inbox = Inbox(sio, "auth", "message-back")
        sio.connect(self.server.url)
        # The polling handshake offered the upgrade, and the client took it.
        self.assertEqual(sio.eio.upgrades, ["websocket"])
        self.assertEqual(sio.transport(), "websocket")
        self.assertEqual(inbox.get("auth"), ({},))
        self.round_trip(sio, inbox)
        self.assertEqual(sio.call("message-with-ack", "after upgrade", timeout=3), "after upgrade")

    def test_auth_payload_is_echoed(self):
        sio = self.client()
        inbox = Inbox(sio, "auth")
        auth = {"user": "abc", "n": 1, "nested": {"ok": True}}  # no "token": that one is a JWT
        sio.connect(self.server.url, transports=["websocket"], auth=auth)
        self.assertEqual(inbox.get("auth"), (auth,))

    def test_two_namespaces_one_connection(self):
        for transports in (["websocket"], ["polling"]):
            with self.subTest(transports=transports):
                sio = self.client()
                inbox = Inbox(sio, "auth", ("auth", "/custom"), "message-back", ("message-back", "/custom"))
                sio.connect(self.server.url, transports=transports, namespaces=["/", "/custom"])
                self.assertEqual(inbox.get("auth"), ({},))
                self.assertEqual(inbox.get("auth", "/custom"), ({},))
                self.assertEqual(sorted(sio.namespaces), ["/", "/custom"])
                root_sid, custom_sid = sio.get_sid("/"), sio.get_sid("/custom")
                self.assertIsInstance(root_sid, str)
                self.assertIsInstance(custom_sid, str)
                self.assertNotEqual(root_sid, custom_sid)
                self.assertIsInstance(sio.eio.sid, str, "one Engine.IO session")

                sio.emit("message", "to custom", namespace="/custom")
                self.assertEqual(inbox.get("message-back", "/custom"), ("to custom",))
                sio.emit("message", "to root")
                self.assertEqual(inbox.get("message-back"), ("to root",))
                self.assertEqual(inbox.count("message-back"), 0, "no extra event on /")
                self.assertEqual(inbox.count("message-back", "/custom"), 0, "no extra event on /custom")
                self.assertEqual(sio.call("message-with-ack", "custom ack", namespace="/custom", timeout=3), "custom ack")
                sio.disconnect()

    def test_rejected_connect(self):
        for transports in (["websocket"], ["polling"]):
            with self.subTest(transports=transports):
                sio = self.client()
                inbox = Inbox(sio, "connect", "connect_error")
                with self.assertRaises(socketio.exceptions.ConnectionError) as caught:
                    sio.connect(self.server.url, transports=transports, auth={"reject": "some reason"})
                self.assertIn("One or more namespaces failed to connect", str(caught.exception))
                self.assertEqual(inbox.get("connect_error"), ({"message": "some reason", "data": {"code": "rejected"}},))
                self.assertEqual(inbox.count("connect"), 0)
                self.assertFalse(sio.connected)

    def test_unknown_namespace(self):
        sio = self.client()
        inbox = Inbox(sio, ("connect_error", "/nope"))
        with self.assertRaises(socketio.exceptions.ConnectionError):
            sio.connect(self.server.url, transports=["websocket"], namespaces=["/nope"])
        self.assertEqual(inbox.get("connect_error", "/nope"), ({"message": "Invalid namespace"},))
        self.assertFalse(sio.connected)


if __name__ == "__main__":
    unittest.main()
