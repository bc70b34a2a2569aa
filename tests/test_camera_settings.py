"""Camera settings without a camera: control config, format choice, v4l2-ctl parsing.

The v4l2-ctl texts below are excerpts of what vivid printed in the test VM
(tests/test_camera_vm.py runs the real thing end to end).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.capture import controls, v4l2ctl
from edged.capture.v4l2 import V4l2Source, format_candidates, fourcc_text
from edged.config import ConfigError, load_config
from helpers.daemon import run_cli

FORMATS_TEXT = """ioctl: VIDIOC_ENUM_FMT
\tType: Video Capture

\t[0]: 'YUYV' (YUYV 4:2:2, csc-colorspace, csc-ycbcr, csc-quantization, csc-xfer-func)
\t\tSize: Discrete 320x180
\t\t\tInterval: Discrete 0.100s (10.000 fps)
\t\t\tInterval: Discrete 0.040s (25.000 fps)
\t\tSize: Discrete 1280x720
\t\t\tInterval: Discrete 0.200s (5.000 fps)
\t[1]: 'BGR3' (24-bit BGR 8-8-8)
\t\tSize: Discrete 320x180
\t\t\tInterval: Discrete 0.100s (10.000 fps)
\t[2]: 'Y10 ' (10-bit Greyscale)
\t\tSize: Stepwise 16x16 - 1920x1080 with step 1/1
"""

CONTROLS_TEXT = """
User Controls

                     brightness 0x00980900 (int)    : min=0 max=255 step=1 default=128 value=200 flags=slider
                 gain_automatic 0x00980912 (bool)   : default=1 value=1 flags=update
                           gain 0x00980913 (int)    : min=0 max=255 step=1 default=100 value=19 flags=inactive, volatile
          standard_aspect_ratio 0x00f0f016 (menu)   : min=1 max=4 default=1 value=1 (4x3)
\t\t\t\t1: 4x3
\t\t\t\t2: 14x9
                   integer_menu 0x0098f907 (intmenu): min=1 max=8 default=4 value=4 (5 0x5)
                         string 0x0098f905 (str)    : min=2 max=4 step=1 value='  ' flags=has-payload
