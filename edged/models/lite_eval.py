"""Run a `.nb` in Paddle Lite over a batch of inputs, in a process of its own.

paddle and paddlelite must never share a process (two MKL runtimes, wrong
outputs: PLATFORM.md), so the toolkit verifies converted models by running this
module as a subprocess:

    python -m edged.models.lite_eval MODEL.nb INPUTS.npy OUTPUTS.npy [--threads N] [--timing-runs N]

INPUTS.npy is N x C x H x W float32; OUTPUTS.npy gets N x classes float32 and,
with --timing-runs, a JSON line with the median latency is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np


def run_lite(model: Path, inputs: np.ndarray, threads: int = 1,
             timing_runs: int = 0) -> Tuple[np.ndarray, Optional[Dict[str, float]]]:
    """Outputs of `model` for every input row (and latency stats), via a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(src, np.ascontiguousarray(inputs, np.float32))
        cmd = [sys.executable, "-m", "edged.models.lite_eval", str(model), str(src), str(dst),
               "--threads", str(threads), "--timing-runs", str(timing_runs)]
        done = subprocess.run(cmd, capture_output=True, text=True)  # the child sets its thread env
        if done.returncode != 0:
            raise RuntimeError(f"Paddle Lite failed on {model}: {done.stderr.strip()[-800:]}")
        stats = None
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                stats = json.loads(line)
        return np.load(dst), stats


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("outputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-runs", type=int, default=0)
    args = parser.parse_args()
    from edged.engine.lite import LitePredictor, configure_threads

    configure_threads(args.threads)
    predictor = LitePredictor(args.model, args.threads)
    inputs = np.load(args.inputs)
    np.save(args.outputs, np.stack([predictor.run(row).reshape(-1) for row in inputs]))
    if args.timing_runs:
        times = []
        for _ in range(args.timing_runs):
            started = time.perf_counter()
            predictor.run(inputs[0])
            times.append((time.perf_counter() - started) * 1000)
        print(json.dumps({"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                          "runs": args.timing_runs, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
