"""edged against a real V4L2 driver: the kernel's `vivid` in an emulated VM.

The build machines have no camera and cannot load modules, so a Debian kernel boots
under QEMU (TCG, see tests/vm/image.py), with the host's root read-only over 9p.
Inside, tests/vm/guest_check.py loads vivid, starts mosquitto and `edged run` with
the shipped x86 model and records what the daemon reports; this test asserts on
that report. Skipped (locally) only when QEMU or the tools to build the VM are
missing; in CI (CI=true) that is a failure. About 4-5 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import jsonschema
import pytest

from edged.schemas import load_schema
from vm import image

REPO = Path(__file__).resolve().parents[1]
VM_TIMEOUT_S = 780.0  # about 2 min on an idle host; the global pytest timeout is 900 s

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vm_report(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Boot the VM once, run the guest checker, return its report (and the wall time)."""
    missing = image.missing_tools()
    if missing:
        reason = f"the VM test needs {', '.join(missing)}; scripts/setup.sh installs them as root"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    kernel = image.prepare_kernel()
    work = tmp_path_factory.mktemp("vm")
    out = work / "out"
    out.mkdir()
    initrd = image.build_initrd(kernel, work / "initrd.cpio")
    env = {"VM_PYTHON": sys.executable, "VM_REPO": REPO, "VM_MODULES": kernel.root}
    command = image.qemu_command(kernel, initrd, out, REPO / "tests" / "vm" / "guest.sh", env)
    console = work / "console.log"
    start = time.monotonic()
    with open(console, "wb") as log:
        vm = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            vm.wait(VM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            vm.kill()
            vm.wait()
    wall = time.monotonic() - start
    report_path = out / "report.json"
    tail = console.read_text(errors="replace")[-3000:]
    assert report_path.exists(), f"the guest wrote no report in {wall:.0f} s; console:\n{tail}"
    report = json.loads(report_path.read_text())
    report["vm_wall_s"] = round(wall, 1)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nVM report ({wall:.0f} s): {work / 'report.json'}")
    assert report.get("done"), f"the guest did not finish in {VM_TIMEOUT_S:.0f} s; console:\n{tail}"
    assert not report["errors"], report["errors"]
    return report


def _case(report: Dict[str, Any], name: str) -> Dict[str, Any]:
    case = report["cases"][name]
    assert "error" not in case, f"{name}: {case['error']}\n{case.get('log', '')}"
    return case


def test_camera_probe_lists_vivid_formats_and_controls(vm_report):
    cli = vm_report["cli"]
    assert cli["probe_rc"] == 0, cli["probe_error"]
    assert cli["driver"] == "vivid"
    assert any("/dev/video0" in cam["nodes"] for cam in cli["list"])
    assert "640x480" in cli["formats"]["YUYV"] and "BGR3" in cli["formats"]
    assert 25.0 in cli["fps_640x480_yuyv"]
    assert cli["brightness"]["minimum"] == 0 and cli["brightness"]["maximum"] == 255
    assert cli["text_rc"] == 0
    assert cli["text"][0] == "/dev/video0: vivid (driver vivid, bus platform:vivid-000)"
    assert "      640x480  fps: 1, 2, 4, 5, 10, 12.5, 15, 25" in cli["text"]
    assert any(line.startswith("  brightness (int 0..255) = ") for line in cli["text"])
    assert cli["missing_rc"] == 2
    assert cli["missing_stderr"].startswith("edged camera: error: /dev/video9: no such device")
    assert len(cli["missing_stderr"].splitlines()) == 1


@pytest.mark.parametrize("name, fourcc, size", [
    ("auto_640x480", "YUYV", (640, 480)),    # no fourcc: vivid offers no MJPG, so YUYV
    ("mjpg_1280x720", "YUYV", (1280, 720)),  # MJPG asked for, not offered: falls back
    ("bgr3_320x180", "BGR3", (320, 180)),    # the flat-buffer format OpenCV leaves packed
])
def test_results_from_vivid_with_the_negotiated_format_reported(vm_report, name, fourcc, size):
    case = _case(vm_report, name)
    camera = case["camera"]
    assert (camera["fourcc"], camera["width"], camera["height"]) == (fourcc, *size)
    assert camera["requested"]["fourcc"] == case["config"].get("fourcc", "")
    assert camera["fps"] == case["config"]["fps"]
    assert case["telemetry_source"]["fourcc"] == fourcc
    assert case["results_first"] >= 2
    labels = set((REPO / "firmware_models" / "regnety_400mf_inspect" / "labels.txt").read_text().split())
    assert set(case["top1"]) <= labels and min(case["inference_ms"]) > 0  # the real model ran
    jsonschema.validate(case["status_online"], load_schema("status"))
    jsonschema.validate(case["telemetry"], load_schema("telemetry"))
    assert case["exit_code"] == 0 and case["offline_reason"] == "shutdown"


def test_configured_controls_are_applied_and_unknown_ones_reported(vm_report):
    case = _case(vm_report, "auto_640x480")
    controls = case["camera"]["controls"]
    assert controls["applied"] == {"brightness": 200}
    assert set(controls["failed"]) == {"exposure_mode", "nosuch_control"}
    assert case["brightness_read_back"] == 200  # vivid's default is 128
    assert case["telemetry_source"]["controls"]["applied"] == {"brightness": 200}


def test_unplug_degrades_within_the_watchdog_and_replug_resumes(vm_report):
    case = _case(vm_report, "auto_640x480")
    assert case["degraded_after_s"] <= vm_report_watchdog(), case
    assert case["degraded_reason"].startswith("camera offline: /dev/video0")
    assert case["rmmod"]["ok"] and case["rmmod"]["device_gone"], case["rmmod"]
    assert case["reason_while_unloaded"] == "camera offline: /dev/video0: no such device"
    assert case["online_again_after_s"] < 30, case
    assert case["brightness_after_replug"] == 200  # a fresh vivid starts at 128: re-applied
    assert case["results_after_replug"] >= 3
    seqs = case["seqs"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert case["exit_code"] == 0


def test_a_stalled_camera_degrades_within_the_watchdog_and_recovers(vm_report):
    """vivid dropping every buffer: no error, the read just blocks."""
    case = _case(vm_report, "auto_640x480")
    assert case["stall_reason"].startswith("camera offline: no frame for"), case["stall_reason"]
    assert case["stall_degraded_after_s"] <= vm_report_watchdog() + 1.0, case
    assert case["stall_online_after_s"] < 30, case
    assert case["results_after_stall"] >= 1
    seqs = case["seqs"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert case["exit_code"] == 0


def vm_report_watchdog() -> float:
    from vm.guest_check import WATCHDOG_S
    return WATCHDOG_S + 1.0  # the status is checked on the daemon's 0.25 s tick
