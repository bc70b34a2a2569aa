"""Training and fine-tuning a RegNet on a class-per-folder dataset (imports paddle).

The small-data recipe industrial users rely on: cosine learning rate with linear
warmup, label smoothing, optional Mixup/CutMix, flips and right-angle rotations
(surfaces have no "up"), fine-tuning from a checkpoint with the stem and the
first N stages frozen. Checkpoints after every epoch make a run resumable; the
seed fixes initialisation, shuffling and augmentation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from edged.errors import UserError
from edged.models import regnet
from edged.models.dataset import ImageSet, to_tensor
from edged.models.regnet_paddle import RegNet

log = logging.getLogger(__name__)
CHECKPOINT = "last.pdparams"
OPTIMIZER = "last.pdopt"
STATE = "train_state.json"


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not fit the architecture."""


@dataclass
class TrainConfig:
    arch: Dict  # regnet.RegNetParams as a dict
    classes: List[str]
    resolution: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0   # Beta(alpha, alpha); 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 disables
    freeze_stages: int = 0
    seed: int = 0
    extra: Dict = field(default_factory=dict)

    def params(self) -> regnet.RegNetParams:
        return regnet.RegNetParams(**self.arch)


def build_model(cfg: TrainConfig) -> RegNet:
    paddle.seed(cfg.seed)
    return RegNet(cfg.params(), len(cfg.classes))


def load_weights(model: RegNet, path: Path, skip_head: bool = False) -> None:
    """Load a `.pdparams`; with `skip_head` the classifier is left fresh (new label set)."""
    try:
        state = paddle.load(str(path))
    except Exception as exc:  # paddle raises many types for a bad file
        raise CheckpointError(f"{path}: cannot be read as a Paddle checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a Paddle state dict")
    own = model.state_dict()
    if skip_head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    mismatched = [k for k, v in state.items() if k in own and list(v.shape) != list(own[k].shape)]
    missing = [k for k in own if k not in state and not (skip_head and k.startswith("fc."))]
    if mismatched or missing:
        raise CheckpointError(f"{path}: does not fit this architecture "
                              f"({len(missing)} missing, {len(mismatched)} wrong-shaped tensors)")
    model.set_state_dict(state)


