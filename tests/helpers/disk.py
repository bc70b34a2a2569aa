"""A small file system a test can fill: a tmpfs (mounting needs root, as in CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def small_tmpfs(mount: Path, size: str = "16m", required: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `mount` for the test; where mounting is not allowed the
    test is skipped, or fails if `required` (in CI, which runs as root)."""
    mount.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        reason = f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 16, 512):  # big blocks, then the last few bytes
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
