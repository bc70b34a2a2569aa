"""`edged camera list` and `edged camera probe DEVICE`: what a V4L2 camera offers.

So an integrator can pick `[source]` settings: driver and card name, pixel formats
with their sizes and frame rates, and controls with range and current value. The
ioctls are done by `v4l2-ctl` (package v4l-utils); `--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any, Dict, List

from edged.capture import v4l2ctl
from edged.errors import UserError


class CameraError(UserError):
    """A device that is missing or cannot be queried."""


def list_cameras() -> List[Dict[str, Any]]:
    """Every V4L2 device with its card name and nodes (empty when there is none)."""
    _require_tool()
    try:
        return v4l2ctl.list_devices()
    except v4l2ctl.V4l2CtlError as exc:
        raise CameraError(f"cannot list V4L2 devices: {exc}") from None


def probe(device: str) -> Dict[str, Any]:
    """Driver, card, formats (sizes, fps) and controls of one device node."""
    _require_tool()
    if not os.path.exists(device):
        nodes = ", ".join(sorted(glob.glob("/dev/video*"))) or "none"
        raise CameraError(f"{device}: no such device (video devices here: {nodes})")
    try:
        info: Dict[str, Any] = dict(v4l2ctl.device_info(device), device=device)
        info["formats"] = [{"fourcc": f.fourcc, "description": f.description,
                            "sizes": [{"width": s.width, "height": s.height, "fps": s.fps}
                                      for s in f.sizes]}
                           for f in v4l2ctl.list_formats(device)]
        info["controls"] = {name: c.to_dict() for name, c in v4l2ctl.list_controls(device).items()}
    except v4l2ctl.V4l2CtlError as exc:
        raise CameraError(f"{device}: {exc}") from None
    return info


def _require_tool() -> None:
    if not v4l2ctl.available():
        raise CameraError(f"{v4l2ctl.TOOL} is not installed (apt-get install v4l-utils)")


def format_probe(info: Dict[str, Any]) -> str:
    """The probe as text: one line per format and size, one per control."""
    lines = [f"{info['device']}: {info.get('card', '?')} (driver {info.get('driver', '?')}, "
             f"bus {info.get('bus', '?')})", "formats:"]
    for fmt in info["formats"]:
        lines.append(f"  {fmt['fourcc']}  {fmt['description']}")
        for size in fmt["sizes"]:
            rates = ", ".join(f"{r:g}" for r in size["fps"]) or "any"
            lines.append(f"      {size['width']}x{size['height']}  fps: {rates}")
    lines.append("controls:")
    for name, ctl in info["controls"].items():
        extent = f" {ctl['minimum']}..{ctl['maximum']}" if "minimum" in ctl else ""
        menu = "  (" + ", ".join(f"{k}={v}" for k, v in ctl.get("menu", {}).items()) + ")" \
            if ctl.get("menu") else ""
        flags = f"  [{', '.join(ctl['flags'])}]" if ctl.get("flags") else ""
        lines.append(f"  {name} ({ctl['type']}{extent}) = {ctl.get('value', '')}{menu}{flags}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    cameras = list_cameras()
    if args.json:
        print(json.dumps(cameras, indent=1))
    elif not cameras:
        print("no V4L2 devices")
    for cam in cameras if not args.json else []:
        print(f"{cam['card']} ({cam['bus']}): {' '.join(cam['nodes'])}")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    info = probe(args.device)
    print(json.dumps(info, indent=1) if args.json else format_probe(info))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("camera", help="list V4L2 cameras, probe formats and controls",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="camera_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="V4L2 devices with card name and nodes")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)
    probing = sub.add_parser("probe", help="formats, sizes, frame rates and controls of DEVICE")
    probing.add_argument("device", metavar="DEVICE", help="e.g. /dev/video0")
    probing.add_argument("--json", action="store_true", help="print JSON")
    probing.set_defaults(func=run_probe)
