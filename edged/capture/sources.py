"""Frame sources by URI: `v4l2:`, `file:` and `synthetic:`.

A source opens, reads one BGR uint8 HxWx3 image at a time and closes. It does not
retry: failure raises `SourceError` and the capture thread decides when to reopen.
Pacing (a file played at its own frame rate, a synthetic camera at its fps) lives
here so the capture thread stays the same for every kind of source.

    v4l2:/dev/video0?fourcc=MJPG&width=1280&height=720&fps=30
    file:/data/parts.mp4?loop=0&rate=max        (or an image folder; ?fps=N for folders)
    synthetic:1920x1080@30?mjpg=1                (@0 or ?rate=max: as fast as consumed)
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

import cv2
import numpy as np

from edged.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SCHEMES = ("v4l2", "file", "synthetic")
PARAMS = {"v4l2": {"fourcc", "width", "height", "fps"},
          "file": {"loop", "rate", "fps"},
          "synthetic": {"mjpg", "quality", "rate"}}


class SourceUriError(UserError):
    """The source URI cannot be understood (a user mistake, found at start)."""


class SourceError(Exception):
    """The source failed to open or read; the capture thread reopens it later."""


class CorruptFrame(SourceError):
    """One frame could not be decoded; the next may be fine, so nothing is reopened."""


class EndOfStream(Exception):
    """A non-looping file ran out of frames."""


@dataclass
class RawFrame:
    image: np.ndarray
    t_capture: float  # time.monotonic() at arrival, before any decoding
    decode_ms: float = 0.0
    pos: int = -1  # frame index inside a file, -1 otherwise


class Pacer:
    """Sleeps until the next frame is due at `fps`; fps <= 0 means never wait."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._next = 0.0

    def wait(self, stop: threading.Event) -> None:
        if self.fps <= 0:
            return
        now = time.monotonic()
        if self._next <= now:
            self._next = now  # late (or first frame): do not try to catch up
        else:
            stop.wait(self._next - now)
        self._next += 1.0 / self.fps


class Source:
    """Base class: `open()`, `read(stop)`, `close()`; `live` picks drop vs. block."""

    live = True

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def open(self) -> None:
        raise NotImplementedError

    def read(self, stop: threading.Event) -> RawFrame:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def negotiated(self) -> Dict[str, Any]:
        """What the device agreed to at the last open (format, size, fps, controls);
        empty for sources without a negotiation. Reported in status and telemetry."""
        return {}


