"""A captured frame and the one-slot mailbox between capture and inference.

The mailbox is what gives the pipeline latest-frame semantics: a live source never
waits for inference; a newer frame replaces an unconsumed one and the replaced
frame is counted as dropped. Sources that are not live (a file read as fast as
possible, a synthetic camera at rate=max) are read on demand instead: the producer
waits until a consumer asks (`wait_wanted`), so nothing is lost, no CPU is spent on
frames nobody takes, and a frame is as fresh when taken as a live camera's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Frame:
    """One BGR uint8 image (HxWx3) with its capture timing.

    `captured_at` is Unix time for payloads; `t_capture` is `time.monotonic()` at
    arrival (before decoding, for MJPG), used for latencies because it is
    comparable across processes on Linux.
    """

    seq: int
    captured_at: float
    t_capture: float
    image: np.ndarray
    decode_ms: float = 0.0
    meta: dict = field(default_factory=dict)


class MailboxClosed(Exception):
    """The mailbox was closed while a producer was waiting on it."""


class Mailbox:
    """One slot. `put` replaces (live) or waits (lossless); `get` takes and empties."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None
        self._closed = False
        self._wanted = 0
        self.dropped = 0
        self.delivered = 0

    def put(self, frame: Frame, block: bool = False) -> None:
        """Offer a frame. With `block` wait for the slot to empty instead of dropping."""
        with self._cond:
            if block:
                while self._frame is not None and not self._closed:
                    self._cond.wait()
            if self._closed:
                raise MailboxClosed()
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The newest frame, or None on timeout or when closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            try:
                while self._frame is None and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            finally:
                self._wanted -= 1
            frame, self._frame = self._frame, None
            if frame is not None:
                self.delivered += 1
            self._cond.notify_all()
            return frame

    def wait_wanted(self) -> None:
        """Block until a consumer is waiting in `get` and the slot is empty (on-demand
        producers); raises MailboxClosed when closed."""
        with self._cond:
            while not self._closed and (self._wanted == 0 or self._frame is not None):
                self._cond.wait()
            if self._closed:
                raise MailboxClosed()

    def close(self) -> None:
        """Wake everyone; later `put`s raise, `get` drains what is left then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
