"""V4L2 device queries and controls through `v4l2-ctl` (the v4l-utils package).

The ioctls stay in a well-kept tool instead of hand-written ctypes code: formats,
frame sizes and rates, controls (read and write) and device names are parsed from
its text output. Without the tool everything here raises `V4l2CtlMissing`, and
capture still works with OpenCV alone (no format list, no controls).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

TOOL = "v4l2-ctl"
TIMEOUT_S = 10.0


class V4l2CtlError(Exception):
    """v4l2-ctl failed; the message is its first line of complaint."""


class V4l2CtlMissing(V4l2CtlError):
    """v4l2-ctl is not installed."""


@dataclass
class FrameSize:
    width: int
    height: int
    fps: List[float] = field(default_factory=list)  # empty: not enumerated (stepwise)


@dataclass
class PixelFormat:
    fourcc: str
    description: str
    sizes: List[FrameSize] = field(default_factory=list)

    def offers(self, width: int, height: int) -> bool:
        return any(s.width == width and s.height == height for s in self.sizes)


@dataclass
class Control:
    name: str
    type: str  # int, bool, menu, intmenu, button, int64, str, bitmask
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    step: Optional[int] = None
    default: Optional[int] = None
    value: Any = None
    flags: List[str] = field(default_factory=list)
    menu: Dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}


def available() -> bool:
    return shutil.which(TOOL) is not None


def run(args: Sequence[str], timeout: float = TIMEOUT_S) -> str:
    """stdout of `v4l2-ctl ARGS`; V4l2CtlError with its message when it fails."""
    exe = shutil.which(TOOL)
    if exe is None:
        raise V4l2CtlMissing(f"{TOOL} is not installed (apt-get install v4l-utils)")
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise V4l2CtlError(f"{TOOL} {' '.join(args)}: no answer in {timeout:.0f} s") from None
    # v4l2-ctl exits 0 for some failures and prints them on stderr: trust both.
    complaint = next((line.strip() for line in proc.stderr.splitlines() if line.strip()), "")
    if proc.returncode != 0:
        raise V4l2CtlError(complaint or f"{TOOL} {' '.join(args)} exited with {proc.returncode}")
    return proc.stdout


# ------------------------------------------------------------------------ devices
def list_devices() -> List[Dict[str, Any]]:
    """[{"card": ..., "bus": ..., "nodes": ["/dev/video0", ...]}] from --list-devices."""
    try:
        text = run(["--list-devices"])
    except V4l2CtlMissing:
        raise
    except V4l2CtlError as exc:
        if "No such file" in str(exc) or "Cannot open" in str(exc):
            return []  # no V4L2 device at all
        raise
    devices: List[Dict[str, Any]] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            card, _, bus = line.rstrip(":").rpartition(" (")
            devices.append({"card": card or line.rstrip(":"), "bus": bus.rstrip(")"), "nodes": []})
        elif line.strip() and devices:
            devices[-1]["nodes"].append(line.strip())
    return devices


def device_info(path: str) -> Dict[str, str]:
    """Driver name, card type, bus info and driver version from --info."""
    keys = {"Driver name": "driver", "Card type": "card", "Bus info": "bus",
            "Driver version": "driver_version"}
    info: Dict[str, str] = {}
    for line in run(["-d", path, "--info"]).splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name.strip() in keys and keys[name.strip()] not in info:
            info[keys[name.strip()]] = value.strip()
    return info


# ------------------------------------------------------------------------ formats
_FORMAT = re.compile(r"^\s*\[\d+\]: '(.{4})' \((.*)\)\s*$")
_SIZE = re.compile(r"^\s*Size: Discrete (\d+)x(\d+)")
_STEPWISE = re.compile(r"^\s*Size: (?:Stepwise|Continuous) \d+x\d+ - (\d+)x(\d+)")
_INTERVAL = re.compile(r"^\s*Interval: Discrete [\d.]+s \(([\d.]+) fps\)")


def list_formats(path: str) -> List[PixelFormat]:
    """Capture formats with their discrete sizes and frame rates (--list-formats-ext)."""
    return parse_formats(run(["-d", path, "--list-formats-ext"]))


def parse_formats(text: str) -> List[PixelFormat]:
    formats: List[PixelFormat] = []
    for line in text.splitlines():
        if (m := _FORMAT.match(line)):
            formats.append(PixelFormat(m.group(1).strip() or m.group(1), m.group(2).split(",")[0]))
        elif formats and ((m := _SIZE.match(line)) or (m := _STEPWISE.match(line))):
            formats[-1].sizes.append(FrameSize(int(m.group(1)), int(m.group(2))))
        elif formats and formats[-1].sizes and (m := _INTERVAL.match(line)):
            formats[-1].sizes[-1].fps.append(float(m.group(1)))
    return formats


# ------------------------------------------------------------------------ controls
_CONTROL = re.compile(r"^\s*(\w+) 0x[0-9a-f]+ \((\w+)\)\s*:\s*(.*)$")
_MENU_ITEM = re.compile(r"^\t+(-?\d+): (.*)$")
_PAIR = re.compile(r"(\w+)=('[^']*'|[^\s,]+(?:, [^\s,]+)*)")


def list_controls(path: str) -> Dict[str, Control]:
    """Every control by its v4l2-ctl name, with range, value, flags and menu items."""
    return parse_controls(run(["-d", path, "--list-ctrls-menus"]))


def parse_controls(text: str) -> Dict[str, Control]:
    controls: Dict[str, Control] = {}
    last: Optional[Control] = None
    for line in text.splitlines():
        if (m := _CONTROL.match(line)):
            last = Control(m.group(1), m.group(2))
            for key, value in _PAIR.findall(m.group(3)):
                _set_field(last, key, value)
            controls[last.name] = last
        elif last is not None and (m := _MENU_ITEM.match(line)):
            last.menu[int(m.group(1))] = m.group(2).strip()
    return controls


def _set_field(control: Control, key: str, value: str) -> None:
    if key == "flags":
        control.flags = [f.strip() for f in value.split(",")]
        return
    names = {"min": "minimum", "max": "maximum", "step": "step", "default": "default",
             "value": "value"}
    if key in names:
        try:
            setattr(control, names[key], int(value))
        except ValueError:
            setattr(control, names[key], value.strip("'"))


def set_control(path: str, name: str, value: int) -> None:
    """Set one control; V4l2CtlError with the driver's or the tool's complaint."""
    out = run(["-d", path, f"--set-ctrl={name}={value}"])
    if out.strip():
        raise V4l2CtlError(out.strip().splitlines()[0])


def get_controls(path: str, names: Sequence[str]) -> Dict[str, int]:
    """Current values of `names` (--get-ctrl), as integers."""
    values: Dict[str, int] = {}
    for line in run(["-d", path, "--get-ctrl=" + ",".join(names)]).splitlines():
        name, sep, value = line.partition(":")
        if sep:
            try:
                values[name.strip()] = int(value.strip())
            except ValueError:
                pass
    return values
