"""Counters, rates and per-stage latencies of the pipeline, for telemetry and bench.

Telemetry's sliding windows are comms' `edged.service.telemetry` helpers; this adds
the totals and, when asked (`edged bench`), a bounded whole-run reservoir per stage.
The daemon itself does not keep one: 100,000 samples x 8 stages would be ~25 MB.
Latencies use the result's stage names; the telemetry name of "total" is
"end_to_end" (docs/mqtt.md).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Dict, List

from edged.service.telemetry import RateWindow, StageLatencies

RUN_MAX = 100000
TELEMETRY_NAMES = {"total": "end_to_end"}
RATES = ("capture", "inference", "publish")


class PipelineStats:
    """Thread-safe: written by the engine thread, read by the main loop and bench."""

    def __init__(self, window_s: float = 10.0, keep_run_samples: bool = False) -> None:
        self._lock = threading.Lock()
        self._keep_run = keep_run_samples
        self._window = StageLatencies(window_s)
        self._rates = {name: RateWindow(window_s) for name in RATES}
        self._run: Dict[str, Deque[float]] = {}
        self.counts: Dict[str, int] = {"inferred": 0, "published": 0, "failed": 0, "skipped": 0}

    def add(self, latencies: Dict[str, float]) -> None:
        with self._lock:
            for stage, ms in latencies.items():
                self._window.add(TELEMETRY_NAMES.get(stage, stage), ms)
                if self._keep_run:
                    self._run.setdefault(stage, deque(maxlen=RUN_MAX)).append(ms)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
            rate = {"inferred": "inference", "published": "publish", "captured": "capture"}.get(name)
            if rate:
                self._rates[rate].tick()

    def latency_snapshot(self) -> Dict[str, object]:
        with self._lock:
            snap = self._window.snapshot()
        snap.setdefault("end_to_end", None)
        return snap

    def rates(self) -> Dict[str, float]:
        with self._lock:
            return {name: window.rate() for name, window in self._rates.items()}

    def run_samples(self, stage: str) -> List[float]:
        with self._lock:
            return list(self._run.get(stage, ()))
