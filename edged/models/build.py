"""From a trained checkpoint to a verified model package (imports paddle).

export (paddle 2.6 legacy program) -> INT8 post-training quantization with
calibration images -> `paddle_lite_opt` to ARM INT8, ARM fp32 and x86 fp32 `.nb`
-> verification (x86 `.nb` in Paddle Lite against Paddle, top-1 of fp32 and of the
fake-quant INT8 program on the held-out set) -> manifest.json + labels.txt.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle

from edged import __version__
from edged.models import dataset, package, regnet
from edged.models.lite_eval import run_lite
from edged.models.train import build_model, load_weights, TrainConfig

log = logging.getLogger(__name__)
MODEL_FILE, PARAMS_FILE = "model.pdmodel", "model.pdiparams"
NB_FILES = {("arm", "int8"): "model.arm.int8.nb", ("arm", "fp32"): "model.arm.fp32.nb",
            ("x86", "fp32"): "model.x86.fp32.nb"}
COSINE_MIN = 0.9999


def export_fp32(model, resolution: int, out_dir: Path) -> Path:
    """Save the legacy inference program (Paddle Lite 2.13 cannot read PIR)."""
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, resolution, resolution], "float32", "x")]
    paddle.jit.save(model, str(out_dir / "model"), input_spec=spec)
    return out_dir


class _CalibrationBatches(paddle.io.DataLoader):
    """Feeds in-memory calibration batches to PostTrainingQuantization.

    PTQ in paddle 2.6 accepts only a `paddle.io.DataLoader` and merely calls it and
    takes its length, so a list of feed dicts is all that is needed.
    """

    def __init__(self, inputs: np.ndarray, batch: int, feed_name: str = "x"):  # noqa: super not called
        self._feeds = [{feed_name: inputs[s:s + batch]} for s in range(0, len(inputs), batch)]

    def __call__(self):
        return iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def quantize_int8(fp32_dir: Path, calibration: np.ndarray, out_dir: Path, batch: int = 16) -> Path:
    """Post-training INT8 quantization (per-channel weights, KL activations)."""
    from paddle.static.quantization import PostTrainingQuantization

    loader = _CalibrationBatches(calibration, batch)
    paddle.enable_static()
    try:
        ptq = PostTrainingQuantization(
            executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=str(fp32_dir),
            model_filename=MODEL_FILE, params_filename=PARAMS_FILE, data_loader=loader,
            batch_nums=len(loader), algo="KL",
            quantizable_op_type=["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"])
        ptq.quantize()
        ptq.save_quantized_model(str(out_dir), model_filename=MODEL_FILE, params_filename=PARAMS_FILE)
    finally:
        paddle.disable_static()
    return out_dir


def run_static(model_dir: Path, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """Outputs of a saved program (fp32 or fake-quant INT8) in Paddle's executor."""
    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            program, feeds, fetches = paddle.static.load_inference_model(
                str(model_dir), exe, model_filename=MODEL_FILE, params_filename=PARAMS_FILE)
            outs = [exe.run(program, feed={feeds[0]: inputs[s:s + batch]}, fetch_list=fetches)[0]
                    for s in range(0, len(inputs), batch)]
    finally:
        paddle.disable_static()
    return np.concatenate(outs)


