"""Test helpers: a real mosquitto on a free port and a real paho subscriber.

Tests talk to a real broker (no mocks) so they exercise the same wire protocol
as a deployed camera. Everything here synchronises on sockets and condition
variables, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> Optional[str]:
    """Path of the mosquitto binary; /usr/sbin is often not on a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the broker start retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1:<port>, restartable on the same port."""

    def __init__(self, executable: str, workdir: Optional[Path] = None,
                 port: Optional[int] = None, host: str = "127.0.0.1",
                 extra_config: str = "", allow_anonymous: bool = True,
                 persistence: bool = False) -> None:
        self.executable = executable
        self.persistence = persistence  # sessions and queued messages survive a restart
        self.host = host
        self.port = port or free_port(host)
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edged-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}\n"
            + (f"persistence true\npersistence_location {self.workdir}/\n" if self.persistence
               else "persistence false\n")
            + "log_dest stderr\n"
            # As root mosquitto would switch to user "mosquitto" and lose access
            # to the test's temp files (password file, certificates).
            + ("user root\n" if os.geteuid() == 0 else "")
            + "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            + self.extra_config
        )
        return conf

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        """Start (or restart) on the same port; return once the port accepts."""
        if self.running:
            return self
        conf = self._write_config()
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen([self.executable, "-c", str(conf)],
                                      stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_accepts(self.host, self.port):
                return self
            try:
                # Waiting on the process doubles as the poll interval and
                # notices an early exit (port taken, bad config).
                code = self._proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"mosquitto exited with {code} on port {self.port}:\n"
                               f"{self.log_text()}")
        self.stop()
        raise RuntimeError(f"mosquitto did not accept on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (kill if it lingers); the port is free afterwards."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.url}, running={self.running})"


def start_broker(executable: str, workdir: Optional[Path] = None,
                 attempts: int = 5) -> MosquittoBroker:
    """Start a broker on a fresh free port, retrying if another process raced us."""
    return start_broker_with(executable, workdir, "", attempts=attempts)


def start_broker_with(executable: str, workdir: Optional[Path], extra_config: str,
                      allow_anonymous: bool = True, attempts: int = 5,
                      persistence: bool = False) -> MosquittoBroker:
    """Like start_broker, with extra mosquitto.conf lines (auth, TLS listeners)."""
    last: Optional[Exception] = None
    for _ in range(attempts):
        broker = MosquittoBroker(executable, workdir=workdir, extra_config=extra_config,
                                 allow_anonymous=allow_anonymous, persistence=persistence)
        try:
            return broker.start()
        except RuntimeError as exc:
            last = exc
            broker.stop()
    raise RuntimeError(f"could not start mosquitto: {last}")


@dataclass
class Message:
    topic: str
    payload: Any          # decoded JSON, or the text/bytes if not JSON
    retain: bool
    qos: int
    raw: bytes = field(repr=False, default=b"")


def decode_payload(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw


Predicate = Callable[[Message], bool]


class MqttCollector:
    """A paho subscriber that records messages and lets tests wait for them.

    It resubscribes after a reconnect, so it survives broker restarts. With
    `persistent_session` (MQTT 5, a fixed client id, session expiry) a broker with
    persistence keeps its subscription and queues QoS 1 messages for it while it is
    away, so a broker restart loses nothing in the collector's view either.
    """

    def __init__(self, host: str, port: int, topics: List[str], qos: int = 1,
                 protocol: int = 5, subscribe_timeout: float = 10.0,
                 persistent_session: bool = False) -> None:
        self.host, self.port, self.topics, self.qos = host, port, list(topics), qos
        self._cond = threading.Condition()
        self._messages: List[Message] = []
        self._subscribed = False
        self.subscriptions = 0  # completed (re)subscriptions, one per connection
        self._mid_pending: set = set()
        proto = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-collector-{uuid.uuid4().hex[:8]}",
                                  protocol=proto)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        if persistent_session:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 600
            self.client.connect(host, port, keepalive=30, clean_start=False, properties=properties)
        else:
            self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self._wait_subscribed(subscribe_timeout)

    # paho callbacks (network thread) -------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            return
        with self._cond:
            self._subscribed = False
            self._mid_pending = set()
            for topic in self.topics:
                _, mid = client.subscribe(topic, qos=self.qos)
                self._mid_pending.add(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None) -> None:
        with self._cond:
            self._mid_pending.discard(mid)
            if not self._mid_pending and not self._subscribed:
                self._subscribed = True
                self.subscriptions += 1
                self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        record = Message(msg.topic, decode_payload(msg.payload), bool(msg.retain),
                         msg.qos, bytes(msg.payload))
        with self._cond:
            self._messages.append(record)
            self._cond.notify_all()

    # test API ------------------------------------------------------------
    def _wait_subscribed(self, timeout: float, times: int = 1) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._subscribed and self.subscriptions >= times, timeout)
            if not ok:
                raise AssertionError(
                    f"collector did not subscribe to {self.topics} on "
                    f"{self.host}:{self.port} within {timeout}s")

    def wait_subscribed(self, times: int, timeout: float = 10.0) -> None:
        """Wait until the collector has (re)subscribed `times` times in total.

        Read `collector.subscriptions` before restarting a broker, then wait
        for that number plus one.
        """
        self._wait_subscribed(timeout, times=times)

    @property
    def messages(self) -> List[Message]:
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, predicate: Optional[Predicate] = None, timeout: float = 10.0,
                 count: int = 1) -> List[Message]:
        """Wait until `count` messages match; return all matches so far.

        Raises AssertionError listing what did arrive, so a failing test says why.
        """
        pred = predicate or (lambda m: True)

        def matches() -> List[Message]:
            return [m for m in self._messages if pred(m)]

        with self._cond:
            if self._cond.wait_for(lambda: len(matches()) >= count, timeout):
                return matches()
            got = [(m.topic, m.payload, m.retain) for m in self._messages]
        shown = got[-20:]
        raise AssertionError(
            f"waited {timeout}s for {count} matching message(s) on {self.topics}; "
            f"got {len(got)} message(s), last {len(shown)}: {shown!r}")

    def wait_until(self, condition: Callable[[List[Message]], bool], timeout: float,
                   what: str = "condition") -> List[Message]:
        """Wait until `condition(all messages so far)` holds; return the messages."""
        with self._cond:
            if self._cond.wait_for(lambda: condition(self._messages), timeout):
                return list(self._messages)
            count = len(self._messages)
        raise AssertionError(f"waited {timeout}s for {what} on {self.topics}; got {count} message(s)")

    def wait_for_topic(self, topic: str, timeout: float = 10.0,
                       count: int = 1) -> List[Message]:
        return self.wait_for(lambda m: m.topic == topic, timeout, count)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
