"""The capture thread: reads a source into the one-slot mailbox and keeps it alive.

A source that fails to open or to read is closed and reopened with exponential
backoff. `state()` says whether the camera is online; it also reports a stall (a read
that has returned no frame for `stall_timeout_s`) while the read is still blocked, so
the daemon can say "camera offline" without waiting for the driver to give up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Tuple

from edged.capture.frame import Frame, Mailbox, MailboxClosed
from edged.capture.sources import CorruptFrame, EndOfStream, Source, SourceError

log = logging.getLogger(__name__)
MAX_CORRUPT_IN_ROW = 25  # this many undecodable frames in a row: report the camera as failing


class CaptureThread:
    """Owns one source; frames go to `mailbox` (dropping if the source is live)."""

    def __init__(self, source: Source, mailbox: Mailbox, stall_timeout_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.source = source
        self.mailbox = mailbox
        self.stall_timeout_s = stall_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.captured = 0
        self.corrupt = 0  # frames that could not be decoded and were skipped
        self.reopens = 0
        self._corrupt_in_row = 0
        self.ended = threading.Event()  # a non-looping file ran out, or stop() was called
        self.last_decode_ms = 0.0
        self._stop = threading.Event()
        self._error: Optional[str] = None
        self._reading_since: Optional[float] = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, close the mailbox (consumers drain it) and the source."""
        self._stop.set()
        self.mailbox.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def state(self) -> Tuple[bool, Optional[str]]:
        """(online, reason): offline after a failure or a read stalled past the timeout."""
        if self._error is not None:
            return False, self._error
        since = self._reading_since
        if since is not None and time.monotonic() - since > self.stall_timeout_s:
            # a fixed text: the status is re-published whenever its reason changes
            return False, f"no frame for more than {self.stall_timeout_s:g} s from {self.source.uri}"
        return True, None

    def wait_for_state(self, online: bool, timeout: float) -> bool:
        """Block until the source is (not) delivering frames; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.state()[0] == online, timeout)

    def _set_error(self, error: Optional[str]) -> None:
        with self._changed:
            self._error = error
            self._changed.notify_all()

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        opened = False
        while not self._stop.is_set():
            try:
                if not opened:
                    self.source.open()
                    opened = True
                self._read_one()
                backoff = self.backoff_initial_s
            except EndOfStream:
                log.info("source %s ended", self.source.uri)
                break
            except MailboxClosed:
                break
            except CorruptFrame as exc:
                self._skip_corrupt(str(exc), backoff)
            except (SourceError, OSError) as exc:
                opened = self._failed(str(exc), backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
        self._reading_since = None
        self.source.close()
        self.mailbox.close()
        self.ended.set()

    def _read_one(self) -> None:
        if not self.source.live:
            self.mailbox.wait_wanted()
        self._reading_since = time.monotonic()
        raw = self.source.read(self._stop)
        self._reading_since = None
        self._corrupt_in_row = 0
        if self._error is not None:
            log.info("source %s is delivering frames again", self.source.uri)
            self._set_error(None)
        frame = Frame(seq=self.captured, captured_at=time.time() - (time.monotonic() - raw.t_capture),
                      t_capture=raw.t_capture, image=raw.image, decode_ms=raw.decode_ms,
                      meta={"pos": raw.pos})
        self.captured += 1
        self.last_decode_ms = raw.decode_ms
        self.mailbox.put(frame, block=not self.source.live)

    def _skip_corrupt(self, reason: str, backoff: float) -> None:
        """Count and skip an undecodable frame; a long run of them is a failed source."""
        self._reading_since = None
        self.corrupt += 1
        self._corrupt_in_row += 1
        if self.corrupt <= 10 or self.corrupt % 1000 == 0:
            log.warning("skipped corrupt frame (%d so far): %s", self.corrupt, reason)
        if self._corrupt_in_row >= MAX_CORRUPT_IN_ROW:
            self._set_error(f"{self._corrupt_in_row} corrupt frames in a row: {reason}")
            self._stop.wait(backoff)  # keep reading (no reopen): a good frame clears the error

    def _failed(self, reason: str, backoff: float) -> bool:
        """Record the failure, close the source and wait `backoff` before reopening."""
        self._reading_since = None
        if self._error != reason:
            log.warning("source %s failed: %s (retrying in %.1f s)", self.source.uri, reason, backoff)
        self._set_error(reason)
        self.source.close()
        self.reopens += 1
        self._stop.wait(backoff)
        return False