def convert(model_dir: Path, target: str, out: Path) -> Path:
    """`paddle_lite_opt` to a naive-buffer `.nb` for `target` (arm or x86)."""
    opt = Path(sys.executable).with_name("paddle_lite_opt")
    cmd = [str(opt) if opt.exists() else "paddle_lite_opt", f"--model_file={model_dir / MODEL_FILE}",
           f"--param_file={model_dir / PARAMS_FILE}", "--optimize_out_type=naive_buffer",
           f"--optimize_out={out.with_suffix('')}", f"--valid_targets={target}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"paddle_lite_opt failed for {target}: {(done.stdout + done.stderr)[-800:]}")
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def verify(fp32_dir: Path, int8_dir: Path, x86_nb: Path, test: dataset.ImageSet) -> Dict:
    """The checks recorded in the manifest; raises if the x86 `.nb` disagrees with Paddle."""
    x = dataset.to_tensor(test.images)
    fp32 = run_static(fp32_dir, x)
    int8 = run_static(int8_dir, x)
    lite, _ = run_lite(x86_nb, x)
    cos = cosine(lite, fp32)
    if cos.min() < COSINE_MIN:
        raise RuntimeError(f"x86 .nb disagrees with Paddle: min cosine {cos.min():.5f} < {COSINE_MIN}")
    top1 = lambda logits: round(float((logits.argmax(1) == test.labels).mean()), 4)  # noqa: E731
    return {"heldout_images": len(test), "fp32_top1": top1(fp32), "int8_sim_top1": top1(int8),
            "x86_lite_top1": top1(lite), "x86_lite_vs_paddle_min_cosine": round(float(cos.min()), 6),
            "int8_sim_vs_fp32_mean_cosine": round(float(cosine(int8, fp32).mean()), 5)}


def latency(nb: Path, resolution: int, runs: int = 50) -> Dict[str, float]:
    """Median x86 latency of the `.nb` with 1 and 2 threads."""
    x = np.random.default_rng(0).normal(size=(1, 3, resolution, resolution)).astype(np.float32)
    return {f"x86_fp32_median_ms_{t}_thread{'s' if t > 1 else ''}": round(run_lite(nb, x, t, runs)[1]["median_ms"], 2)
            for t in (1, 2)}


def toolchain() -> Dict[str, str]:
    versions = {"edged": __version__, "python": platform.python_version()}
    for dist in ("paddlepaddle", "paddlelite", "numpy", "opencv-python-headless"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(pkg_dir: Path, fields: Dict, files: List[Tuple[str, str, str]]) -> Dict:
    """manifest.json + labels.txt describing the `.nb` files already in `pkg_dir`."""
    manifest = dict(fields)
    manifest["schema_version"] = package.SCHEMA_VERSION
    manifest["num_classes"] = len(manifest["labels"])
    manifest["files"] = [package.describe_file(pkg_dir, rel, t, p) for rel, t, p in files]
    (pkg_dir / package.LABELS_NAME).write_text("\n".join(manifest["labels"]) + "\n")
    (pkg_dir / package.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    package.load_package(pkg_dir)  # what we ship must pass our own validator
    return manifest


def export_package(checkpoint: Path, arch: regnet.RegNetParams, labels: List[str], resolution: int,
                   calibration: dataset.ImageSet, test: dataset.ImageSet, name: str, version: str,
                   work: Path, pkg_dir: Path, training: Optional[Dict] = None) -> Dict:
    """Export, quantize, convert, verify and pack one trained checkpoint into `pkg_dir`."""
    model = build_model(TrainConfig(arch=asdict(arch), classes=labels))
    load_weights(model, checkpoint)
    export_dir = work / "export"
    for sub in ("fp32", "int8", "nb"):
        shutil.rmtree(export_dir / sub, ignore_errors=True)
        (export_dir / sub).mkdir(parents=True)
    export_fp32(model, resolution, export_dir / "fp32")
    quantize_int8(export_dir / "fp32", dataset.to_tensor(calibration.images), export_dir / "int8")
    nb = export_dir / "nb"
    convert(export_dir / "fp32", "x86", nb / NB_FILES["x86", "fp32"])
    convert(export_dir / "fp32", "arm", nb / NB_FILES["arm", "fp32"])
    convert(export_dir / "int8", "arm", nb / NB_FILES["arm", "int8"])
    started = time.time()
    metrics = verify(export_dir / "fp32", export_dir / "int8", nb / NB_FILES["x86", "fp32"], test)
    metrics.update(latency(nb / NB_FILES["x86", "fp32"], resolution))
    log.info("verified in %.0f s: %s", time.time() - started, metrics)
    shutil.rmtree(pkg_dir, ignore_errors=True)
    shutil.copytree(nb, pkg_dir)
    cx = regnet.complexity(arch, len(labels), resolution)
    fields = {
        "name": name, "version": version, "labels": labels,
        "architecture": {"family": arch.family, **asdict(arch),
                         "stage_depths": [s.depth for s in regnet.stages(arch)],
                         "stage_widths": [s.width for s in regnet.stages(arch)],
                         "flops": cx.flops, "params": cx.params},
        "input": {"shape": [1, 3, resolution, resolution], "layout": "NCHW", "channel_order": "RGB",
                  "resize_short": resolution, "crop": resolution, "scale": 1 / 255,
                  "mean": list(dataset.IMAGENET_MEAN), "std": list(dataset.IMAGENET_STD)},
        "metrics": metrics, "training": training or {},
        "toolchain": toolchain(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_manifest(pkg_dir, fields, [(name, t, p) for (t, p), name in NB_FILES.items()])


def training_summary(*run_dirs: Path) -> Dict:
    """Per-run resolution, epochs, lr and history, from each run's train_state.json."""
    summary = {}
    for run_dir in run_dirs:
        state_file = Path(run_dir) / "train_state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            cfg = state["config"]
            summary[Path(run_dir).name] = {"resolution": cfg["resolution"], "epochs": cfg["epochs"],
                                           "lr": cfg["lr"], "history": state["history"]}
    return summary
