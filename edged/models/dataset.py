"""Class-per-folder image datasets, loaded into memory for fast CPU training.

`root/<label>/*.jpg|png|bmp` -> uint8 RGB arrays at a fixed square size plus
integer labels. Every way the folder can be wrong is a `DatasetError` with one
sentence, raised before any training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edged.engine.preprocess import Preprocessor
from edged.errors import UserError
from edged.models.package import Preprocess

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(UserError):
    """The dataset folder cannot be used as given."""


@dataclass
class ImageSet:
    images: np.ndarray  # N x S x S x 3 uint8, RGB
    labels: np.ndarray  # N int64
    classes: List[str]

    def __len__(self) -> int:
        return len(self.labels)


def scan(root: Path, classes: Optional[Sequence[str]] = None) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """(path, class index) pairs and the class list (sorted folder names unless given)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found or not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"{root}: no class folders (expected {root}/<label>/<images>)")
    classes = list(classes) if classes else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{root}: folders {unknown} are not among the model's classes {classes}")
    items = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{root}: class '{name}' has no images")
        items.extend((path, index) for path in files)
    return items, classes


def load(root: Path, size: int, classes: Optional[Sequence[str]] = None,
         progress: Optional[Callable[[int], None]] = None) -> ImageSet:
    """Decode, resize (short side) and centre-crop every image to size x size RGB."""
    items, names = scan(root, classes)
    # The daemon's own resize and crop, so a model trains on what it will see in service.
    crop = Preprocessor(Preprocess(height=size, width=size, resize_short=size, channel_order="BGR",
                                   mean=IMAGENET_MEAN, std=IMAGENET_STD)).crop
    images = np.empty((len(items), size, size, 3), np.uint8)
    labels = np.empty(len(items), np.int64)
    for i, (path, label) in enumerate(items):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{path}: cannot be decoded as an image")
        images[i] = cv2.cvtColor(crop(bgr), cv2.COLOR_BGR2RGB)
        labels[i] = label
        if progress:
            progress(1)
    return ImageSet(images, labels, names)


def to_tensor(rgb_batch: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """N x H x W x 3 uint8 RGB -> N x 3 x H x W float32, normalised as the manifest says."""
    x = rgb_batch.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
