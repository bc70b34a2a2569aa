"""Durable result delivery: memory -> outbox on disk -> QoS 1 publish -> delete on PUBACK.

`submit()` only appends to a short in-memory queue and returns: the engine's
collector thread never waits for the disk. Two threads do the rest:

    writer    opens the outbox (retrying if it cannot: a full disk at boot must not
              stop the camera) and commits everything queued in one transaction
              (group commit: one fsync for a batch), which also gives each result
              its `seq`. When the disk is full or failing the results stay in
              memory (bounded by `max_held`, with the outbox's drop policy) and the
              write is retried every `RETRY_S`; `problem` says so, for status and
              telemetry.
    sender    publishes stored results with QoS 1 in `seq` order while the link is
              connected, at most `max_inflight` at a time, and deletes them when the
              broker acknowledges them (also in batches).

With `drain_rate` > 0 a backlog (results stored before the link last connected)
goes out at most `drain_rate` per second while new results go out at once, so a
long outage does not flood the broker and live results do not wait behind it;
consumers then see two ascending runs of `seq`. With `drain_rate` = 0 delivery is
strictly in `seq` order. Results in flight when the daemon dies are sent again after
the restart: at-least-once on the wire, deduplicable by `seq`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from edged.mqtt.link import MqttLink
from edged.mqtt.outbox import Outbox, OutboxError, Pending

log = logging.getLogger(__name__)
TICK_S = 0.05  # how often acknowledgements are collected while messages are in flight
RETRY_S = 1.0  # how often a failed disk write is retried
WRITE_BATCH = 500
MAX_HELD = 10_000  # results kept in memory while the outbox cannot be written (~5 min at 30 fps)


class DurableResults:
    def __init__(self, link: MqttLink, open_outbox: Callable[[], Outbox], when_full: str = "drop_oldest",
                 qos: int = 1, max_inflight: int = 20, drain_rate: float = 0.0, max_held: int = MAX_HELD):
        self.link, self.qos = link, max(1, qos)
        self.outbox: Optional[Outbox] = None  # None until it could be opened
        self.when_full = when_full  # for results held in memory; the outbox applies its own
        self._open_outbox = open_outbox
        self.max_inflight, self.drain_rate, self.max_held = max_inflight, drain_rate, max_held
        self.write_failures = 0
        self.rejected = 0  # acknowledged with an MQTT 5 failure code (e.g. not authorized)
        self.problem: Optional[str] = None  # why results cannot be stored, while that lasts
        self.refused_by_broker: Optional[str] = None  # why the broker refuses them, while it does
        self._held: Deque[Tuple[str, Dict[str, Any]]] = deque()
        self._held_dropped = 0  # dropped while the outbox was not writable; saved with the next write
        self._held_lock = threading.Condition()  # notified when a write finishes or fails
        self._writing = 0  # results taken from _held by the writer and not yet committed
        self._inflight: Dict[int, Any] = {}  # seq -> paho MQTTMessageInfo
        self._live_from = 0  # with a drain rate: seqs below this are the paced backlog
        self._tokens = 0.0
        self._token_time = time.monotonic()
        self._was_connected = False
        self._queued = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="delivery", daemon=True)

    def start(self) -> None:
        self._try_open()
        self._writer.start()
        self._sender.start()

    def submit(self, payload: Dict[str, Any]) -> bool:
        """Queue a result for the outbox; False if the bound turned it away (counted)."""
        with self._held_lock:
            self._held.append((self.link.topics.result, payload))
            kept = self._enforce_held_bound()
        self._queued.set()
        return kept

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted is on disk; False if it is not within `timeout`."""
        self._queued.set()
        with self._held_lock:
            return self._held_lock.wait_for(lambda: not self._held and not self._writing, timeout)

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` until every result is stored and acknowledged; returns what is left."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        while self._left() and time.monotonic() < deadline:  # acknowledgements come per tick
            self._wake.set()
            time.sleep(TICK_S)
        return self._left()

    def stop(self) -> None:
        """Stop both threads after a last write of what is held (if the disk takes it)."""
        self._stop.set()
        self._queued.set()
        self._wake.set()
        self._writer.join(10.0)
        self._sender.join(5.0)
        if self._held:
            log.error("%d result(s) could not be stored before exit and are lost: %s",
                      len(self._held), self.problem)
        if self.outbox is not None:
            self.outbox.close()

    def stats(self) -> Dict[str, Any]:
        """Telemetry `outbox`: on disk, in memory, in flight, dropped, and whether writes work."""
        disk = self.outbox.stats() if self.outbox else {"queued": 0, "dropped": 0, "next_seq": 0}
        return dict(disk, dropped=disk["dropped"] + self._held_dropped, held=len(self._held) + self._writing,
                    inflight=len(self._inflight), write_failures=self.write_failures, rejected=self.rejected,
                    writable=self.problem is None)

    def _left(self) -> int:
        return len(self._held) + (self.outbox.stats()["queued"] if self.outbox else 0)

    # ------------------------------------------------------------------ the writer
    def _write_loop(self) -> None:
        while True:
            self._queued.wait(RETRY_S)
            self._queued.clear()
            if self._held or self.outbox is None:
                self._write_held()
            if self._stop.is_set() and (not self._held or self.problem):
                return
            if self.problem:
                self._stop.wait(RETRY_S)

    def _try_open(self) -> bool:
        if self.outbox is None:
            try:
                self.outbox = self._open_outbox()
            except OutboxError as exc:
                self._write_failed(exc)
        return self.outbox is not None

    def _write_failed(self, exc: OutboxError) -> None:
        self.write_failures += 1
        if self.problem is None:
            log.error("%s; results are held in memory (at most %d) until it can be written",
                      exc, self.max_held)
        self.problem = f"outbox not writable ({_cause(exc)}); results held in memory"

    def _write_held(self) -> None:
        if not self._try_open():
            return
        assert self.outbox is not None
        while self._held:
            with self._held_lock:
                batch = [self._held.popleft() for _ in range(min(WRITE_BATCH, len(self._held)))]
                dropped, self._held_dropped = self._held_dropped, 0
                self._writing = len(batch)
            try:
                self.outbox.append_many(batch, dropped_elsewhere=dropped)
            except OutboxError as exc:
                with self._held_lock:
                    self._held.extendleft(reversed(batch))
                    self._held_dropped += dropped
                    self._enforce_held_bound()
                    self._writing = 0
                    self._held_lock.notify_all()
                self._write_failed(exc)
                return
            if self.problem is not None:
                log.info("outbox writable again")
                self.problem = None
            with self._held_lock:
                self._writing = 0
                self._held_lock.notify_all()
            self._wake.set()

    def _enforce_held_bound(self) -> bool:
        """Apply the drop policy to the memory queue (caller holds the lock); False if the newest went."""
        kept = True
        while len(self._held) > self.max_held:
            if self.when_full == "drop_newest":
                self._held.pop()
                kept = False
            else:
                self._held.popleft()
            self._held_dropped += 1
        return kept

    # ------------------------------------------------------------------ the sender
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S if self._inflight or self.drain_rate else 1.0)
            self._wake.clear()
            if self.outbox is None:
                continue  # the writer is still trying to open it
            try:
                self._collect_acks()
                connected = self.link.connected
                if connected and not self._was_connected:
                    self._live_from = self.outbox.stats()["next_seq"]  # older ones are backlog
                self._was_connected = connected
                if connected:
                    self._send()
            except OutboxError as exc:
                log.error("outbox: %s", exc)  # acknowledgements are retried on the next tick

    def _collect_acks(self) -> None:
        acked = [seq for seq, info in self._inflight.items() if info.is_published()]
        if not acked:
            return
        refusals = [(seq, self.link.take_rejection(self._inflight[seq].mid)) for seq in acked]
        self.outbox.ack_many(acked)
        for seq, refusal in refusals:
            del self._inflight[seq]
            self._note_refusal(seq, refusal)

    def _note_refusal(self, seq: int, refusal: Optional[str]) -> None:
        """A PUBACK with an MQTT 5 failure code: the broker will not take it, so it is not kept
        (it would block every result behind it), but it is counted and the status says so."""
        if refusal is None:
            if self.refused_by_broker is not None:
                log.info("the broker accepts results again")
            self.refused_by_broker = None
            return
        self.rejected += 1
        if self.refused_by_broker is None:
            log.error("the broker refused result seq %d: %s (counted in telemetry outbox.rejected)",
                      seq, refusal)
        self.refused_by_broker = f"broker refuses results: {refusal}"

    def _send(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        window = self.max_inflight + len(self._inflight)  # enough rows to skip those in flight
        if self.drain_rate <= 0:
            self._publish(self.outbox.pending(window), room)
            return
        room -= self._publish(self.outbox.pending(window, from_seq=self._live_from), room)
        allowed = min(room, int(self._refill_tokens()))
        if allowed > 0:
            self._tokens -= self._publish(self.outbox.pending(window, below_seq=self._live_from), allowed)

    def _refill_tokens(self) -> float:
        now = time.monotonic()
        self._tokens = min(max(1.0, self.drain_rate), self._tokens + (now - self._token_time) * self.drain_rate)
        self._token_time = now
        return self._tokens

    def _publish(self, candidates: List[Pending], budget: int) -> int:
        """Publish up to `budget` of `candidates` not already in flight; returns how many."""
        sent = 0
        for item in candidates:
            if sent >= budget or self._stop.is_set():
                break
            if item.seq in self._inflight:
                continue  # paho re-sends its own unacknowledged messages after a reconnect
            info = self.link.publish_bytes(item.topic, item.payload, self.qos)
            if info is None:
                break
            self._inflight[item.seq] = info
            sent += 1
        return sent


def _cause(exc: BaseException) -> str:
    return str(exc.__cause__ or exc)
