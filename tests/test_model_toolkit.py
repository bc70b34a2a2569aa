"""The RegNet model toolkit: design space, CLI, and the whole pipeline at tiny scale.

The pipeline test runs real Paddle training, real PostTrainingQuantization, real
`paddle_lite_opt` conversion and real Paddle Lite inference, on a narrow RegNet
and 32x32 images so it takes well under a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.models import package, regnet, synth

REPO = Path(__file__).resolve().parents[1]


def edged(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=cwd, capture_output=True, text=True)


# --- design space ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(regnet.PRESETS))
def test_preset_complexity_matches_published_within_2_percent(name):
    gflops, mparams = regnet.PUBLISHED[name]
    cx = regnet.complexity(regnet.PRESETS[name])
    assert cx.flops / 1e9 == pytest.approx(gflops, rel=0.02)
    assert cx.params / 1e6 == pytest.approx(mparams, rel=0.02)


def test_regnety_400mf_stages_follow_the_paper():
    st = regnet.stages(regnet.lookup("regnety_400mf"))
    assert [s.depth for s in st] == [1, 3, 6, 6]
    assert [s.width for s in st] == [48, 104, 208, 440]
    assert all(s.width % s.group_width == 0 for s in st)


def test_flop_budget_picks_the_largest_fitting_preset():
    params, cx = regnet.best_under_budget(500, "RegNetY")
    assert params.name == "RegNetY-400MF" and cx.flops <= 500e6
    assert regnet.best_under_budget(2000, "RegNetX")[0].name == "RegNetX-1.6GF"
    with pytest.raises(regnet.ArchError, match="no RegNetY preset fits 50 MFLOPs"):
        regnet.best_under_budget(50)


def test_archs_command_prints_every_preset():
    out = edged("model", "archs")
    assert out.returncode == 0, out.stderr
    for name in regnet.PRESETS:
        assert name in out.stdout
    budget = edged("model", "archs", "--budget", "500")
    assert budget.stdout.startswith("RegNetY-400MF")


# --- synthetic data ------------------------------------------------------------------

def test_render_is_deterministic_per_seed_and_index():
    a, label_a = synth.render(7, 3, 64)
    b, label_b = synth.render(7, 3, 64)
    c, _ = synth.render(8, 3, 64)
    assert label_a == label_b == synth.LABELS[3]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_video_sidecar_labels_every_frame(tmp_path):
    import cv2

    labels = synth.write_video(tmp_path / "v.mp4", seed=1, parts=3, frames_per_part=2)
    assert synth.read_sidecar(tmp_path / "v.mp4") == labels and len(labels) == 6
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 6


# --- the whole pipeline, tiny ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """`edged model recipe --scale tiny`: data -> train -> export -> quantize -> convert -> verify."""
    root = tmp_path_factory.mktemp("tiny")
    done = edged("model", "recipe", "--scale", "tiny", "--work", str(root / "work"), "--out", str(root / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.mark.slow
@pytest.mark.paddle
def test_tiny_recipe_produces_a_verified_package(tiny_build):
    pkg = package.load_package(tiny_build / "out" / "tiny_inspect")
    assert {(f.target, f.precision) for f in pkg.files} == {("arm", "int8"), ("arm", "fp32"), ("x86", "fp32")}
    metrics = pkg.manifest["metrics"]
    assert metrics["x86_lite_vs_paddle_min_cosine"] >= 0.9999
    for key in ("fp32_top1", "int8_sim_top1", "x86_fp32_median_ms_1_thread", "x86_fp32_median_ms_2_threads"):
        assert key in metrics
    assert pkg.manifest["toolchain"]["paddlepaddle"] == "2.6.2"
    assert pkg.file_for("x86").path == "model.x86.fp32.nb"
    assert pkg.file_for("arm").precision == "int8"
    assert synth.read_sidecar(tiny_build / "out" / "sample" / "parts.mp4")


@pytest.mark.slow
@pytest.mark.paddle
def test_tiny_recipe_rerun_resumes_instead_of_retraining(tiny_build):
    state = tiny_build / "work" / "stage1" / "train_state.json"
    before = state.stat().st_mtime_ns
    from edged.models import recipe

    recipe.train_stages(recipe.TINY, tiny_build / "work", progress=False)
    assert state.stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.paddle
def test_train_export_verify_commands_chain(tmp_path):
    """The model owner's path through the CLI, on a real preset at 32x32 for one epoch."""
    data, test = tmp_path / "data", tmp_path / "test"
    assert edged("model", "synth", "--out", str(data), "--per-class", "4", "--size", "32").returncode == 0
    assert edged("model", "synth", "--out", str(test), "--per-class", "2", "--size", "32",
                 "--seed", "9").returncode == 0
    run = tmp_path / "run"
    trained = edged("model", "train", "--data", str(data), "--out", str(run), "--arch", "RegNetX-200MF",
                    "--resolution", "32", "--epochs", "1", "--batch-size", "8")
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = edged("model", "export", "--run", str(run), "--calibration", str(data), "--test", str(test),
                     "--out", str(tmp_path / "pkg"), "--name", "cli_test", "--input-size", "32",
                     "--calibration-images", "8")
    assert exported.returncode == 0, exported.stderr[-2000:]
    checked = edged("model", "verify", str(tmp_path / "pkg"), "--images", str(test))
    assert checked.returncode == 0, checked.stderr
    assert "sha256 ok" in checked.stdout and "top-1" in checked.stdout


