"""Telemetry building blocks: latency percentiles, rates and a system snapshot.

The daemon feeds per-stage latencies and events in as frames flow and reads a
summary every `telemetry.interval_s`. Percentiles (p50/p90/p99/max) over a
sliding time window, not averages, because a tail is what a user feels. All
windows are bounded in memory whatever the frame rate.
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections import deque
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

import psutil

MAX_SAMPLES = 50_000          # per window: ~10 s at 5 kHz; older samples are dropped
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*/temp"
Clock = Callable[[], float]


def percentile(sorted_values: List[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


def summarize(values: Iterable[float]) -> Optional[Dict[str, float]]:
    """{p50, p90, p99, max} rounded to 0.001, or None when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return {"p50": round(percentile(ordered, 50), 3), "p90": round(percentile(ordered, 90), 3),
            "p99": round(percentile(ordered, 99), 3), "max": round(ordered[-1], 3)}


class LatencyWindow:
    """Samples of one quantity over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0, clock: Clock = time.monotonic,
                 max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self._clock = clock
        self._samples: Deque[Tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, value: float, now: Optional[float] = None) -> None:
        self._samples.append((self._clock() if now is None else now, float(value)))

    def _evict(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()

    def values(self, now: Optional[float] = None) -> List[float]:
        self._evict(self._clock() if now is None else now)
        return [v for _, v in self._samples]

    def percentiles(self, now: Optional[float] = None) -> Optional[Dict[str, float]]:
        return summarize(self.values(now))

    def __len__(self) -> int:
        return len(self._samples)


class RateWindow:
    """Events per second over the last `window_s` seconds (fps of one stage)."""

    def __init__(self, window_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._events: Deque[float] = deque(maxlen=MAX_SAMPLES)

    def tick(self, now: Optional[float] = None) -> None:
        self._events.append(self._clock() if now is None else now)

    def rate(self, now: Optional[float] = None) -> float:
        now = self._clock() if now is None else now
        cutoff = now - self.window_s
        while self._events and self._events[0] < cutoff:
            self._events.popleft()
        span = min(self.window_s, now - self._started)
        return round(len(self._events) / span, 3) if span > 0 else 0.0


class StageLatencies:
    """One LatencyWindow per stage name ("inference", "end_to_end", ...)."""

    def __init__(self, window_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._windows: Dict[str, LatencyWindow] = {}

    def add(self, stage: str, value_ms: float, now: Optional[float] = None) -> None:
        window = self._windows.get(stage)
        if window is None:
            window = self._windows[stage] = LatencyWindow(self.window_s, self._clock)
        window.add(value_ms, now)

    def add_all(self, latencies_ms: Dict[str, float], now: Optional[float] = None) -> None:
        for stage, value in latencies_ms.items():
            self.add(stage, value, now)

    def snapshot(self, now: Optional[float] = None) -> Dict[str, Optional[Dict[str, float]]]:
        """{stage: {p50, p90, p99, max} or None}, as telemetry's `latency_ms`."""
        return {stage: w.percentiles(now) for stage, w in sorted(self._windows.items())}


# -------------------------------------------------------------------- system
class ProcessSampler:
    """CPU% and RSS of a set of pids; keeps psutil handles so CPU% has a baseline.

    psutil's cpu_percent() is relative to the previous call on the same
    handle; the first sample of a new pid reads 0.0.
    """

    def __init__(self) -> None:
        self._procs: Dict[int, psutil.Process] = {}

    def sample(self, pids: Iterable[int]) -> Dict[str, object]:
        wanted = set(pids)
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        rows = []
        for pid in sorted(wanted):
            row = self._sample_one(pid)
            if row is not None:
                rows.append(row)
        return {"cpu_percent": round(sum(r["cpu_percent"] for r in rows), 1),
                "rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
                "list": rows}

    def _sample_one(self, pid: int) -> Optional[Dict[str, object]]:
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                return {"pid": pid, "name": proc.name(),
                        "cpu_percent": round(proc.cpu_percent(None), 1),
                        "rss_mb": round(proc.memory_info().rss / 2**20, 1)}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None


def board_temperature(pattern: str = THERMAL_GLOB) -> Optional[float]:
    """Hottest thermal zone in degrees C, or None where sysfs has none (VMs, CI)."""
    readings = []
    for path in glob.glob(pattern):
        try:
            with open(path) as fh:
                readings.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return round(max(readings), 1) if readings else None


def load_average() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


# Shared by callers that pass no sampler, so CPU% still spans the interval
# between two calls (a fresh psutil handle would always read 0.0).
_DEFAULT_SAMPLER = ProcessSampler()


def system_snapshot(pids: Iterable[int],
                    sampler: Optional[ProcessSampler] = None) -> Dict[str, object]:
    """`processes`, `temperature_c` and `load_avg`: merge into the telemetry payload.

    CPU% covers the time since the previous call with the same sampler.
    """
    sampler = sampler or _DEFAULT_SAMPLER
    return {"processes": sampler.sample(pids), "temperature_c": board_temperature(),
            "load_avg": load_average()}
