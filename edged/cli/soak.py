"""`edged soak`: run the daemon at full rate for a long time and measure its memory.

The daemon runs as it does in the field: its own process (`edged run`) with its
inference worker, fed by a synthetic 1920x1080 MJPG camera as fast as inference
goes, every result through the outbox to a local mosquitto. Every `--sample-s` the
resident memory of the daemon and its children is recorded; after a warm-up the
report gives the least-squares slope (MB per hour), the ratio of the last quarter's
mean to the first quarter's, and whether every result arrived (seq without gaps).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

SOURCE = "synthetic:1920x1080@0?mjpg=1"
DEVICE = "soak"


def register(sub: Any) -> None:
    parser = sub.add_parser("soak", help="run at full rate for a long time and report memory growth",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="measured time (default 20)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="run this long before measuring (default 60)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    parser.add_argument("--model", metavar="DIR", help="model package directory")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write samples and summary as JSON")
    parser.set_defaults(func=soak)


def soak(args: argparse.Namespace) -> int:
    from edged.cli.bench import LocalBroker
    from edged.cli.main import UsageError

    if args.minutes <= 0 or args.sample_s <= 0 or args.warmup_s < 0 or args.threads < 1:
        raise UsageError("--minutes and --sample-s must be > 0, --warmup-s >= 0, --threads >= 1")
    logging.getLogger("edged.mqtt").setLevel(logging.WARNING)
    broker = LocalBroker.start()
    if broker is None:
        raise UsageError("edged soak needs mosquitto (apt-get install mosquitto)")
    counter = ResultCounter(broker.url)
    workdir = tempfile.TemporaryDirectory(prefix="edged-soak-")
    daemon = _start_daemon(Path(workdir.name), broker.url, args)
    try:
        samples = _sample(daemon, counter, args)
    finally:
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(60)
        counter.wait_quiet(5.0)
        counter.stop()
        broker.stop()
        workdir.cleanup()
    summary = summarize(samples, counter.report(), exit_code, window=max(1, round(60 / args.sample_s)))
    print(format_report(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2) + "\n")
    return 0 if summary["lost"] == 0 and exit_code == 0 else 1


def _start_daemon(workdir: Path, broker_url: str, args: argparse.Namespace) -> subprocess.Popen:
    config = workdir / "edged.toml"
    config.write_text(f'[device]\nstate_dir = "{workdir / "state"}"\n[telemetry]\ninterval_s = 10.0\n'
                      f'[engine]\nthreads = {args.threads}\n')
    command = [sys.executable, "-m", "edged", "run", "--config", str(config), "--source", SOURCE,
               "--broker", broker_url, "--device", DEVICE]
    if args.model:
        command += ["--model", args.model]
    log = open(workdir / "daemon.log", "wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _sample(daemon: subprocess.Popen, counter: "ResultCounter", args: argparse.Namespace) -> List[Dict]:
    """RSS of the daemon's process tree every `sample_s`; the first `warmup_s` are not kept."""
    start = time.monotonic()
    end = start + args.warmup_s + args.minutes * 60
    samples: List[Dict] = []
    next_at = start
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} during the soak")
        elapsed = time.monotonic() - start
        rss, processes = tree_rss_mb(daemon.pid)
        if elapsed >= args.warmup_s:
            samples.append({"t_s": round(elapsed - args.warmup_s, 1), "rss_mb": round(rss, 2),
                            "processes": processes, "results": counter.received})
            print(f"soak: {samples[-1]['t_s']:7.0f} s  rss {rss:7.1f} MB  results {counter.received}",
                  file=sys.stderr, flush=True)
        next_at += args.sample_s
        time.sleep(max(0.0, next_at - time.monotonic()))  # a sampling clock, nothing to wait on
    return samples


