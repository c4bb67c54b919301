"""python-socketio 5 against a real roomcast process: disconnections.

Covers:
- the server disconnects the namespace socket ("disconnect-me") on
  websocket-only and polling-only clients: the disconnect handler gets the
  reason sio.reason.SERVER_DISCONNECT ("server disconnect"), the client is
  no longer connected and does not reconnect (1 s window with
  reconnection_delay 0.1 s);
- with namespaces "/" and "/custom" on one connection, "disconnect-me" on
  /custom disconnects only /custom; "/" keeps working;
- sio.disconnect(): reason sio.reason.CLIENT_DISCONNECT, no reconnect;
- the server force-closes a websocket connection ("close-me"): roomcast
  closes the WebSocket (as the reference server does, without an Engine.IO
  close packet), which python-engineio reports as
  sio.reason.TRANSPORT_ERROR; the client reconnects with a new sid.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import socketio  # noqa: E402
from roomcast_proc import Inbox, RoomcastTestCase, wait_for  # noqa: E402

NO_RECONNECT_WINDOW_S = 1.0

# python-socketio >= 5.12 passes a reason to disconnect handlers
# (socketio.Client.reason); older 5.x versions call them with no argument.
HAS_REASONS = hasattr(socketio.Client, "reason")


def reason(name):
    """The disconnect handler's expected arguments for reason `name`."""
    return (getattr(socketio.Client.reason, name),) if HAS_REASONS else ()


class DisconnectTest(RoomcastTestCase):
    def client(self, reconnection=True):
        return self.track(
            socketio.Client(
                reconnection=reconnection,
                reconnection_delay=0.1,
                reconnection_delay_max=0.2,
                randomization_factor=0,
            )
        )

    @unittest.skipUnless(HAS_REASONS, "this python-socketio passes no disconnect reason")
    def test_reason_constants(self):
        # The values this suite asserts, as this python-socketio spells them.
        self.assertEqual(socketio.Client.reason.SERVER_DISCONNECT, "server disconnect")
        self.assertEqual(socketio.Client.reason.CLIENT_DISCONNECT, "client disconnect")
        self.assertEqual(socketio.Client.reason.TRANSPORT_ERROR, "transport error")

    def test_server_disconnect_no_reconnect(self):
        for transports in (["websocket"], ["polling"]):
            with self.subTest(transports=transports):
                sio = self.client()
                inbox = Inbox(sio, "connect", "disconnect")
                sio.connect(self.server.url, transports=transports)
                self.assertEqual(inbox.get("connect"), ())
                sio.emit("disconnect-me")
                self.assertEqual(inbox.get("disconnect"), reason("SERVER_DISCONNECT"))
                time.sleep(NO_RECONNECT_WINDOW_S)
                self.assertFalse(sio.connected)
                self.assertEqual(inbox.count("connect"), 0, "no reconnection")
                self.assertEqual(inbox.count("disconnect"), 0, "one disconnect")

    def test_server_disconnect_of_one_namespace(self):
        sio = self.client()
        inbox = Inbox(sio, "disconnect", ("disconnect", "/custom"), "message-back")
        sio.connect(self.server.url, transports=["websocket"], namespaces=["/", "/custom"])
        eio_sid = sio.eio.sid
        sio.emit("disconnect-me", namespace="/custom")
        self.assertEqual(inbox.get("disconnect", "/custom"), reason("SERVER_DISCONNECT"))
        self.assertTrue(sio.connected)
        self.assertEqual(list(sio.namespaces), ["/"])
        sio.emit("message", "root still works")
        self.assertEqual(inbox.get("message-back"), ("root still works",))
        self.assertEqual(sio.eio.sid, eio_sid, "same Engine.IO session")
        self.assertEqual(inbox.count("disconnect"), 0, "/ was not disconnected")

    def test_client_disconnect(self):
        sio = self.client()
        inbox = Inbox(sio, "connect", "disconnect")
        sio.connect(self.server.url, transports=["websocket"])
        self.assertEqual(inbox.get("connect"), ())
        sio.disconnect()
        self.assertEqual(inbox.get("disconnect"), reason("CLIENT_DISCONNECT"))
        time.sleep(NO_RECONNECT_WINDOW_S)
        self.assertFalse(sio.connected)
        self.assertEqual(inbox.count("connect"), 0, "no reconnection")

    def test_forced_close_reconnects(self):
        sio = self.client()
        inbox = Inbox(sio, "connect", "disconnect", "message-back")
        sio.connect(self.server.url, transports=["websocket"])
        self.assertEqual(inbox.get("connect"), ())
        first_sid = sio.get_sid("/")
        sio.emit("close-me")
        self.assertEqual(inbox.get("disconnect"), reason("TRANSPORT_ERROR"))
        self.assertEqual(inbox.get("connect", timeout=5), ())
        # python-socketio calls the connect handler before it sets .connected.
        wait_for(lambda: sio.connected, 3, "sio.connected after reconnecting")
        self.assertNotEqual(sio.get_sid("/"), first_sid)
        sio.emit("message", "after reconnect")
        self.assertEqual(inbox.get("message-back"), ("after reconnect",))


if __name__ == "__main__":
    unittest.main()