def parse_uri(uri: str) -> Tuple[str, str, Dict[str, str]]:
    """Split `scheme:path?k=v` and reject unknown schemes and parameters."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in SCHEMES:
        raise SourceUriError(f"source '{uri}': must start with one of {', '.join(s + ':' for s in SCHEMES)}")
    path, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - PARAMS[scheme])
    if unknown:
        raise SourceUriError(f"source '{uri}': unknown parameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(PARAMS[scheme]))})")
    if not path:
        raise SourceUriError(f"source '{uri}': missing path after '{scheme}:'")
    return scheme, path, params


def open_source(uri: str, defaults: Optional[Dict[str, Any]] = None) -> Source:
    """Build (not open) the source for `uri`; `defaults` fill v4l2 width/height/fps/fourcc
    and `controls` (the config's `[source.controls]` table)."""
    scheme, path, params = parse_uri(uri)
    try:
        if scheme == "file":
            return FileSource(uri, path, loop=params.get("loop", "1") not in ("0", "false", "no"),
                              max_rate=params.get("rate") == "max", fps=float(params.get("fps", 0)))
        if scheme == "synthetic":
            return _synthetic_from(uri, path, params)
        from edged.capture.v4l2 import V4l2Source
        merged = {k: v for k, v in (defaults or {}).items() if v not in (None, "", 0)}
        merged.update(params)
        return V4l2Source(uri, path, fourcc=str(merged.get("fourcc", "")),
                          width=int(merged.get("width", 0)), height=int(merged.get("height", 0)),
                          fps=float(merged.get("fps", 0)), controls=merged.get("controls") or {})
    except ValueError as exc:
        raise SourceUriError(f"source '{uri}': bad parameter value ({exc})") from None


def _synthetic_from(uri: str, spec: str, params: Dict[str, str]) -> "SyntheticSource":
    match = re.fullmatch(r"(\d+)x(\d+)(?:@(\d+(?:\.\d+)?))?", spec)
    if not match:
        raise SourceUriError(f"source '{uri}': expected synthetic:WIDTHxHEIGHT@FPS")
    width, height = int(match.group(1)), int(match.group(2))
    fps = float(match.group(3) or 30)
    if params.get("rate") == "max":
        fps = 0.0
    return SyntheticSource(uri, width, height, fps, mjpg=params.get("mjpg", "0") in ("1", "true", "yes"),
                           quality=int(params.get("quality", 90)))


class FileSource(Source):
    """A video file or a folder of images; loops unless told not to."""

    def __init__(self, uri: str, path: str, loop: bool = True, max_rate: bool = False,
                 fps: float = 0.0) -> None:
        super().__init__(uri)
        self.path = Path(path)
        self.loop = loop
        self.max_rate = max_rate
        self.live = not max_rate
        self._fps = fps
        self._cap: Optional[cv2.VideoCapture] = None
        self._images: List[Path] = []
        self._pos = 0
        self._pacer = Pacer(0)

    def open(self) -> None:
        self.close()
        if self.path.is_dir():
            self._images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise SourceError(f"{self.path}: folder has no images")
            fps = self._fps or 10.0
        elif self.path.is_file() and os.access(self.path, os.R_OK):
            self._cap = cv2.VideoCapture(str(self.path))
            if not self._cap.isOpened():
                raise SourceError(f"{self.path}: cannot open video")
            fps = self._fps or self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        else:
            raise SourceError(f"{self.path}: file not found or unreadable")
        self._pos = 0
        self._pacer = Pacer(0 if self.max_rate else fps)

    def read(self, stop: threading.Event) -> RawFrame:
        self._pacer.wait(stop)
        image = self._next_image()
        if image is None:
            if self._pos == 0:
                raise SourceError(f"{self.path}: no frames could be read")
            if not self.loop:
                raise EndOfStream(str(self.path))
            self.open()  # rewinds; raises SourceError if the file has gone
            image = self._next_image()
            if image is None:
                raise SourceError(f"{self.path}: no frames could be read")
        frame = RawFrame(image=image, t_capture=time.monotonic(), pos=self._pos)
        self._pos += 1
        return frame

    def _next_image(self) -> Optional[np.ndarray]:
        if self._cap is not None:
            ok, image = self._cap.read()
            return image if ok else None
        if self._pos >= len(self._images):
            return None
        path = self._images[self._pos]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            self._pos += 1  # skip it: the next read takes the following image
            raise CorruptFrame(f"{path}: not a readable image")
        return image

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class SyntheticSource(Source):
    """Generated frames, cheap; with `mjpg` each frame arrives JPEG-encoded and is
    decoded on arrival, as from a USB camera (what `edged bench` measures)."""

    PATTERNS = 8

    def __init__(self, uri: str, width: int, height: int, fps: float, mjpg: bool = False,
                 quality: int = 90) -> None:
        super().__init__(uri)
        self.width, self.height, self.fps = width, height, fps
        self.mjpg, self.quality = mjpg, quality
        self.live = fps > 0
        self._frames: List[Any] = []
        self._i = 0
        self._pacer = Pacer(fps)

    def open(self) -> None:
        if not self._frames:
            self._frames = [self._pattern(i) for i in range(self.PATTERNS)]
        self._pacer = Pacer(self.fps)

    def _pattern(self, i: int) -> Any:
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (self.height // 16 + 1, self.width // 16 + 1, 3), dtype=np.uint8)
        image = cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        x = (i * self.width) // self.PATTERNS
        cv2.rectangle(image, (x, self.height // 4), (x + self.width // 8, 3 * self.height // 4),
                      (255, 255, 255), -1)
        if not self.mjpg:
            image.flags.writeable = False  # shared by every read, never copied
            return image
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        assert ok, "JPEG encoding failed"
        return data

    def read(self, stop: threading.Event) -> RawFrame:
        self._pacer.wait(stop)
        item = self._frames[self._i % self.PATTERNS]
        self._i += 1
        t_capture = time.monotonic()
        if not self.mjpg:
            return RawFrame(image=item, t_capture=t_capture)
        image = cv2.imdecode(item, cv2.IMREAD_COLOR)
        if image is None:
            raise CorruptFrame(f"{self.uri}: frame {self._i - 1} is not a decodable JPEG")
        return RawFrame(image=image, t_capture=t_capture,
                        decode_ms=(time.monotonic() - t_capture) * 1000.0)

    def encoded(self) -> List[Any]:
        """The JPEG buffers (for the bench's naive loop, which decodes them itself)."""
        self.open()
        return list(self._frames)

