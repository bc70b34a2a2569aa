"""The model package: a directory with `.nb` files, `manifest.json` and `labels.txt`.

This module is the single reader of the package format. The daemon, OTA and the
toolkit all go through `load_package()`, which either returns a fully checked
`ModelPackage` or raises `PackageError` with one clear sentence. It imports
neither paddle nor paddlelite so it is cheap to use anywhere.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edged.errors import UserError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.txt"

TARGETS = ("arm", "x86")
PRECISIONS = ("int8", "fp32")
# Preferred (target, precision) per machine target: INT8 is broken in the x86 build
# of Paddle Lite (PLATFORM.md), so x86 only ever runs fp32.
PREFERENCE = {"arm": (("arm", "int8"), ("arm", "fp32")), "x86": (("x86", "fp32"),)}


class PackageError(UserError):
    """A model package is unusable; the message says what is wrong and where."""


@dataclass(frozen=True)
class ModelFile:
    path: str
    target: str
    precision: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Preprocess:
    """How a frame becomes the network input (mirrors manifest["input"])."""

    height: int
    width: int
    resize_short: int
    channel_order: str  # "RGB" or "BGR"
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


@dataclass
class ModelPackage:
    root: Path
    name: str
    version: str
    labels: List[str]
    preprocess: Preprocess
    files: List[ModelFile]
    manifest: Dict[str, Any] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def file_for(self, target: Optional[str] = None) -> ModelFile:
        """The `.nb` this machine should run: ARM INT8 (else fp32) on ARM, fp32 on x86."""
        target = target or machine_target()
        available = {(f.target, f.precision): f for f in self.files}
        for key in PREFERENCE[target]:
            if key in available:
                return available[key]
        have = ", ".join(f"{t}/{p}" for t, p in sorted(available)) or "none"
        raise PackageError(f"{self.root}: no model file for target '{target}' (package has: {have})")

    def path_of(self, model_file: ModelFile) -> Path:
        return self.root / model_file.path


def machine_target(machine: Optional[str] = None) -> str:
    """Map `platform.machine()` to a Paddle Lite target name."""
    m = (machine or platform.machine()).lower()
    if m in ("aarch64", "arm64", "armv8", "armv8l", "armv7l"):
        return "arm"
    if m in ("x86_64", "amd64", "i686", "x86"):
        return "x86"
    raise PackageError(f"unsupported machine architecture '{m}'")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(root: Path, rel: str, target: str, precision: str) -> Dict[str, Any]:
    """The manifest entry for one model file (used when packing)."""
    path = root / rel
    return {"path": rel, "target": target, "precision": precision,
            "size": path.stat().st_size, "sha256": sha256_of(path)}


def load_package(root: "str | Path", verify_hashes: bool = True,
                 num_outputs: Optional[int] = None) -> ModelPackage:
    """Read and check a package directory; raise PackageError on the first problem.

    `num_outputs`, when the caller knows the network's output size, is checked
    against the number of labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"{root}: model package directory not found")
    manifest = _read_manifest(root)
    labels = _read_labels(root, manifest)
    files = [_check_file(root, i, entry, verify_hashes)
             for i, entry in enumerate(_require(manifest, "files", list))]
    if not files:
        raise PackageError(f"{root}: manifest lists no model files")
    expected = num_outputs if num_outputs is not None else manifest.get("num_classes")
    if expected is not None and expected != len(labels):
        raise PackageError(f"{root}: model has {expected} outputs but {len(labels)} labels")
    return ModelPackage(root=root, name=str(_require(manifest, "name", str)),
                        version=str(_require(manifest, "version", str)), labels=labels,
                        preprocess=_read_preprocess(root, manifest), files=files,
                        manifest=manifest)


def _read_manifest(root: Path) -> Dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise PackageError(f"{root}: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{path}: must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PackageError(f"{path}: unknown schema_version {version!r} (this edged reads {SCHEMA_VERSION})")
    return manifest


def _read_labels(root: Path, manifest: Dict[str, Any]) -> List[str]:
    labels = _require(manifest, "labels", list)
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise PackageError(f"{root}: manifest 'labels' must be a non-empty list of names")
    labels_file = root / LABELS_NAME
    if labels_file.is_file():
        on_disk = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if on_disk != labels:
            raise PackageError(f"{labels_file}: labels differ from the manifest's")
    return list(labels)


def _check_file(root: Path, index: int, entry: Any, verify_hashes: bool) -> ModelFile:
    where = f"{root}: files[{index}]"
    if not isinstance(entry, dict):
        raise PackageError(f"{where} must be an object")
    try:
        mf = ModelFile(path=str(entry["path"]), target=str(entry["target"]),
                       precision=str(entry["precision"]), size=int(entry["size"]),
                       sha256=str(entry["sha256"]).lower())
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{where}: missing or bad field {exc}") from None
    if mf.target not in TARGETS or mf.precision not in PRECISIONS:
        raise PackageError(f"{where}: target/precision {mf.target}/{mf.precision} not one of "
                           f"{'/'.join(TARGETS)} x {'/'.join(PRECISIONS)}")
    path = root / mf.path
    if Path(mf.path).is_absolute() or ".." in Path(mf.path).parts:
        raise PackageError(f"{where}: path '{mf.path}' must stay inside the package")
    if not path.is_file():
        raise PackageError(f"{root}: model file '{mf.path}' is missing")
    if path.stat().st_size != mf.size:
        raise PackageError(f"{path}: size {path.stat().st_size} differs from manifest ({mf.size})")
    if verify_hashes and sha256_of(path) != mf.sha256:
        raise PackageError(f"{path}: sha256 mismatch (file is corrupt or was changed)")
    return mf


def _read_preprocess(root: Path, manifest: Dict[str, Any]) -> Preprocess:
    spec = _require(manifest, "input", dict)
    try:
        _, channels, height, width = (int(v) for v in spec["shape"])
        mean = _triple(spec["mean"])
        std = _triple(spec["std"])
        order = str(spec.get("channel_order", "RGB")).upper()
        resize_short = int(spec.get("resize_short", min(height, width)))
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{root}: manifest 'input' is incomplete or malformed ({exc})") from None
    if channels != 3 or order not in ("RGB", "BGR") or min(height, width, resize_short) <= 0:
        raise PackageError(f"{root}: manifest 'input' must describe a 3-channel RGB/BGR image")
    if resize_short < min(height, width) or any(s <= 0 for s in std):
        raise PackageError(f"{root}: manifest 'input' has resize_short smaller than the crop or std <= 0")
    return Preprocess(height=height, width=width, resize_short=resize_short,
                      channel_order=order, mean=mean, std=std)


def _triple(values: Sequence[Any]) -> Tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError("expected three values")
    return out  # type: ignore[return-value]


def _require(manifest: Dict[str, Any], key: str, kind: type) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise PackageError(f"manifest field '{key}' is missing or not a {kind.__name__}")
    return value
