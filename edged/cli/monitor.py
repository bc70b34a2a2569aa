"""`edged monitor`: a live terminal table of every device on a broker.

Subscribes to `<prefix>/+/status|result|telemetry` and redraws about twice a
second with plain ANSI escapes (no curses). `--once N` prints one plain
snapshot after N seconds and exits, for scripts and tests.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from edged.config import MqttConfig
from edged.config_check import check_broker_url
from edged.mqtt import topics
from edged.service.telemetry import LatencyWindow

REDRAW_S = 0.5
CLEAR = "\x1b[H\x1b[2J"
COLOURS = {"online": "\x1b[32m", "degraded": "\x1b[33m", "offline": "\x1b[31m"}
RESET = "\x1b[0m"
COLUMNS = ("DEVICE", "STATE", "LABEL", "SCORE", "FPS", "E2E p50", "E2E p99", "INF p50",
           "RESULTS", "REASON")


@dataclass
class DeviceView:
    """What the table shows for one device, updated from its messages."""

    state: str = "?"
    reason: Optional[str] = None
    label: str = ""
    score: Optional[float] = None
    fps: Optional[float] = None
    e2e_p50: Optional[float] = None
    e2e_p99: Optional[float] = None
    inf_p50: Optional[float] = None
    results: int = 0
    recent_total: LatencyWindow = field(default_factory=lambda: LatencyWindow(10.0))
    recent_inference: LatencyWindow = field(default_factory=lambda: LatencyWindow(10.0))
    has_telemetry: bool = False


class FleetView:
    """Thread-safe model of the fleet, fed by the subscriber's network thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.devices: Dict[str, DeviceView] = {}

    def update(self, device: str, kind: str, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        with self._lock:
            view = self.devices.setdefault(device, DeviceView())
            if kind == topics.STATUS:
                view.state, view.reason = str(payload.get("state", "?")), payload.get("reason")
            elif kind == topics.RESULT:
                _apply_result(view, payload)
            elif kind == topics.TELEMETRY:
                _apply_telemetry(view, payload)

    def rows(self) -> List[List[str]]:
        with self._lock:
            return [_row(name, self.devices[name]) for name in sorted(self.devices)]


def _apply_result(view: DeviceView, payload: Dict[str, Any]) -> None:
    view.results += 1
    top = payload.get("top") or []
    if top and isinstance(top[0], dict):
        view.label, view.score = str(top[0].get("label", "")), top[0].get("score")
    latency = payload.get("latency_ms") or {}
    if isinstance(latency.get("total"), (int, float)):
        view.recent_total.add(latency["total"])
    if isinstance(latency.get("inference"), (int, float)):
        view.recent_inference.add(latency["inference"])
    if not view.has_telemetry:  # until telemetry arrives, estimate from results
        total, inference = view.recent_total.percentiles(), view.recent_inference.percentiles()
        view.e2e_p50 = total["p50"] if total else None
        view.e2e_p99 = total["p99"] if total else None
        view.inf_p50 = inference["p50"] if inference else None


def _apply_telemetry(view: DeviceView, payload: Dict[str, Any]) -> None:
    view.has_telemetry = True
    fps = payload.get("fps") or {}
    view.fps = fps.get("inference", fps.get("inferred"))
    latency = payload.get("latency_ms") or {}
    e2e = latency.get("end_to_end") or latency.get("total") or {}
    inference = latency.get("inference") or {}
    view.e2e_p50, view.e2e_p99 = e2e.get("p50"), e2e.get("p99")
    view.inf_p50 = inference.get("p50")


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, v: DeviceView) -> List[str]:
    return [name, v.state, v.label or "-", _fmt(v.score, 2), _fmt(v.fps), _fmt(v.e2e_p50),
            _fmt(v.e2e_p99), _fmt(v.inf_p50), str(v.results), v.reason or ""]


def render(rows: List[List[str]], header: str, colour: bool) -> str:
    """The whole screen as text; colour only for a terminal."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    lines = [header, "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths)]
        if colour and row[1] in COLOURS:
            cells[1] = f"{COLOURS[row[1]]}{cells[1]}{RESET}"
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no devices yet)")
    return "\n".join(lines) + "\n"


def run_monitor(broker: str, prefix: str, once: Optional[float] = None, out=sys.stdout,
                until: Optional[Callable[[], bool]] = None) -> int:
    """Watch until Ctrl-C or `until()` (or for `once` seconds, then print one snapshot)."""
    from edged.mqtt.subscriber import FleetSubscriber

    check_broker_url(broker, key="--broker")
    view = FleetView()
    sub = FleetSubscriber(MqttConfig(broker=broker, prefix=prefix), view.update)
    sub.start()
    header = f"edged monitor  {broker}  {prefix}/+/...  (Ctrl-C to quit)"
    try:
        if once is not None:
            _wait(once, until)   # collect for the requested time, then one snapshot
            out.write(render(view.rows(), header.replace("  (Ctrl-C to quit)", ""), False))
            if not sub.connected.is_set():
                print(f"edged monitor: error: could not connect to {broker}", file=sys.stderr)
                return 1
            return 0
        colour = out.isatty()
        while not (until and until()):
            state = "" if sub.connected.is_set() else "  [not connected]"
            out.write(CLEAR + render(view.rows(), header + state, colour))
            out.flush()
            time.sleep(REDRAW_S)
        return 0
    except KeyboardInterrupt:
        out.write("\n")
        return 0
    finally:
        sub.stop()


def _wait(seconds: float, until: Optional[Callable[[], bool]]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        time.sleep(min(REDRAW_S, max(0.0, deadline - time.monotonic())))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("monitor", help="live view of devices on a broker",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=os.environ.get("EDGED_MQTT_BROKER",
                                                           "mqtt://localhost:1883"),
                        help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default: %(default)s)")
    parser.add_argument("--prefix", default=os.environ.get("EDGED_MQTT_PREFIX", "edged"),
                        help="topic prefix (default: %(default)s)")
    parser.add_argument("--once", type=float, metavar="SECONDS",
                        help="collect for SECONDS, print one snapshot and exit")
    parser.set_defaults(func=lambda args: run_monitor(args.broker, args.prefix, args.once))
