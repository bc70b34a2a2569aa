"""Durable result delivery: outbox on disk -> QoS 1 publish -> delete on PUBACK.

`submit()` stores a result (allocating its persistent `seq`) and returns at once;
a sender thread publishes the oldest unacknowledged results in order while the
link is connected, at most `max_inflight` at a time and, for a backlog, at most
`drain_rate` per second, and deletes each one when the broker acknowledges it.
Results in flight when the daemon dies are sent again after the restart:
at-least-once on the wire, deduplicable by `seq`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional

from edged.mqtt.link import MqttLink
from edged.mqtt.outbox import Outbox, OutboxError

log = logging.getLogger(__name__)
TICK_S = 0.05  # how often acknowledgements are collected while messages are in flight


class DurableResults:
    def __init__(self, link: MqttLink, outbox: Outbox, qos: int = 1, max_inflight: int = 20,
                 drain_rate: float = 0.0):
        self.link, self.outbox, self.qos = link, outbox, max(1, qos)
        self.max_inflight, self.drain_rate = max_inflight, drain_rate
        self.store_failures = 0
        self._inflight: Dict[int, Any] = {}  # seq -> paho MQTTMessageInfo
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, payload: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Store a result and wake the sender; returns it with its `seq`, or None if not stored."""
        try:
            stored = self.outbox.append(self.link.topics.result, payload)
        except OutboxError as exc:
            self.store_failures += 1
            log.error("result not stored: %s", exc)
            return None
        self._wake.set()
        return stored if stored.get("seq") is not None else None

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for every stored result to be acknowledged; returns what is left."""
        deadline = time.monotonic() + timeout
        while self.outbox.stats()["queued"] and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(TICK_S)
        return self.outbox.stats()["queued"]

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)

    def stats(self) -> Dict[str, int]:
        return dict(self.outbox.stats(), inflight=len(self._inflight), store_failures=self.store_failures)

    # ------------------------------------------------------------------ the sender
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S if self._inflight else 1.0)
            self._wake.clear()
            try:
                self._collect_acks()
                if self.link.connected:
                    self._send_next()
            except OutboxError as exc:
                log.error("outbox: %s", exc)

    def _collect_acks(self) -> None:
        for seq, info in list(self._inflight.items()):
            if info.is_published():
                self.outbox.ack(seq)
                del self._inflight[seq]

    def _send_next(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for item in self.outbox.pending(limit=self.max_inflight + len(self._inflight)):
            if room <= 0 or self._stop.is_set():
                break
            if item.seq in self._inflight:
                continue  # paho re-sends its own unacknowledged messages after a reconnect
            info = self.link.publish_bytes(item.topic, item.payload, self.qos)
            if info is None:
                break
            self._inflight[item.seq] = info
            room -= 1
            if self.drain_rate > 0:
                self._stop.wait(1.0 / self.drain_rate)
