"""Running the real daemon (`python -m edged run`) as a child process in tests.

The tests run the shipped model package and sample video from firmware_models/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPO / "firmware_models" / "regnety_400mf_inspect"
SAMPLE_VIDEO = REPO / "firmware_models" / "sample" / "parts.mp4"
SAMPLE_LABELS = REPO / "firmware_models" / "sample" / "parts.labels.csv"


def model_dir() -> Path:
    return BUNDLED_MODEL


def bundled_sample() -> Tuple[Path, Path]:
    """(video, labels.csv) of the shipped sample."""
    return SAMPLE_VIDEO, SAMPLE_LABELS


def write_video(path: Path, frames: int, fps: float = 25.0, size: Tuple[int, int] = (320, 240)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 37) % 256, np.uint8)
        cv2.circle(image, (int(rng.integers(0, size[0])), size[1] // 2), 30, (0, 0, 255), -1)
        writer.write(image)
    writer.release()
    return path


def toml_text(sections: Dict[str, Dict[str, Any]]) -> str:
    lines: List[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


class DaemonProcess:
    """`edged run` in a child process with its output in a log file."""

    def __init__(self, workdir: Path, source: str, broker_url: str, device: str,
                 config: Optional[Dict[str, Dict[str, Any]]] = None, model: Optional[Path] = None,
                 extra_args: Sequence[str] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        sections = {"device": {"state_dir": str(workdir / "state")},
                    "source": {"reopen_backoff_initial_s": 0.1, "reopen_backoff_max_s": 0.5}}
        for name, keys in (config or {}).items():
            sections.setdefault(name, {}).update(keys)
        self.config_path = workdir / "edged.toml"
        self.config_path.write_text(toml_text(sections))
        self.log_path = workdir / "daemon.log"
        self.args = [sys.executable, "-m", "edged", "run", "--config", str(self.config_path),
                     "--source", source, "--broker", broker_url, "--device", device,
                     "--model", str(model or model_dir()), *extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        env["PYTHONPATH"] = str(REPO)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s; log:\n{self.log()}") from None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def direct_top1_child(model: str, video: str, conn: Any) -> None:
    """In a fresh process: every frame of `video` through Preprocessor + Paddle Lite,
    with no pipeline in between (the reference the daemon must reproduce)."""
    from edged.engine.lite import configure_threads
    configure_threads(1)
    from edged.engine.lite import LitePredictor
    from edged.engine.postprocess import top_k
    from edged.engine.preprocess import Preprocessor
    from edged.models.package import load_package

    pkg = load_package(model)
    predictor = LitePredictor(str(pkg.path_of(pkg.file_for())), 1)
    preprocess = Preprocessor(pkg.preprocess)
    cap = cv2.VideoCapture(video)
    out = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        top = top_k(predictor.run(preprocess(image)), pkg.labels, 1)[0]
        out.append((top["label"], top["score"]))
    conn.send(out)


def direct_top1(model: Path, video: Path) -> List[Tuple[str, float]]:
    from edged.cli.bench_loops import run_in_process
    return run_in_process(direct_top1_child, str(model), str(video), timeout=300)