class Trainer:
    """One training run in `out_dir`; `fit()` resumes from the last checkpoint there."""

    def __init__(self, cfg: TrainConfig, train: ImageSet, val: Optional[ImageSet], out_dir: Path,
                 init_from: Optional[Path] = None, keep_head: bool = False):
        self.cfg, self.train_set, self.val_set, self.out = cfg, train, val, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model = build_model(cfg)
        if init_from:
            load_weights(self.model, init_from, skip_head=not keep_head)
        if cfg.freeze_stages:
            self.model.freeze(cfg.freeze_stages)
        self.steps_per_epoch = max(1, len(train) // cfg.batch_size)
        total = self.steps_per_epoch * cfg.epochs
        warmup = int(self.steps_per_epoch * cfg.warmup_epochs)
        cosine = paddle.optimizer.lr.CosineAnnealingDecay(cfg.lr, T_max=max(1, total - warmup))
        self.schedule = paddle.optimizer.lr.LinearWarmup(cosine, warmup, cfg.lr * 0.01, cfg.lr) if warmup else cosine
        trainable = [p for p in self.model.parameters() if not p.stop_gradient]
        self.optimizer = paddle.optimizer.AdamW(self.schedule, parameters=trainable,
                                                weight_decay=cfg.weight_decay)
        self.epoch, self.history = 0, []

    def fit(self, progress: bool = True) -> Dict:
        self._resume()
        while self.epoch < self.cfg.epochs:
            started = time.time()
            loss = self._train_epoch(progress)
            self.epoch += 1
            record = {"epoch": self.epoch, "loss": round(loss, 4), "seconds": round(time.time() - started, 1)}
            if self.val_set is not None:
                record["val_top1"] = round(evaluate(self.model, self.val_set, self.cfg.resolution), 4)
            self.history.append(record)
            log.info("epoch %d/%d %s", self.epoch, self.cfg.epochs, record)
            self._save()
        return {"history": self.history, "checkpoint": str(self.out / CHECKPOINT)}

    def _train_epoch(self, progress: bool) -> float:
        rng = np.random.default_rng([self.cfg.seed, self.epoch])
        order = rng.permutation(len(self.train_set))
        self.model.train()
        losses = []
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   disable=not progress, leave=False)
        for step in bar:
            idx = order[step * self.cfg.batch_size:(step + 1) * self.cfg.batch_size]
            x, y = self._batch(rng, idx)
            loss = -(y * F.log_softmax(self.model(x), axis=1)).sum(axis=1).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()
            self.schedule.step()
            losses.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return float(np.mean(losses))

    def _batch(self, rng: np.random.Generator, idx: np.ndarray):
        images = augment(rng, self.train_set.images[idx])
        n_classes = len(self.cfg.classes)
        smooth = self.cfg.label_smoothing
        targets = np.full((len(idx), n_classes), smooth / n_classes, np.float32)
        targets[np.arange(len(idx)), self.train_set.labels[idx]] += 1 - smooth
        x = to_tensor(images)
        x, targets = mix(rng, x, targets, self.cfg.mixup, self.cfg.cutmix)
        if x.shape[-1] != self.cfg.resolution:
            x = F.interpolate(paddle.to_tensor(x), size=[self.cfg.resolution] * 2, mode="bilinear").numpy()
        return paddle.to_tensor(x), paddle.to_tensor(targets)

    def _save(self) -> None:
        paddle.save(self.model.state_dict(), str(self.out / CHECKPOINT))
        paddle.save(self.optimizer.state_dict(), str(self.out / OPTIMIZER))
        state = {"epoch": self.epoch, "history": self.history, "config": asdict(self.cfg)}
        tmp = self.out / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.out / STATE)

    def _resume(self) -> None:
        state_file = self.out / STATE
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        if state.get("config") != asdict(self.cfg):
            raise CheckpointError(f"{self.out}: holds a run with other settings; use a new --out")
        load_weights(self.model, self.out / CHECKPOINT)
        self.optimizer.set_state_dict(paddle.load(str(self.out / OPTIMIZER)))
        self.epoch, self.history = state["epoch"], state["history"]
        log.info("resuming %s at epoch %d", self.out, self.epoch)


def augment(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Flips, right-angle rotations and brightness/contrast jitter on a uint8 NHWC batch."""
    out = images.copy()
    for i in range(len(out)):
        img = np.rot90(out[i], int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
        out[i] = np.clip(img.astype(np.float32) * gain + bias, 0, 255)
    return out


def mix(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, mixup: float, cutmix: float):
    """Mixup or CutMix (one per batch, chosen at random) on normalised NCHW inputs."""
    choices = [kind for kind, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not choices:
        return x, y
    kind = choices[int(rng.integers(0, len(choices)))]
    lam = float(rng.beta(mixup if kind == "mixup" else cutmix, mixup if kind == "mixup" else cutmix))
    perm = rng.permutation(len(x))
    if kind == "mixup":
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    h, w = x.shape[2:]
    ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.copy()
    x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, lam * y + (1 - lam) * y[perm]


@paddle.no_grad()
def predict(model: RegNet, images: ImageSet, resolution: int, batch: int = 64) -> np.ndarray:
    """Logits for every image, in eval mode."""
    model.eval()
    outs = []
    for start in range(0, len(images), batch):
        x = to_tensor(images.images[start:start + batch])
        t = paddle.to_tensor(x)
        if x.shape[-1] != resolution:
            t = F.interpolate(t, size=[resolution] * 2, mode="bilinear")
        outs.append(model(t).numpy())
    return np.concatenate(outs)


def evaluate(model: RegNet, images: ImageSet, resolution: int) -> float:
    return float((predict(model, images, resolution).argmax(1) == images.labels).mean())
