"""Polling for conditions that no event announces (a file, a device node, a process)."""

from __future__ import annotations

import time
from typing import Callable

POLL_S = 0.05


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until `condition()` holds; the seconds it took, or AssertionError naming `what`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - start
