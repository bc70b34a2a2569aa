"""The reproducible recipe behind firmware_models/: data -> train -> export -> package.

Every stage writes into a work directory and is skipped when its output is
already complete, so an interrupted rebuild continues where it stopped and the
same command rebuilds everything from scratch in a fresh directory. `TINY` runs
the whole pipeline in a couple of minutes for CI; `FULL` builds the shipped model.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Tuple

from edged.models import regnet, synth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One training cycle (cosine schedule with warmup), initialised from the previous stage."""

    resolution: int
    epochs: int
    lr: float
    images: int = 0  # 0: the whole training set; else a fixed random subset
    warmup_epochs: float = 0.3


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    arch: regnet.RegNetParams
    image_size: int          # rendered dataset images and the deployed input size
    train_per_class: int
    val_per_class: int
    test_per_class: int      # held-out set for the manifest's top-1 figures
    stages: Tuple[Stage, ...]  # progressive resizing: cheap low-resolution epochs first
    batch_size: int
    calibration_images: int
    video_parts: int
    video_frames_per_part: int
    seeds: Dict[str, int]


FULL = Recipe(
    name="regnety_400mf_inspect", version="1.0.0", arch=regnet.lookup("RegNetY-400MF"),
    image_size=224, train_per_class=1500, val_per_class=100, test_per_class=200,
    stages=(Stage(112, 3, 2e-3), Stage(144, 3, 1e-3), Stage(224, 1, 2e-4, images=2400, warmup_epochs=0.1)),
    batch_size=32, calibration_images=160, video_parts=45, video_frames_per_part=8,
    seeds={"train": 1, "val": 2, "test": 3, "video": 4, "init": 0},
)

TINY = replace(
    FULL, name="tiny_inspect", version="0.0.1",
    arch=regnet.custom("RegNetY-tiny", depth=3, w0=8, wa=8.0, wm=2.0, group_width=8, stem_width=8),
    image_size=32, train_per_class=12, val_per_class=3, test_per_class=4,
    stages=(Stage(32, 1, 2e-3), Stage(32, 1, 2e-4, images=18, warmup_epochs=0.1)),
    batch_size=8, calibration_images=8, video_parts=3, video_frames_per_part=2,
)


def data_stage(recipe: Recipe, work: Path) -> Dict[str, Path]:
    """Render train/val/test sets (class-per-folder JPEGs) unless already complete."""
    paths = {}
    for split, per_class in (("train", recipe.train_per_class), ("val", recipe.val_per_class),
                             ("test", recipe.test_per_class)):
        out = work / "data" / split
        done = out / ".complete"
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            log.info("rendering %s set: %d images per class", split, per_class)
            synth.write_dataset(out, recipe.seeds[split], per_class, recipe.image_size)
            done.write_text(json.dumps({"seed": recipe.seeds[split], "per_class": per_class}))
        paths[split] = out
    return paths


def train_stages(recipe: Recipe, work: Path, progress: bool = True) -> Path:
    """Run the training stages in order (each resumable); returns the final checkpoint."""
    import numpy as np

    from edged.models import dataset
    from edged.models.train import TrainConfig, Trainer

    paths = data_stage(recipe, work)
    train = dataset.load(paths["train"], recipe.image_size, synth.LABELS)
    val = dataset.load(paths["val"], recipe.image_size, synth.LABELS)
    previous = None
    for number, stage in enumerate(recipe.stages, start=1):
        images = train
        if stage.images:
            pick = np.sort(np.random.default_rng(recipe.seeds["train"]).permutation(len(train))[:stage.images])
            images = dataset.ImageSet(train.images[pick], train.labels[pick], train.classes)
        cfg = TrainConfig(arch=asdict(recipe.arch), classes=list(synth.LABELS), resolution=stage.resolution,
                          epochs=stage.epochs, batch_size=recipe.batch_size, lr=stage.lr,
                          warmup_epochs=stage.warmup_epochs, seed=recipe.seeds["init"])
        run_dir = work / f"stage{number}"
        Trainer(cfg, images, val, run_dir, init_from=previous, keep_head=True).fit(progress)
        previous = run_dir / "last.pdparams"
    return previous


def video_stage(recipe: Recipe, out_dir: Path) -> Path:
    video = out_dir / "parts.mp4"
    if not (video.exists() and synth.sidecar_path(video).exists()):
        synth.write_video(video, recipe.seeds["video"], recipe.video_parts, recipe.video_frames_per_part)
    return video


def recipe_by_name(name: str) -> Recipe:
    return {"full": FULL, "tiny": TINY}[name]


def describe(recipe: Recipe) -> Dict:
    d = asdict(recipe)
    d["arch"] = asdict(recipe.arch)
    return d


def package_stage(recipe: Recipe, work: Path, checkpoint: Path, package_dir: Path) -> Path:
    """Export, quantize (calibration images from the training set), convert, verify, pack."""
    import numpy as np

    from edged.models import build, dataset  # paddle-side, imported only here

    labels = list(synth.LABELS)
    train = dataset.load(work / "data" / "train", recipe.image_size, labels)
    pick = np.random.default_rng(recipe.seeds["train"]).permutation(len(train))[:recipe.calibration_images]
    calibration = dataset.ImageSet(train.images[pick], train.labels[pick], labels)
    test = dataset.load(work / "data" / "test", recipe.image_size, labels)
    training = build.training_summary(*(work / f"stage{i}" for i in range(1, len(recipe.stages) + 1)))
    training["recipe"] = describe(recipe)
    build.export_package(checkpoint, recipe.arch, labels, recipe.image_size, calibration, test,
                         recipe.name, recipe.version, work, package_dir, training)
    return package_dir


def run(recipe: Recipe, work: Path, out: Path, progress: bool = True) -> Path:
    """The whole recipe into `out/<name>/` and `out/sample/`; returns the package directory."""
    checkpoint = train_stages(recipe, work, progress)
    package_dir = package_stage(recipe, work, checkpoint, out / recipe.name)
    video_stage(recipe, out / "sample")
    return package_dir
