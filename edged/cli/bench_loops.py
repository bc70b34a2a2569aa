"""The two baselines `edged bench` compares the daemon with, each run in its own
spawned process so the bench process never loads Paddle Lite itself:

- `bare_loop`: Paddle Lite `run()` on a fixed input, nothing else (the ceiling);
- `naive_loop`: decode, preprocess, run, publish, one after another in one thread
  (the script most users write first).
"""

from __future__ import annotations

import time
import uuid
from multiprocessing.connection import Connection
from typing import Any, Dict, List

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _predictor(model_path: str, threads: int, power_mode: str) -> Any:
    from edged.engine.lite import configure_threads
    configure_threads(threads)
    from edged.engine.lite import LitePredictor
    return LitePredictor(model_path, threads, power_mode)


def bare_loop(model_path: str, shape: tuple, threads: int, power_mode: str, seconds: float,
              conn: Connection) -> None:
    predictor = _predictor(model_path, threads, power_mode)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(5):
        predictor.run(x)
    times: List[float] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        predictor.run(x)
        times.append((time.monotonic() - t0) * 1e3)
    conn.send({"frames": len(times), "elapsed": time.monotonic() - start, "inference_ms": times,
               "peak_rss_mb": peak_rss_mb()})


def naive_loop(model_path: str, spec: Any, labels: List[str], threads: int, power_mode: str,
               seconds: float, jpegs: List[np.ndarray], mqtt_cfg: Any, conn: Connection) -> None:
    import cv2

    from edged.engine.postprocess import top_k
    from edged.engine.preprocess import Preprocessor
    from edged.mqtt.link import MqttLink

    import logging
    logging.getLogger("edged.mqtt").setLevel(logging.CRITICAL)  # the bench prints the table
    predictor = _predictor(model_path, threads, power_mode)
    preprocess = Preprocessor(spec)
    link = MqttLink(mqtt_cfg, "bench-naive", uuid.uuid4().hex) if mqtt_cfg is not None else None
    if link is not None:
        link.start()
        link.wait_connected(10.0)
    for i in range(5):
        predictor.run(preprocess(cv2.imdecode(jpegs[i % len(jpegs)], cv2.IMREAD_COLOR)))
    totals: List[float] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        image = cv2.imdecode(jpegs[len(totals) % len(jpegs)], cv2.IMREAD_COLOR)
        top = top_k(predictor.run(preprocess(image)), labels, 3)
        if link is not None:
            link.publish_result({"seq": len(totals), "top": top, "published_at": time.time()})
        totals.append((time.monotonic() - t0) * 1e3)
    elapsed = time.monotonic() - start
    if link is not None:
        link.stop(5.0)
    conn.send({"frames": len(totals), "elapsed": elapsed, "total_ms": totals,
               "peak_rss_mb": peak_rss_mb()})


def run_in_process(target: Any, *args: Any, timeout: float) -> Dict[str, Any]:
    """Run `target(*args, conn)` in a spawned process and return what it sends."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=args + (child,), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"{target.__name__} did not finish within {timeout:.0f} s")
        return parent.recv()
    finally:
        process.join(10.0)
        if process.is_alive():
            process.kill()
