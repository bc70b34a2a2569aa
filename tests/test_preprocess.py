"""Preprocessing equals a straightforward numpy reference of docs/architecture.md."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edged.engine.preprocess import Preprocessor, resized_size
from edged.models.package import Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def spec(order: str = "RGB", size: int = 224, short: int = 256) -> Preprocess:
    return Preprocess(height=size, width=size, resize_short=short, channel_order=order,
                      mean=MEAN, std=STD)


def reference(image: np.ndarray, s: Preprocess) -> np.ndarray:
    """Steps 1-4 written out plainly: one-shot INTER_AREA resize, crop, order, normalise."""
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, s.resize_short)
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - s.height) // 2, (nw - s.width) // 2
    crop = image[top:top + s.height, left:left + s.width].astype(np.float64)
    if s.channel_order == "RGB":
        crop = crop[:, :, ::-1]
    out = (crop / 255.0 - np.array(s.mean)) / np.array(s.std)
    return out.transpose(2, 0, 1).astype(np.float32)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def grey_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) * (255 * np.array(STD, dtype=np.float32)).reshape(3, 1, 1)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("shape", [(256, 256), (256, 300), (400, 500), (512, 640)])
def test_preprocess_equals_reference_when_resize_is_exact(order, shape):
    """No resize, a shrink below 2x (one-shot INTER_AREA) or exactly 2x (box)."""
    s = spec(order)
    image = smooth_image(*shape)
    np.testing.assert_allclose(Preprocessor(s)(image), reference(image, s), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(1080, 1920), (1920, 1080), (720, 1280), (2160, 3840)])
def test_preprocess_large_frames_stay_within_a_grey_level_or_so_of_one_shot_area(shape):
    s = spec()
    image = smooth_image(*shape, seed=3)
    diff = grey_levels(Preprocessor(s)(image), reference(image, s))
    assert diff.mean() < 1.5 and diff.max() < 12


def test_preprocess_upscales_small_frames_linearly():
    s = spec()
    image = smooth_image(120, 160)
    np.testing.assert_allclose(Preprocessor(s)(image), reference(image, s), rtol=0, atol=1e-5)


def test_preprocess_writes_into_the_given_buffer():
    s = spec()
    shared = np.zeros((3, 224, 224), dtype=np.float32)
    result = Preprocessor(s)(smooth_image(480, 640), shared)
    assert result is shared and shared.any()


def test_preprocess_rejects_non_bgr_images():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Preprocessor(spec())(np.zeros((1, 921600), dtype=np.uint8))


def test_resized_size_keeps_aspect_and_short_side():
    assert resized_size(1080, 1920, 256) == (256, 455)
    assert resized_size(1920, 1080, 256) == (455, 256)
    assert resized_size(256, 256, 256) == (256, 256)