@pytest.mark.slow
@pytest.mark.paddle
def test_fine_tune_with_frozen_stages_keeps_frozen_weights(tiny_build, tmp_path):
    import paddle  # this test's process never loads paddlelite

    from edged.models import dataset, recipe
    from edged.models.train import Trainer, TrainConfig
    from dataclasses import asdict

    data = dataset.load(tiny_build / "work" / "data" / "train", 32, synth.LABELS)
    cfg = TrainConfig(arch=asdict(recipe.TINY.arch), classes=list(synth.LABELS), resolution=32, epochs=1,
                      batch_size=8, freeze_stages=1)
    init = tiny_build / "work" / "stage2" / "last.pdparams"
    trainer = Trainer(cfg, data, None, tmp_path / "ft", init_from=init)
    trainer.fit(progress=False)
    before, after = paddle.load(str(init)), trainer.model.state_dict()
    stem = "stem.0.0.weight"
    assert np.array_equal(before[stem].numpy(), after[stem].numpy())
    assert not np.array_equal(before["trunk.1.c.0.weight"].numpy(), after["trunk.1.c.0.weight"].numpy())


# --- bad input gets one clear line -----------------------------------------------------------

def _fails_with(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    _fails_with(edged("model", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")),
                "dataset folder not found")


def test_empty_dataset_folder_is_a_clear_error(tmp_path):
    _fails_with(edged("model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), "no class folders")


def test_class_without_images_is_a_clear_error(tmp_path):
    synth.write_dataset(tmp_path / "d", 1, 1, 32)
    for img in (tmp_path / "d" / "hole").iterdir():
        img.unlink()
    _fails_with(edged("model", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")),
                "class 'hole' has no images")


def test_undecodable_image_is_a_clear_error(tmp_path):
    synth.write_dataset(tmp_path / "d", 1, 1, 32)
    (tmp_path / "d" / "ok" / "broken.jpg").write_bytes(b"not a jpeg")
    _fails_with(edged("model", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")),
                "cannot be decoded")


def test_unknown_architecture_is_a_clear_error(tmp_path):
    _fails_with(edged("model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--arch", "ResNet50"),
                "unknown architecture 'ResNet50'")


def test_wrong_input_size_is_a_clear_error(tmp_path):
    _fails_with(edged("model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                      "--resolution", "100"), "must be a multiple of 32")


@pytest.mark.paddle
def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    synth.write_dataset(tmp_path / "d", 1, 1, 32)
    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(b"\x80\x04garbage")
    _fails_with(edged("model", "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                      "--arch", "RegNetX-200MF", "--resolution", "32", "--init", str(bad)),
                "cannot be read as a Paddle checkpoint")


# --- the package validator: one clear error per way a package can be wrong ----------------------

@pytest.fixture
def tiny_package(tiny_build, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_build / "out" / "tiny_inspect", copy)
    return copy


def _edit_manifest(pkg: Path, change) -> None:
    manifest = json.loads((pkg / "manifest.json").read_text())
    change(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.paddle
class TestPackageValidation:
    def test_missing_model_file(self, tiny_package):
        (tiny_package / "model.arm.int8.nb").unlink()
        with pytest.raises(package.PackageError, match="model file 'model.arm.int8.nb' is missing"):
            package.load_package(tiny_package)

    def test_sha256_mismatch(self, tiny_package):
        nb = tiny_package / "model.x86.fp32.nb"
        data = bytearray(nb.read_bytes())
        data[-1] ^= 0xFF
        nb.write_bytes(bytes(data))
        with pytest.raises(package.PackageError, match="sha256 mismatch"):
            package.load_package(tiny_package)

    def test_unknown_schema_version(self, tiny_package):
        _edit_manifest(tiny_package, lambda m: m.update(schema_version=99))
        with pytest.raises(package.PackageError, match="unknown schema_version 99"):
            package.load_package(tiny_package)

    def test_labels_do_not_match_outputs(self, tiny_package):
        def drop_label(m):
            m["labels"] = m["labels"][:-1]
        _edit_manifest(tiny_package, drop_label)
        (tiny_package / "labels.txt").unlink()
        with pytest.raises(package.PackageError, match="6 outputs but 5 labels"):
            package.load_package(tiny_package)

    def test_no_file_for_this_target(self, tiny_package):
        _edit_manifest(tiny_package, lambda m: m.update(files=[f for f in m["files"] if f["target"] == "arm"]))
        pkg = package.load_package(tiny_package)
        with pytest.raises(package.PackageError, match="no model file for target 'x86'"):
            pkg.file_for("x86")

    def test_path_escaping_the_package(self, tiny_package):
        _edit_manifest(tiny_package, lambda m: m["files"][0].update(path="../../etc/passwd"))
        with pytest.raises(package.PackageError, match="must stay inside the package"):
            package.load_package(tiny_package)

    def test_manifest_not_json(self, tiny_package):
        (tiny_package / "manifest.json").write_text("{truncated")
        with pytest.raises(package.PackageError, match="not valid JSON"):
            package.load_package(tiny_package)

    def test_verify_command_reports_the_problem(self, tiny_package):
        (tiny_package / "model.arm.fp32.nb").write_bytes(b"x")
        _fails_with(edged("model", "verify", str(tiny_package)), "differs from manifest")
