"""Helpers for the python-socketio compatibility tests (tests/clients/py).

Starts and stops a real roomcast process with tests/clients/roomcast-test.toml
on a free port, and gives a unittest base class that starts one per test,
always kills it, and appends the server log to failures.

The binary comes from env ROOMCAST_BIN (tests/client_compat.rs passes
env!("CARGO_BIN_EXE_roomcast")); when the suite is run by hand it falls back
to target/release/roomcast.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CONFIG = os.path.abspath(os.path.join(HERE, "..", "roomcast-test.toml"))
# The pub/sub profile (tests/clients/js/{pubsub,auth,api,slow_consumer}.test.mjs,
# py/test_api_schema.py) and its values that tests depend on.
PUBSUB_CONFIG = os.path.abspath(os.path.join(HERE, "..", "roomcast-pubsub.toml"))
PUBSUB_API_KEY = "roomcast-test-api-key-0123456789"
PUBSUB_NAMESPACES = ("/", "/private", "/other")

# Timings of roomcast-test.toml.
PING_INTERVAL_S = 0.5
PING_TIMEOUT_S = 0.4
ACK_TIMEOUT_S = 0.5

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LISTENING = re.compile(r"roomcast listening on http://127\.0\.0\.1:(\d+)/socket\.io/")


def roomcast_bin():
    path = os.environ.get("ROOMCAST_BIN") or os.path.join(REPO_ROOT, "target", "release", "roomcast")
    if not os.path.exists(path):
        raise RuntimeError(
            f"roomcast binary not found at {path}: set ROOMCAST_BIN or run cargo build --release --bin roomcast"
        )
    return path


class Roomcast:
    """A roomcast process; `url` is http://127.0.0.1:PORT once started.

    `config` is the profile (roomcast-test.toml unless given); `env` is added
    to the environment.
    """

    def __init__(self, port=0, start_timeout=10.0, config=CONFIG, env=None):
        # The audit log of this process: a SQLite file and spill file of its own.
        self.audit_dir = tempfile.mkdtemp(prefix="roomcast-audit-")
        env = {
            **os.environ,
            "ROOMCAST__SERVER__PORT": str(port),
            "NO_COLOR": "1",
            "RUST_LOG": "info",
            "ROOMCAST__DATABASE__URL": "sqlite://" + os.path.join(self.audit_dir, "audit.db"),
            "ROOMCAST__AUDIT__SPILL_FILE": os.path.join(self.audit_dir, "spill.jsonl"),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [roomcast_bin(), "--config", config],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self.lines = []
        self._port = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = self._port.get(timeout=start_timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"roomcast did not log its port within {start_timeout} s:\n{self.log()}")
        if self.port is None:
            self.kill()
            raise RuntimeError(f"roomcast exited before listening:\n{self.log()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self):
        found = False
        for raw in self.proc.stdout:
            line = ANSI.sub("", raw.rstrip("\n"))
            self.lines.append(line)
            if not found:
                m = LISTENING.search(line)
                if m:
                    found = True
                    self._port.put(int(m.group(1)))
        if not found:
            self._port.put(None)

    def log(self):
        return "\n".join(self.lines)

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        """SIGKILLs the process (resuming it first if stopped) and reaps it."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self.proc.stdout.close()
        shutil.rmtree(self.audit_dir, ignore_errors=True)


def wait_for(predicate, timeout, what):
    """Polls `predicate` until it is true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RoomcastTestCase(unittest.TestCase):
    """Starts roomcast before each test and kills it after, pass or fail.

    Clients registered with `self.track(client)` are disconnected first. A
    failing test gets the server log printed with its result.
    """

    def setUp(self):
        self.server = Roomcast()
        self.addCleanup(self.server.kill)

    def track(self, client):
        self.addCleanup(self._disconnect, client)
        return client

    @staticmethod
    def _disconnect(client):
        try:
            client.reconnection = False
            client.disconnect()
        except Exception:  # noqa: BLE001 - cleanup must not hide the test's outcome
            pass

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        outcome = super().run(result)
        server = getattr(self, "server", None)
        if server is not None and len(result.failures) + len(result.errors) > before:
            # Add the server log to this test's failure report.
            for entries in (result.failures, result.errors):
                for i, (test, text) in enumerate(entries):
                    if test is self or getattr(test, "test_case", None) is self:
                        entries[i] = (test, f"{text}\n--- roomcast log (pid {server.pid}) ---\n{server.log()}\n")
        return outcome


class Inbox:
    """Collects the arguments of client events, per (event, namespace), so a
    test can wait for them with a timeout.

        inbox = Inbox(sio, "connect", "disconnect", ("message-back", "/custom"))
        args = inbox.get("disconnect")            # a tuple of the arguments
        args = inbox.get("message-back", "/custom")
    """

    def __init__(self, sio, *events):
        self._queues = {}
        self._lock = threading.Lock()
        for event in events:
            name, namespace = event if isinstance(event, tuple) else (event, "/")
            sio.on(name, self._handler(name, namespace), namespace=namespace)

    def _queue(self, name, namespace):
        with self._lock:
            return self._queues.setdefault((name, namespace), queue.Queue())

    def _handler(self, name, namespace):
        q = self._queue(name, namespace)

        def handler(*args):
            q.put(args)

        return handler

    def get(self, name, namespace="/", timeout=3.0):
        try:
            return self._queue(name, namespace).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'timed out after {timeout} s waiting for "{name}" on {namespace}') from None

    def count(self, name, namespace="/"):
        return self._queue(name, namespace).qsize()
