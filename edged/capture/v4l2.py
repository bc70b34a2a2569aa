"""A V4L2 camera through OpenCV's V4L2 backend.

The format is negotiated explicitly: with the driver's default (vivid's `BGR3`, for
one) OpenCV can hand back a flat `(1, N)` buffer instead of an HxWx3 image
(PLATFORM.md), so every frame's shape is checked and converted or rejected.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np

from edged.capture.sources import RawFrame, Source, SourceError


class V4l2Source(Source):
    """`v4l2:/dev/videoN`; fourcc, size and fps are requested, then verified per frame."""

    live = True

    def __init__(self, uri: str, path: str, fourcc: str = "", width: int = 0, height: int = 0,
                 fps: float = 0.0, capture_factory: Callable[..., Any] = cv2.VideoCapture) -> None:
        super().__init__(uri)
        if fourcc and len(fourcc) != 4:
            raise ValueError(f"fourcc '{fourcc}' must be four characters")
        self.path, self.fourcc = path, fourcc.upper()
        self.width, self.height, self.fps = width, height, fps
        self._factory = capture_factory
        self._cap: Optional[Any] = None

    def open(self) -> None:
        self.close()
        if not os.path.exists(self.path):
            raise SourceError(f"{self.path}: no such device")
        cap = self._factory(self.path, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: cannot open (busy, or not a capture device?)")
        if self.fourcc:  # empty = the driver's default (checked per frame below)
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not a queue of old ones
        self._cap = cap

    def read(self, stop: threading.Event) -> RawFrame:
        if self._cap is None:
            raise SourceError(f"{self.path}: not open")
        ok, image = self._cap.read()
        t_capture = time.monotonic()
        if not ok or image is None:
            raise SourceError(f"{self.path}: read failed (unplugged?)")
        return RawFrame(image=self._to_bgr(image), t_capture=t_capture)

    def _to_bgr(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 BGR uint8 or SourceError: the driver's format is not what we asked for."""
        if image.dtype != np.uint8:
            raise SourceError(f"{self.path}: frames are {image.dtype}, expected uint8")
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        if image.ndim == 3 and image.shape[2] == 4:
            return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if image.ndim == 2 and image.shape[0] > 1 and image.shape[1] > 1:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        flat = image.reshape(-1)
        width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) if self._cap is not None else 0
        height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) if self._cap is not None else 0
        if width and height and flat.size == width * height * 3:
            return flat.reshape(height, width, 3)  # packed 24-bit BGR delivered unconverted
        if flat.size >= 2 and flat[0] == 0xFF and flat[1] == 0xD8:
            decoded = cv2.imdecode(flat, cv2.IMREAD_COLOR)  # MJPG delivered undecoded
            if decoded is not None:
                return decoded
        raise SourceError(f"{self.path}: camera delivered a {image.shape} buffer, not an HxWx3 image; "
                          f"set fourcc=MJPG or fourcc=YUYV in the source URI")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
