"""Camera controls from the config's `[source.controls]` table.

Keys are either a few friendly names that hide the V4L2 spelling (and its renames
between kernel versions), or any control name as `edged camera probe` lists it:

    [source.controls]
    exposure_mode = "manual"        # auto | manual | shutter_priority | aperture_priority
    exposure = 150                  # exposure_time_absolute, in 100 us units
    gain = 20
    white_balance = 4600            # "auto" or a temperature in kelvin
    focus = "auto"                  # "auto" or focus_absolute
    power_line_frequency = "50"     # off | 50 | 60 | auto
    brightness = 140                # any other V4L2 control by name

`plan()` checks the values at config load (so a typo stops the daemon at start,
naming the key); `apply()` sets them on an opened device and returns a report:
a control the device lacks or refuses is reported, never fatal (cameras differ).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from edged.capture import v4l2ctl

log = logging.getLogger(__name__)

Value = Union[int, bool, str]
# One step of a plan: (config key, candidate V4L2 names (first present wins), value).
Step = Tuple[str, Tuple[str, ...], int]

EXPOSURE_MODES = {"auto": 0, "manual": 1, "shutter_priority": 2, "aperture_priority": 3}
POWER_LINE = {"off": 0, "disabled": 0, "50": 1, "60": 2, "auto": 3}
AUTO_EXPOSURE = ("auto_exposure", "exposure_auto")
EXPOSURE = ("exposure_time_absolute", "exposure_absolute")
WB_AUTO = ("white_balance_automatic", "white_balance_temperature_auto")
WB_TEMP = ("white_balance_temperature",)
FOCUS_AUTO = ("focus_automatic_continuous", "focus_auto")
FOCUS = ("focus_absolute",)
NAME = re.compile(r"[a-z][a-z0-9_]*")


class ControlValueError(ValueError):
    """A control value in the config cannot be understood (message names the key)."""


@dataclass
class ControlReport:
    """What happened at the last open: applied values, and why the others were not."""

    applied: Dict[str, int] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"applied": dict(self.applied), "failed": dict(self.failed)}


def _integer(key: str, value: Value) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value.strip())
    raise ControlValueError(f"{key}: expected an integer, got {value!r}")


def _choice(key: str, value: Value, choices: Mapping[str, int]) -> int:
    text = str(value).strip().lower()
    if text not in choices:
        raise ControlValueError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return choices[text]


def _exposure_mode(key: str, value: Value) -> List[Step]:
    return [(key, AUTO_EXPOSURE, _choice(key, value, EXPOSURE_MODES))]


def _exposure(key: str, value: Value) -> List[Step]:
    return [(key, EXPOSURE, _integer(key, value))]


def _white_balance(key: str, value: Value) -> List[Step]:
    if str(value).strip().lower() == "auto":
        return [(key, WB_AUTO, 1)]
    return [(key, WB_AUTO, 0), (key, WB_TEMP, _integer(key, value))]


def _focus(key: str, value: Value) -> List[Step]:
    if str(value).strip().lower() == "auto":
        return [(key, FOCUS_AUTO, 1)]
    return [(key, FOCUS_AUTO, 0), (key, FOCUS, _integer(key, value))]


def _power_line(key: str, value: Value) -> List[Step]:
    return [(key, ("power_line_frequency",), _choice(key, value, POWER_LINE))]


FRIENDLY: Dict[str, Callable[[str, Value], List[Step]]] = {
    "exposure_mode": _exposure_mode, "exposure": _exposure, "white_balance": _white_balance,
    "focus": _focus, "power_line_frequency": _power_line,
}
# Modes go before values: a manual exposure time is ignored while auto exposure is on.
ORDER = ("exposure_mode", "white_balance", "focus", "exposure")


def plan(controls: Mapping[str, Value]) -> List[Step]:
    """The V4L2 settings for a `[source.controls]` table; ControlValueError on bad input."""
    steps: List[Step] = []
    keys = sorted(controls, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))
    for key in keys:
        value = controls[key]
        if not NAME.fullmatch(key):
            raise ControlValueError(f"{key}: not a control name (lower case, digits, _)")
        if key in FRIENDLY:
            steps.extend(FRIENDLY[key](key, value))
        else:
            steps.append((key, (key,), _integer(key, value)))
    return steps


def parse_text(text: str) -> Dict[str, Value]:
    """`name=value,name=value` (the EDGED_SOURCE_CONTROLS form) as a table."""
    table: Dict[str, Value] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ControlValueError(f"expected name=value, got {item!r}")
        table[name.strip()] = value.strip()
    return table


def apply(path: str, steps: List[Step]) -> ControlReport:
    """Set each planned control on `path` and read it back; failures are reported."""
    report = ControlReport()
    if not steps:
        return report
    try:
        present = v4l2ctl.list_controls(path)
    except v4l2ctl.V4l2CtlError as exc:
        report.failed = {key: str(exc) for key, _, _ in steps}
        log.warning("%s: controls not applied: %s", path, exc)
        return report
    for key, candidates, value in steps:
        name = next((n for n in candidates if n in present), None)
        if name is None:  # a key's first failure is the one reported
            report.failed.setdefault(key, f"{path} has no control {' or '.join(candidates)}")
            continue
        problem = _set_and_check(path, name, value)
        if problem:
            report.failed.setdefault(key, problem)
        else:
            report.applied[name] = value
    for key, problem in report.failed.items():
        log.warning("%s: control %s not applied: %s", path, key, problem)
    if report.applied:
        log.info("%s: controls applied: %s", path, report.applied)
    return report


def _set_and_check(path: str, name: str, value: int) -> Optional[str]:
    try:
        v4l2ctl.set_control(path, name, value)
        actual = v4l2ctl.get_controls(path, [name]).get(name)
    except v4l2ctl.V4l2CtlError as exc:
        return f"{name}={value}: {exc}"
    if actual is not None and actual != value:
        return f"{name}={value}: the device reads back {actual} (out of range, or inactive?)"
    return None
