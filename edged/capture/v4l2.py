"""A V4L2 camera through OpenCV's V4L2 backend.

The format is negotiated explicitly: with the driver's default (vivid's `BGR3`, for
one) OpenCV can hand back a flat `(1, N)` buffer instead of an HxWx3 image
(PLATFORM.md), so every frame's shape is checked and converted or rejected. Without
a configured fourcc, one is picked from what the device offers (`v4l2-ctl`), in the
order of PREFERENCE: MJPG is cheap on USB bandwidth, YUYV is what most cameras and
drivers have. Controls from `[source.controls]` are applied at every open, so a
replugged camera gets them back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np

from edged.capture import controls as camera_controls
from edged.capture import v4l2ctl
from edged.capture.sources import RawFrame, Source, SourceError

log = logging.getLogger(__name__)

# Formats tried first, then the others the device offers, in the device's order.
PREFERENCE = ("MJPG", "YUYV")
# Formats OpenCV's V4L2 backend converts to BGR itself (others come back raw).
CONVERTED = ("MJPG", "JPEG", "YUYV", "UYVY", "YU12", "YV12", "NV12", "NV21", "RGB3", "BGR3",
             "GREY", "Y16 ")


def fourcc_text(code: float) -> str:
    """OpenCV's numeric CAP_PROP_FOURCC as its four characters."""
    number = int(code) & 0xFFFFFFFF
    return bytes((number >> s) & 0xFF for s in (0, 8, 16, 24)).decode("latin-1")


def format_candidates(requested: str, formats: Sequence[v4l2ctl.PixelFormat],
                      width: int = 0, height: int = 0) -> List[str]:
    """Fourccs to try in order: the requested one if offered (or nothing is known),
    else MJPG, YUYV, then the rest of what the device offers; among those, formats
    that offer the requested size come first."""
    offered = [f.fourcc for f in formats]
    if requested and (requested in offered or not offered):
        return [requested]
    if not offered:
        return list(PREFERENCE)
    ranked = [f for f in PREFERENCE if f in offered]
    ranked += [f for f in offered if f in CONVERTED and f not in ranked]
    ranked += [f for f in offered if f not in ranked]
    if width and height:
        by_code = {f.fourcc: f for f in formats}
        ranked.sort(key=lambda code: not by_code[code].offers(width, height))  # stable
    return ranked


class V4l2Source(Source):
    """`v4l2:/dev/videoN`; fourcc, size and fps are requested, then verified per frame."""

    live = True

    def __init__(self, uri: str, path: str, fourcc: str = "", width: int = 0, height: int = 0,
                 fps: float = 0.0, controls: Optional[Mapping[str, Any]] = None,
                 capture_factory: Callable[..., Any] = cv2.VideoCapture) -> None:
        super().__init__(uri)
        if fourcc and len(fourcc) != 4:
            raise ValueError(f"fourcc '{fourcc}' must be four characters")
        self.path, self.fourcc = path, fourcc.upper()
        self.width, self.height, self.fps = width, height, fps
        self.control_steps = camera_controls.plan(controls or {})  # ValueError if bad
        self._factory = capture_factory
        self._cap: Optional[Any] = None
        self._negotiated: Dict[str, Any] = {}

    def open(self) -> None:
        self.close()
        if not os.path.exists(self.path):
            raise SourceError(f"{self.path}: no such device")
        cap = self._factory(self.path, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: cannot open (busy, or not a capture device?)")
        fourcc = self._set_format(cap, self._formats())
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not a queue of old ones
        self._cap = cap
        report = camera_controls.apply(self.path, self.control_steps)
        self._negotiated = {"fourcc": fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)) or fourcc,
                            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                            "fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 3),
                            "requested": {"fourcc": self.fourcc, "width": self.width,
                                          "height": self.height, "fps": self.fps}}
        if self.control_steps:
            self._negotiated["controls"] = report.to_dict()
        log.info("%s: negotiated %s %dx%d at %.3g fps", self.path, self._negotiated["fourcc"],
                 self._negotiated["width"], self._negotiated["height"], self._negotiated["fps"])

    def _formats(self) -> List[v4l2ctl.PixelFormat]:
        """What the device offers; empty when v4l2-ctl is missing or fails."""
        try:
            return v4l2ctl.list_formats(self.path)
        except v4l2ctl.V4l2CtlError as exc:
            log.debug("%s: formats not listed: %s", self.path, exc)
            return []

    def _set_format(self, cap: Any, formats: List[v4l2ctl.PixelFormat]) -> str:
        """Request each candidate fourcc until the driver keeps one; returns the last tried."""
        candidates = format_candidates(self.fourcc, formats, self.width, self.height)
        if self.fourcc and candidates[0] != self.fourcc:
            log.warning("%s does not offer %s (it offers %s); trying %s", self.path, self.fourcc,
                        ", ".join(f.fourcc for f in formats), ", ".join(candidates))
        for code in candidates:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*code))
            if self.width and self.height:  # set after the format: sizes depend on it
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            if fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)) == code:
                return code
        return candidates[-1]

    def negotiated(self) -> Dict[str, Any]:
        return dict(self._negotiated)

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
