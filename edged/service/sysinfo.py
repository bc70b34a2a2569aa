"""Adapter to the telemetry helpers in `edged.service.telemetry` (comms' module).

Uses its `system_snapshot(pids)` when present; otherwise a minimal psutil version
with the same role (CPU%, RSS of the given processes, load average, temperature),
so the daemon does not depend on the order in which the two halves land.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, Iterable, Optional

import psutil

try:  # pragma: no cover - depends on what is installed
    from edged.service.telemetry import system_snapshot as _comms_snapshot
except ImportError:
    _comms_snapshot = None

_procs: Dict[int, psutil.Process] = {}


def process_rss_mb(pids: Iterable[int]) -> float:
    """Sum of resident memory of `pids` (missing processes count 0)."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def _temperature_c() -> Optional[float]:
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            with open(path) as fh:
                temps.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            pass
    return max(temps) if temps else None


def system_snapshot(pids: Iterable[int]) -> Dict[str, Any]:
    pids = list(pids)
    if _comms_snapshot is not None:
        return _comms_snapshot(pids)
    cpu = 0.0
    for pid in pids:
        try:
            proc = _procs.setdefault(pid, psutil.Process(pid))
            cpu += proc.cpu_percent(None)
        except psutil.Error:
            _procs.pop(pid, None)
    return {"cpu_percent": round(cpu, 1), "rss_mb": process_rss_mb(pids),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "temperature_c": _temperature_c()}
