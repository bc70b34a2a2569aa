"""A procedural, seeded generator of industrial surface-inspection images.

Six classes on brushed metal, plastic and PCB textures, with lighting, rotation,
scale, noise, blur and compression varied per image. Every quantity is relative
to the image size, so one part renders identically at 128 px or 1080 px. Image i
of a given seed is always the same picture: `render(seed, i)` needs no state.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

LABELS = ["ok", "scratch", "spot", "crack", "hole", "stain"]
MATERIALS = ("metal", "plastic", "pcb")

Image = np.ndarray  # HxWx3 uint8 BGR


# --- textures -----------------------------------------------------------------

def _metal(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(105, 185)
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    k = max(3, int(size * rng.uniform(0.08, 0.2)) | 1)
    streaks = cv2.blur(noise, (k, 1)) * rng.uniform(25, 45)
    centre = (size / 2, size / 2)
    streaks = cv2.warpAffine(streaks, cv2.getRotationMatrix2D(centre, rng.uniform(0, 180), 1.0),
                             (size, size), borderMode=cv2.BORDER_REFLECT)
    tint = np.array([rng.uniform(0.95, 1.05), 1.0, rng.uniform(0.92, 1.02)], np.float32)
    return (base + streaks)[..., None] * tint


def _plastic(rng: np.random.Generator, size: int) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(40, 200), rng.integers(90, 220)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 160 + 0.5)
    return colour[None, None, :] + (grain * rng.uniform(5, 12))[..., None]


def _pcb(rng: np.random.Generator, size: int) -> np.ndarray:
    board = np.array([rng.uniform(30, 70), rng.uniform(90, 140), rng.uniform(20, 60)], np.float32)
    if rng.random() < 0.25:  # blue solder mask
        board = board[[1, 0, 2]] * np.float32([1.0, 0.6, 0.8])
    img = np.empty((size, size, 3), np.float32)
    img[:] = board
    trace = tuple(float(c) for c in np.clip(board * 1.5 + 25, 0, 255))
    pitch = size / rng.uniform(6, 12)
    for _ in range(int(rng.integers(4, 10))):
        pos = int(rng.integers(0, size // int(pitch) + 1) * pitch + pitch / 2)
        width = max(1, int(size * rng.uniform(0.012, 0.03)))
        a, b = sorted(rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.line(img, (int(a), pos), (int(b), pos), trace, width)
        else:
            cv2.line(img, (pos, int(a)), (pos, int(b)), trace, width)
    pad = (40.0, 150.0, 190.0)  # tinned copper
    for _ in range(int(rng.integers(2, 8))):
        x, y = rng.integers(0, size, 2)
        r = max(2, int(size * rng.uniform(0.015, 0.03)))
        cv2.rectangle(img, (int(x - r), int(y - r)), (int(x + r), int(y + r)), pad, -1)
    return img + rng.normal(0, 3, (size, size, 1)).astype(np.float32)


TEXTURES: Dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "metal": _metal, "plastic": _plastic, "pcb": _pcb}


# --- defects --------------------------------------------------------------------

def _centre_point(rng: np.random.Generator, img: np.ndarray, size: float, spread: float) -> np.ndarray:
    """A point near the middle of the canvas, within `spread` x the visible size."""
    return img.shape[0] / 2 + rng.uniform(-spread, spread, 2) * size


def _shade(rng: np.random.Generator, img: np.ndarray, dark: bool) -> Tuple[float, float, float]:
    level = float(img.mean())
    value = level * rng.uniform(0.15, 0.45) if dark else min(255.0, level * rng.uniform(1.5, 2.0) + 50)
    return (value, value, value)


def _scratch(rng, img, size):
    """One to three long, smooth, thin lines."""
    for _ in range(int(rng.integers(1, 4))):
        centre = _centre_point(rng, img, size, 0.12)
        angle = rng.uniform(0, np.pi)
        half = size * rng.uniform(0.22, 0.4)
        bend = rng.uniform(-0.06, 0.06) * size
        t = np.linspace(-1, 1, 24)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        pts = centre + np.outer(t * half, direction) + np.outer(bend * (1 - t ** 2), normal)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, _shade(rng, img, rng.random() < 0.5),
                      max(1, int(size * rng.uniform(0.012, 0.022))), cv2.LINE_AA, shift=4)


def _spot(rng, img, size):
    """A cluster of small round dots."""
    centre = _centre_point(rng, img, size, 0.15)
    colour = _shade(rng, img, dark=True)
    for _ in range(int(rng.integers(4, 12))):
        p = centre + rng.normal(0, size * 0.09, 2)
        r = size * rng.uniform(0.015, 0.032)
        cv2.circle(img, tuple(np.round(p * 16).astype(int)), int(r * 16), colour, -1, cv2.LINE_AA, shift=4)


def _crack(rng, img, size):
    """A jagged random walk with a branch or two: dark and irregular, unlike a scratch."""
    colour = _shade(rng, img, dark=True)
    thickness = max(1, int(size * rng.uniform(0.01, 0.018)))
    start = _centre_point(rng, img, size, 0.1)
    heading = rng.uniform(0, 2 * np.pi)
    for branch in range(int(rng.integers(1, 3)) + 1):
        pts = [start]
        steps = int(rng.integers(12, 20)) if branch == 0 else int(rng.integers(5, 10))
        for _ in range(steps):
            heading += rng.uniform(-0.9, 0.9)
            pts.append(pts[-1] + size * rng.uniform(0.025, 0.045) * np.array([np.cos(heading), np.sin(heading)]))
        cv2.polylines(img, [np.round(np.array(pts) * 16).astype(np.int32)], False, colour, thickness,
                      cv2.LINE_AA, shift=4)
        start = pts[len(pts) // 2]
        heading += rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.3)


def _hole(rng, img, size):
    """A single drilled-through hole: dark core with a lit rim on one side."""
    centre = _centre_point(rng, img, size, 0.18)
    r = size * rng.uniform(0.05, 0.1)
    light = rng.uniform(0, 2 * np.pi)
    offset = np.array([np.cos(light), np.sin(light)]) * r * 0.18
    bright = _shade(rng, img, dark=False)
    to_px = lambda p: tuple(np.round(p * 16).astype(int))  # noqa: E731
    cv2.circle(img, to_px(centre - offset), int(r * 1.12 * 16), bright, -1, cv2.LINE_AA, shift=4)
    depth = rng.uniform(8, 30)
    cv2.circle(img, to_px(centre), int(r * 16), (depth, depth, depth), -1, cv2.LINE_AA, shift=4)


def _stain(rng, img, size):
    """A large, soft, semi-transparent discoloured blob."""
    mask = np.zeros(img.shape[:2], np.float32)
    centre = _centre_point(rng, img, size, 0.1)
    for _ in range(int(rng.integers(3, 7))):
        p = centre + rng.normal(0, size * 0.05, 2)
        axes = (int(size * rng.uniform(0.09, 0.2)), int(size * rng.uniform(0.07, 0.15)))
        cv2.ellipse(mask, tuple(np.round(p).astype(int)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), size * 0.03)[..., None]
    colour = np.array([rng.uniform(10, 60), rng.uniform(40, 110), rng.uniform(60, 140)], np.float32)
    alpha = rng.uniform(0.35, 0.6)
    img[:] = img * (1 - alpha * mask) + colour * (alpha * mask)


DEFECTS: Dict[str, Optional[Callable]] = {
    "ok": None, "scratch": _scratch, "spot": _spot, "crack": _crack, "hole": _hole, "stain": _stain}


# --- the camera -------------------------------------------------------------------

def _camera(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Lighting gradient, exposure, sensor noise and focus blur."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy)
    vignette = 1 - rng.uniform(0, 0.35) * (xx ** 2 + yy ** 2)
    img = img * (gradient * vignette)[..., None] * rng.uniform(0.75, 1.2)
    img = img + rng.normal(0, rng.uniform(1, 7), img.shape).astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), size / 224 * rng.uniform(0.3, 1.2))
    return np.clip(img, 0, 255).astype(np.uint8)


def render(seed: int, index: int, size: int = 224, label: Optional[str] = None) -> Tuple[Image, str]:
    """Image `index` of the set named by `seed`: (BGR uint8 size x size, label).

    Without `label` the class cycles through LABELS so every set is balanced.
    """
    rng = np.random.default_rng([seed, index])
    label = label or LABELS[index % len(LABELS)]
    material = MATERIALS[int(rng.integers(0, len(MATERIALS)))]
    pad = int(size * 0.45)  # render larger, then rotate and scale into view
    big = size + 2 * pad
    img = TEXTURES[material](rng, big).astype(np.float32)
    defect = DEFECTS[label]
    if defect is not None:
        defect(rng, img, size)  # geometry relative to the visible square
    zoom = rng.uniform(0.85, 1.25)
    matrix = cv2.getRotationMatrix2D((big / 2, big / 2), rng.uniform(0, 360), zoom)
    matrix[:, 2] -= pad
    img = cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _camera(rng, img, size), label


def write_dataset(out: Path, seed: int, per_class: int, size: int = 224,
                  progress: Optional[Callable[[int], None]] = None) -> Dict[str, int]:
    """Write a class-per-folder JPEG dataset: out/<label>/<seed>_<index>.jpg."""
    counts = {label: 0 for label in LABELS}
    for label in LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
    for index in range(per_class * len(LABELS)):
        img, label = render(seed, index, size)
        quality = int(np.random.default_rng([seed, index, 7]).integers(55, 96))
        cv2.imwrite(str(out / label / f"{seed}_{index:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        counts[label] += 1
        if progress:
            progress(1)
    return counts


# --- the sample video ---------------------------------------------------------------

def video_frames(seed: int, parts: int, frames_per_part: int, width: int = 640,
                 height: int = 360) -> Iterator[Tuple[Image, str]]:
    """Parts passing under a camera: each fills the centre square for a few frames and drifts.

    The model's centre crop sees the part alone, so every frame has one true label.
    """
    side = height + height // 8  # part a little larger than the crop, room to drift
    belt = _belt(width, height)
    for part in range(parts):
        rng = np.random.default_rng([seed, part, 99])
        img, label = render(seed, part, side, label=LABELS[int(rng.integers(0, len(LABELS)))])
        for f in range(frames_per_part):
            frame = np.roll(belt, -(part * frames_per_part + f) * 6, axis=1).copy()
            shift = int((f / max(1, frames_per_part - 1) - 0.5) * (side - height) * 0.9)
            x0 = (width - side) // 2 + shift
            y0 = (height - side) // 2
            visible = img[-y0:-y0 + height] if y0 < 0 else img
            frame[:, x0:x0 + side] = visible[:, : width - x0] if x0 + side > width else visible
            yield frame, label


def _belt(width: int, height: int) -> Image:
    rng = np.random.default_rng(12345)
    belt = cv2.GaussianBlur(rng.normal(45, 10, (height, width)).astype(np.float32), (0, 0), 1.5)
    belt[:, ::40] *= 0.6  # belt seams so motion is visible
    return cv2.cvtColor(np.clip(belt, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def write_video(path: Path, seed: int, parts: int = 45, frames_per_part: int = 8, fps: float = 15.0,
                width: int = 640, height: int = 360) -> List[str]:
    """Render the sample video (mp4v) and its sidecar `<stem>.labels.csv` (frame,label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (mp4v)")
    labels = []
    for frame, label in video_frames(seed, parts, frames_per_part, width, height):
        writer.write(frame)
        labels.append(label)
    writer.release()
    with open(sidecar_path(path), "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["frame", "label"])
        out.writerows(enumerate(labels))
    return labels


def sidecar_path(video: Path) -> Path:
    return video.with_name(video.stem + ".labels.csv")


def read_sidecar(video: Path) -> List[str]:
    with open(sidecar_path(video), newline="") as fh:
        return [row["label"] for row in csv.DictReader(fh)]
