"""Per-stage latency samples and counters of the pipeline, read by telemetry and bench.

Each stage keeps the samples of the current telemetry window (bounded) and of the
whole run (bounded reservoir for `edged bench`). Percentiles are computed only when
asked for, never on the frame path.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Dict, Iterable, List

import numpy as np

STAGES = ("decode", "capture_to_preprocess", "preprocess", "queue_wait", "inference",
          "postprocess", "total")
WINDOW_MAX = 10000
RUN_MAX = 100000


def percentiles(samples: Iterable[float]) -> Dict[str, float]:
    """{p50, p90, p99, max} rounded to 0.01; zeros for no samples."""
    values = np.fromiter(samples, dtype=np.float64)
    if values.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 2), "p90": round(float(p90), 2),
            "p99": round(float(p99), 2), "max": round(float(values.max()), 2)}


class PipelineStats:
    """Thread-safe latency samples (ms) per stage plus event counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: Dict[str, List[float]] = {s: [] for s in STAGES}
        self._run: Dict[str, Deque[float]] = {s: deque(maxlen=RUN_MAX) for s in STAGES}
        self.counts: Dict[str, int] = {"inferred": 0, "published": 0, "failed": 0, "skipped": 0}

    def add(self, latencies: Dict[str, float]) -> None:
        with self._lock:
            for stage, ms in latencies.items():
                window = self._window[stage]
                if len(window) < WINDOW_MAX:
                    window.append(ms)
                self._run[stage].append(ms)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def take_window(self) -> Dict[str, Dict[str, float]]:
        """Percentiles per stage since the last call, and start a new window."""
        with self._lock:
            window, self._window = self._window, {s: [] for s in STAGES}
        return {stage: percentiles(samples) for stage, samples in window.items()}

    def run_samples(self, stage: str) -> List[float]:
        with self._lock:
            return list(self._run[stage])
