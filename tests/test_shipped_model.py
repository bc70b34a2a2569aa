"""What ships in firmware_models/: a valid package whose x86 `.nb` really classifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.models import dataset, package, regnet, synth
from edged.models.lite_eval import run_lite

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware_models"
PACKAGE = FIRMWARE / "regnety_400mf_inspect"
VIDEO = FIRMWARE / "sample" / "parts.mp4"
FRESH_SEED = 20261204  # used by no recipe split (train 1, val 2, test 3, video 4)


def test_shipped_manifest_validates_and_every_sha256_matches():
    pkg = package.load_package(PACKAGE, verify_hashes=True)
    assert {(f.target, f.precision) for f in pkg.files} == {("arm", "int8"), ("arm", "fp32"), ("x86", "fp32")}
    assert pkg.labels == synth.LABELS
    arch = pkg.manifest["architecture"]
    assert arch["name"] == "RegNetY-400MF"
    assert arch["flops"] == regnet.complexity(regnet.lookup("RegNetY-400MF"), len(pkg.labels)).flops


def test_shipped_metrics_meet_the_bar():
    metrics = package.load_package(PACKAGE, verify_hashes=False).manifest["metrics"]
    assert metrics["heldout_images"] >= 1000
    assert metrics["fp32_top1"] >= 0.97
    assert abs(metrics["int8_sim_top1"] - metrics["fp32_top1"]) <= 0.01
    assert metrics["x86_lite_vs_paddle_min_cosine"] >= 0.9999


def test_shipped_files_stay_under_50_mb():
    total = sum(p.stat().st_size for p in FIRMWARE.rglob("*") if p.is_file())
    assert total < 50 * 2 ** 20, f"firmware_models/ is {total / 2 ** 20:.1f} MiB"


@pytest.mark.slow
def test_shipped_x86_model_classifies_fresh_images_as_well_as_the_manifest_says(tmp_path):
    pkg = package.load_package(PACKAGE, verify_hashes=False)
    synth.write_dataset(tmp_path / "fresh", FRESH_SEED, per_class=50, size=pkg.preprocess.height)
    images = dataset.load(tmp_path / "fresh", pkg.preprocess.height, pkg.labels)
    x = dataset.to_tensor(images.images, pkg.preprocess.mean, pkg.preprocess.std)
    logits, _ = run_lite(pkg.path_of(pkg.file_for("x86")), x, threads=2)
    top1 = float((logits.argmax(1) == images.labels).mean())
    assert top1 >= pkg.manifest["metrics"]["fp32_top1"] - 0.02, top1


def test_sample_video_has_a_label_for_every_frame():
    import cv2

    labels = synth.read_sidecar(VIDEO)
    cap = cv2.VideoCapture(str(VIDEO))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert count == len(labels) >= 300
    assert set(labels) <= set(synth.LABELS) and len(set(labels)) == len(synth.LABELS)
    ok, frame = cap.read()
    assert ok and frame.shape == (360, 640, 3) and np.isfinite(frame).all()