"""


# ---------------------------------------------------------------- [source.controls]
def test_friendly_controls_expand_to_v4l2_names_with_modes_first():
    steps = controls.plan({"exposure": 150, "exposure_mode": "manual", "white_balance": 4600,
                           "power_line_frequency": "50", "focus": "auto", "brightness": True})
    assert steps == [
        ("exposure_mode", controls.AUTO_EXPOSURE, 1),
        ("white_balance", controls.WB_AUTO, 0), ("white_balance", controls.WB_TEMP, 4600),
        ("focus", controls.FOCUS_AUTO, 1),
        ("exposure", controls.EXPOSURE, 150),
        ("power_line_frequency", ("power_line_frequency",), 1),
        ("brightness", ("brightness",), 1),
    ]


def test_controls_table_from_toml_and_env(tmp_path: Path):
    path = tmp_path / "edged.toml"
    path.write_text('[source]\nuri = "v4l2:/dev/video0"\n[source.controls]\n'
                    'gain = 20\nwhite_balance = "auto"\n')
    assert load_config(path, env={}).source.controls == {"gain": 20, "white_balance": "auto"}
    cfg = load_config(None, env={"EDGED_SOURCE_CONTROLS": "gain=20, exposure_mode=manual"})
    assert cfg.source.controls == {"gain": "20", "exposure_mode": "manual"}
    assert controls.plan(cfg.source.controls)[1] == ("gain", ("gain",), 20)


@pytest.mark.parametrize("table, message", [
    ('exposure_mode = "sometimes"', "config: source.controls.exposure_mode: must be one of auto, manual"),
    ('gain = "high"', "config: source.controls.gain: expected an integer, got 'high'"),
    ("gain = 1.5", "config: source.controls.gain: expected an integer, true/false or a word"),
    ('power_line_frequency = "55"', "config: source.controls.power_line_frequency: must be one of"),
    ('Brightness = 3', "config: source.controls.Brightness: not a control name"),
])
def test_bad_control_values_stop_at_load_naming_the_key(tmp_path: Path, table: str, message: str):
    path = tmp_path / "edged.toml"
    path.write_text(f"[source.controls]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_env_controls_without_equals_sign_is_one_line_error():
    with pytest.raises(ConfigError, match=r"^config: source.controls: expected name=value, got 'gain'$"):
        load_config(None, env={"EDGED_SOURCE_CONTROLS": "gain"})


def test_missing_and_refused_controls_are_reported_not_raised(monkeypatch):
    present = v4l2ctl.parse_controls(CONTROLS_TEXT)
    state = {name: c.value for name, c in present.items()}

    def set_control(path: str, name: str, value: int) -> None:
        if name == "gain":
            raise v4l2ctl.V4l2CtlError("VIDIOC_S_EXT_CTRLS: failed: Permission denied")
        state[name] = min(value, 255)  # the driver clamps, as vivid does

    monkeypatch.setattr(v4l2ctl, "list_controls", lambda path: present)
    monkeypatch.setattr(v4l2ctl, "set_control", set_control)
    monkeypatch.setattr(v4l2ctl, "get_controls", lambda path, names: {n: state[n] for n in names})
    report = controls.apply("/dev/video0", controls.plan(
        {"brightness": 140, "gain_automatic": 0, "gain": 9, "focus": 3, "contrast": 999}))
    assert report.applied == {"brightness": 140, "gain_automatic": 0}
    assert set(report.failed) == {"gain", "focus", "contrast"}
    assert "Permission denied" in report.failed["gain"]
    assert "has no control focus_automatic_continuous or focus_auto" in report.failed["focus"]
    assert report.failed["contrast"] == "/dev/video0 has no control contrast"


def test_controls_without_v4l2_ctl_are_all_reported(monkeypatch):
    monkeypatch.setattr(v4l2ctl.shutil, "which", lambda name: None)
    report = controls.apply("/dev/video0", controls.plan({"gain": 3}))
    assert report.applied == {} and "v4l-utils" in report.failed["gain"]


# ---------------------------------------------------------------- v4l2-ctl output
def test_formats_sizes_and_rates_are_parsed_from_v4l2_ctl():
    formats = v4l2ctl.parse_formats(FORMATS_TEXT)
    assert [f.fourcc for f in formats] == ["YUYV", "BGR3", "Y10"]
    assert formats[0].description == "YUYV 4:2:2"
    assert [(s.width, s.height, s.fps) for s in formats[0].sizes] == [
        (320, 180, [10.0, 25.0]), (1280, 720, [5.0])]
    assert formats[2].sizes[0].width == 1920 and formats[2].sizes[0].fps == []


def test_controls_with_ranges_flags_and_menus_are_parsed():
    parsed = v4l2ctl.parse_controls(CONTROLS_TEXT)
    assert parsed["brightness"].to_dict() == {
        "name": "brightness", "type": "int", "minimum": 0, "maximum": 255, "step": 1,
        "default": 128, "value": 200, "flags": ["slider"]}
    assert parsed["gain"].flags == ["inactive", "volatile"]
    assert parsed["standard_aspect_ratio"].menu == {1: "4x3", 2: "14x9"}
    assert parsed["integer_menu"].type == "intmenu" and parsed["integer_menu"].value == 4
    assert parsed["string"].value == "  "


# ---------------------------------------------------------------- format preference
def test_format_preference_mjpg_then_yuyv_then_what_the_device_offers():
    offered = v4l2ctl.parse_formats(FORMATS_TEXT)
    mjpg = v4l2ctl.PixelFormat("MJPG", "Motion-JPEG", [v4l2ctl.FrameSize(1280, 720)])
    assert format_candidates("", [*offered, mjpg]) == ["MJPG", "YUYV", "BGR3", "Y10"]
    assert format_candidates("", offered) == ["YUYV", "BGR3", "Y10"]
    assert format_candidates("BGR3", offered) == ["BGR3"]
    assert format_candidates("MJPG", offered) == ["YUYV", "BGR3", "Y10"]  # not offered
    assert format_candidates("MJPG", []) == ["MJPG"]  # nothing known: ask the driver
    assert format_candidates("", []) == ["MJPG", "YUYV"]


def test_format_preference_puts_formats_with_the_requested_size_first():
    offered = v4l2ctl.parse_formats(FORMATS_TEXT)
    assert format_candidates("", offered, 1280, 720)[0] == "YUYV"
    only_bgr = [v4l2ctl.PixelFormat("YUYV", "", [v4l2ctl.FrameSize(640, 480)]),
                v4l2ctl.PixelFormat("BGR3", "", [v4l2ctl.FrameSize(320, 180)])]
    assert format_candidates("", only_bgr, 320, 180) == ["BGR3", "YUYV"]


class FakeVideoCapture:
    """A fake cv2.VideoCapture whose driver accepts only the fourccs in `accepts`."""

    accepts = ("YUYV",)

    def __init__(self, path: str, api: int) -> None:
        self.props = {cv2.CAP_PROP_FOURCC: float(cv2.VideoWriter_fourcc(*"BGR3")),
                      cv2.CAP_PROP_FRAME_WIDTH: 640.0, cv2.CAP_PROP_FRAME_HEIGHT: 480.0,
                      cv2.CAP_PROP_FPS: 30.0}
        self.asked: list = []

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_FOURCC:
            self.asked.append(fourcc_text(value))
            if fourcc_text(value) not in self.accepts:
                return False
        self.props[prop] = float(value)
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self):
        return True, np.zeros((int(self.props[4]), int(self.props[3]), 3), np.uint8)

    def release(self) -> None:
        pass


def test_fake_capture_without_v4l2_ctl_tries_mjpg_then_keeps_yuyv(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(v4l2ctl.shutil, "which", lambda name: None)
    device = tmp_path / "video0"
    device.touch()
    source = V4l2Source(f"v4l2:{device}", str(device), width=320, height=180, fps=10,
                        capture_factory=FakeVideoCapture)
    source.open()
    assert source._cap.asked == ["MJPG", "YUYV"]
    assert source.negotiated() == {"fourcc": "YUYV", "width": 320, "height": 180, "fps": 10.0,
                                   "requested": {"fourcc": "", "width": 320, "height": 180,
                                                 "fps": 10}}
    assert source.read(None).image.shape == (180, 320, 3)


def test_camera_probe_of_a_missing_device_is_one_line():
    proc = run_cli("camera", "probe", "/dev/video-none")
    if "v4l-utils" in proc.stderr:
        pytest.skip("v4l2-ctl is not installed")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("edged camera: error: /dev/video-none: no such device")
    assert len(proc.stderr.strip().splitlines()) == 1
