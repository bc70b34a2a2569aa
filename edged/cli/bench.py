"""`edged bench`: the daemon pipeline against two baselines, in one run, same model
and thread count: (a) a bare Paddle Lite loop, (b) the full daemon fed by a synthetic
1920x1080 MJPG camera (decoded on arrival) as fast as it can go, publishing to a local
broker, (c) a naive single-threaded decode/preprocess/run/publish loop."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

SOURCE = "synthetic:1920x1080@0?mjpg=1"
TARGETS = {"b/a": 0.95, "b/c": 1.10, "p99/inference": 1.5, "preprocess_ms": 2.0, "rss_mb": 250.0}


def register(sub: Any) -> None:
    parser = sub.add_parser("bench", help="measure the pipeline against bare and naive loops",
                            description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement (default 20)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--threads", type=int, help="inference threads (default: engine.threads)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="config for model/engine keys")
    parser.add_argument("--model", metavar="DIR", help="model package directory")
    parser.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    from edged.cli.main import UsageError
    from edged.cli.run import load

    if args.seconds <= 0 or (args.threads is not None and args.threads < 1):
        raise UsageError("--seconds must be > 0 and --threads >= 1")
    if not getattr(args, "verbose", False):  # the table is the output; keep the daemon quiet
        logging.getLogger("edged").setLevel(logging.WARNING)
        logging.getLogger("edged.mqtt").setLevel(logging.ERROR)  # "disconnected" at stop
        logging.getLogger("edged.mqtt.paho").setLevel(logging.CRITICAL)
    broker = LocalBroker.start()
    try:
        flags = argparse.Namespace(config=args.config, source=SOURCE, model=args.model,
                                   device="bench", broker=broker.url if broker else None)
        state = tempfile.TemporaryDirectory(prefix="edged-bench-")  # a fresh, empty outbox
        extra = {"engine_threads": args.threads, "telemetry_interval_s": 3600.0,
                 "device_state_dir": state.name}
        cfg = load(flags, extra)
        report = measure(cfg, args.seconds, with_broker=broker is not None)
    finally:
        if broker:
            broker.stop()
        state.cleanup()
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure(cfg: Any, seconds: float, with_broker: bool) -> Dict[str, Any]:
    from edged.cli.bench_loops import bare_loop, naive_loop, run_in_process
    from edged.capture.sources import SyntheticSource
    from edged.models.package import load_package

    pkg = load_package(cfg.model.resolved_path())
    model = str(pkg.path_of(pkg.file_for()))
    p = pkg.preprocess
    shape = (1, 3, p.height, p.width)
    threads, power = cfg.engine.threads, cfg.engine.power_mode
    timeout = seconds + 120
    _progress(f"(a) bare Paddle Lite loop, {threads} thread(s), {seconds:.0f} s")
    bare = run_in_process(bare_loop, model, shape, threads, power, seconds, timeout=timeout)
    _progress(f"(b) daemon pipeline on {SOURCE}")
    daemon = measure_daemon(cfg, seconds)
    _progress("(c) naive single-threaded loop")
    jpegs = SyntheticSource(SOURCE, 1920, 1080, 0, mjpg=True).encoded()
    naive = run_in_process(naive_loop, model, p, pkg.labels, threads, power, seconds, jpegs,
                           cfg.mqtt if with_broker else None, timeout=timeout)
    return summarize(bare, daemon, naive, threads, model, with_broker)


def _progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def measure_daemon(cfg: Any, seconds: float) -> Dict[str, Any]:
    """Run the real Daemon in a thread; count what it infers over `seconds` after warm-up."""
    from edged.cli.bench_loops import peak_rss_mb
    from edged.service.daemon import Daemon

    daemon = Daemon(cfg, keep_run_samples=True)
    thread = threading.Thread(target=daemon.run, name="bench-daemon", daemon=True)
    thread.start()
    if not daemon.ready.wait(120):
        daemon.request_stop()
        raise RuntimeError("the daemon did not become ready within 120 s")
    time.sleep(1.0)  # warm-up: let the just-in-time feeder learn its lead time
    n0, first = daemon.stats.counts["inferred"], len(daemon.stats.run_samples("total"))
    t0 = time.monotonic()
    time.sleep(seconds)
    n1, elapsed = daemon.stats.counts["inferred"], time.monotonic() - t0
    samples = {s: daemon.stats.run_samples(s)[first:] for s in
               ("total", "inference", "decode", "preprocess", "queue_wait", "worker_idle")}
    peak = peak_rss_mb() + sum(_vm_hwm_mb(p.pid) for p in _edged_children())
    daemon.request_stop()
    thread.join(30)
    return {"frames": n1 - n0, "elapsed": elapsed, "samples": samples, 
            "peak_rss_mb": peak, "dropped": daemon.mailbox.dropped, "restarts": daemon.engine.restarts}


def _edged_children() -> List[Any]:
    """Our child processes that belong to edged (the worker, multiprocessing's resource
    tracker), not the broker the bench started."""
    import psutil
    return [p for p in psutil.Process().children(recursive=True) if "mosquitto" not in p.name()]


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of `pid` in MB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _pct(values: List[float], q: float) -> float:
    import numpy as np
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def summarize(bare: Dict[str, Any], daemon: Dict[str, Any], naive: Dict[str, Any], threads: int,
              model: str, with_broker: bool) -> Dict[str, Any]:
    fps_a = bare["frames"] / bare["elapsed"]
    fps_b = daemon["frames"] / daemon["elapsed"]
    fps_c = naive["frames"] / naive["elapsed"]
    s = daemon["samples"]
    inf_median = statistics.median(bare["inference_ms"])
    total = s["total"]
    e2e = {"p50": _pct(total, 50), "p90": _pct(total, 90), "p99": _pct(total, 99),
           "max": round(max(total), 2) if total else 0.0}
    return {
        "model": model, "threads": threads, "source": SOURCE, "published_to_broker": with_broker,
        "fps": {"a_bare": round(fps_a, 2), "b_daemon": round(fps_b, 2), "c_naive": round(fps_c, 2)},
        "ratios": {"b/a": round(fps_b / fps_a, 3), "b/c": round(fps_b / fps_c, 3)},
        "inference_median_ms": {"a_bare": round(inf_median, 2),
                                "b_daemon": round(statistics.median(s["inference"]), 2)},
        "e2e_ms": e2e, "p99/inference": round(e2e["p99"] / inf_median, 3),
        "p99/daemon_inference": round(e2e["p99"] / statistics.median(s["inference"]), 3),
        "decode_ms_median": round(statistics.median(s["decode"]), 2),
        "preprocess_ms_median": round(statistics.median(s["preprocess"]), 2),
        "queue_wait_ms_median": round(statistics.median(s["queue_wait"]), 2),
        "worker_idle_ms": {"median": round(statistics.median(s["worker_idle"]), 2),
                           "share": round(sum(s["worker_idle"]) / 1e3 / daemon["elapsed"], 3)},
        "daemon_frames": daemon["frames"], "daemon_dropped": daemon["dropped"],
        "peak_rss_mb": {"daemon_total": round(daemon["peak_rss_mb"], 1),
                        "bare_process": round(bare["peak_rss_mb"], 1),
                        "naive_process": round(naive["peak_rss_mb"], 1)},
    }


def format_table(r: Dict[str, Any]) -> str:
    ok = {"b/a": r["ratios"]["b/a"] >= TARGETS["b/a"], "b/c": r["ratios"]["b/c"] >= TARGETS["b/c"],
          "p99": r["p99/inference"] <= TARGETS["p99/inference"],
          "pre": r["preprocess_ms_median"] <= TARGETS["preprocess_ms"],
          "rss": r["peak_rss_mb"]["daemon_total"] <= TARGETS["rss_mb"]}
    mark = {k: "ok" if v else "MISSED" for k, v in ok.items()}
    e = r["e2e_ms"]
    rows = [
        ("(a) bare Paddle Lite loop", f"{r['fps']['a_bare']:.2f} fps", f"inference median {r['inference_median_ms']['a_bare']} ms"),
        ("(b) daemon pipeline", f"{r['fps']['b_daemon']:.2f} fps", f"{r['daemon_frames']} frames, 1080p MJPG"),
        ("(c) naive single thread", f"{r['fps']['c_naive']:.2f} fps", ""),
        ("b/a", f"{r['ratios']['b/a']:.3f}", f"target >= {TARGETS['b/a']}  {mark['b/a']}"),
        ("b/c", f"{r['ratios']['b/c']:.3f}", f"target >= {TARGETS['b/c']}  {mark['b/c']}"),
        ("e2e p50/p90/p99/max", f"{e['p50']}/{e['p90']}/{e['p99']}/{e['max']} ms",
         f"p99 = {r['p99/inference']:.2f} x bare inference median, target <= 1.5  {mark['p99']}"),
        ("  same, vs the daemon's own", f"{r['p99/daemon_inference']:.2f} x",
         f"its inference median {r['inference_median_ms']['b_daemon']} ms"),
        ("worker idle (input starvation)", f"{r['worker_idle_ms']['share'] * 100:.1f} %",
         f"median wait {r['worker_idle_ms']['median']} ms per frame"),
        ("decode 1080p JPEG (median)", f"{r['decode_ms_median']} ms", ""),
        ("preprocess 1080p (median)", f"{r['preprocess_ms_median']} ms", f"target <= 2 ms  {mark['pre']}"),
        ("peak RSS, edged processes", f"{r['peak_rss_mb']['daemon_total']} MB", f"target <= 250 MB  {mark['rss']}"),
    ]
    width = max(len(a) for a, _, _ in rows)
    head = f"edged bench: {r['threads']} inference thread(s), model {Path(r['model']).name}" + (
        "" if r["published_to_broker"] else " (no broker: results not published)")
    return "\n".join([head] + [f"  {a:<{width}}  {b:>24}  {c}" for a, b, c in rows])


class LocalBroker:
    """mosquitto on a free localhost port, if installed."""

    def __init__(self, process: Any, port: int, workdir: str) -> None:
        self.process, self.port, self.workdir = process, port, workdir
        self.url = f"mqtt://127.0.0.1:{port}"

    @classmethod
    def start(cls) -> Optional["LocalBroker"]:
        import socket
        import subprocess

        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            log.warning("bench: mosquitto not found; the daemon runs without publishing")
            return None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        workdir = tempfile.mkdtemp(prefix="edged-bench-")
        conf = Path(workdir) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        process = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        broker = cls(process, port, workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return broker
            except OSError:
                time.sleep(0.05)  # polling a port that has no event to wait on
        broker.stop()
        log.warning("bench: mosquitto did not start; the daemon runs without publishing")
        return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