def tree_rss_mb(pid: int) -> Tuple[float, int]:
    """Resident memory of a process and its descendants, and how many there are."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20, len(procs)


class ResultCounter:
    """Counts results by seq (the soak's delivery check) through edged's own subscriber."""

    def __init__(self, broker_url: str) -> None:
        from edged.config import MqttConfig
        from edged.mqtt import topics
        from edged.mqtt.subscriber import FleetSubscriber

        self.received = 0
        self.seqs: set = set()
        self.boot_ids: set = set()
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._sub = FleetSubscriber(MqttConfig(broker=broker_url), self._on_message, kinds=(topics.RESULT,))
        self._sub.start()
        if not self._sub.wait_connected(10):
            raise RuntimeError(f"cannot subscribe to {broker_url}")

    def _on_message(self, device: str, kind: str, payload: Any) -> None:
        with self._lock:
            self.received += 1
            self.seqs.add(payload["seq"])
            self._last = time.monotonic()

    def wait_quiet(self, quiet_s: float) -> None:
        """Until no result arrived for `quiet_s` (the daemon has flushed its outbox)."""
        while time.monotonic() - self._last < quiet_s:
            time.sleep(0.2)

    def stop(self) -> None:
        self._sub.stop()

    def report(self) -> Dict[str, int]:
        with self._lock:
            produced = max(self.seqs) + 1 if self.seqs else 0
            return {"received": self.received, "unique": len(self.seqs), "produced": produced,
                    "duplicates": self.received - len(self.seqs), "lost": produced - len(self.seqs)}


def slope_mb_per_hour(samples: List[Dict]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return 0.0
    ts = [s["t_s"] for s in samples]
    ys = [s["rss_mb"] for s in samples]
    t_mean, y_mean = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - t_mean) ** 2 for t in ts)
    cov = sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys))
    return cov / var * 3600 if var else 0.0


def envelope(samples: List[Dict], window: int) -> Tuple[List[Dict], List[Dict]]:
    """Per-window minimum and maximum RSS: memory that moves between two levels (allocator
    arenas, the worker's buffers) fits a line badly, but a leak lifts the floor and the ceiling."""
    lows, highs = [], []
    for i in range(0, len(samples) - window + 1, window):
        part = samples[i:i + window]
        t = part[len(part) // 2]["t_s"]
        lows.append({"t_s": t, "rss_mb": min(x["rss_mb"] for x in part)})
        highs.append({"t_s": t, "rss_mb": max(x["rss_mb"] for x in part)})
    return lows, highs


def summarize(samples: List[Dict], delivery: Dict[str, int], exit_code: Optional[int],
              window: int = 6) -> Dict[str, Any]:
    quarter = max(1, len(samples) // 4)
    first = [s["rss_mb"] for s in samples[:quarter]]
    last = [s["rss_mb"] for s in samples[-quarter:]]
    minutes = samples[-1]["t_s"] / 60 if samples else 0.0
    lows, highs = envelope(samples, window)
    return dict(delivery, minutes=round(minutes, 1), samples=len(samples),
                rss_first_mb=samples[0]["rss_mb"] if samples else 0.0,
                rss_last_mb=samples[-1]["rss_mb"] if samples else 0.0,
                rss_max_mb=max((s["rss_mb"] for s in samples), default=0.0),
                slope_mb_per_hour=round(slope_mb_per_hour(samples), 2),
                floor_slope_mb_per_hour=round(slope_mb_per_hour(lows), 2),
                ceiling_slope_mb_per_hour=round(slope_mb_per_hour(highs), 2),
                last_over_first_quarter=round((sum(last) / len(last)) / (sum(first) / len(first)), 4)
                if samples else 1.0,
                results_per_s=round((samples[-1]["results"] - samples[0]["results"]) / samples[-1]["t_s"], 1)
                if minutes else 0.0,
                exit_code=exit_code)


def format_report(s: Dict[str, Any]) -> str:
    return "\n".join([
        f"soak: {s['minutes']} min measured, {s['samples']} samples, {s['results_per_s']} results/s",
        f"  RSS (daemon + worker): first {s['rss_first_mb']} MB, last {s['rss_last_mb']} MB, "
        f"max {s['rss_max_mb']} MB",
        f"  slope {s['slope_mb_per_hour']:+.2f} MB/hour (all samples), {s['floor_slope_mb_per_hour']:+.2f} "
        f"(per-minute minimum), {s['ceiling_slope_mb_per_hour']:+.2f} (per-minute maximum)",
        f"  last/first quarter mean {s['last_over_first_quarter']:.4f}",
        f"  results: produced {s['produced']}, delivered {s['unique']}, duplicates {s['duplicates']}, "
        f"lost {s['lost']}; daemon exit code {s['exit_code']}",
    ])
