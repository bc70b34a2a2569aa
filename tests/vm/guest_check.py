"""Inside the test VM: vivid + mosquitto + edged (shipped x86 model), watched over MQTT.

Run by tests/vm/guest.sh with the host's Python (the host root is mounted read-only
over 9p). Each case starts `edged run` on /dev/video0 with a capture config and
records what the daemon reported (status, telemetry, results) and what the device
says (`v4l2-ctl`). The report goes to OUT/report.json after every step, so a
partial report still shows how far the guest got; tests/test_camera_vm.py asserts
on it. All waits are for conditions, with deadlines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from edged.cli.main import main as edged_main  # noqa: E402
from helpers.daemon import DaemonProcess  # noqa: E402
from helpers.mqtt import Message, MqttCollector, find_mosquitto, start_broker  # noqa: E402
from helpers.poll import poll_until  # noqa: E402

DEVICE = "/dev/video0"
WATCHDOG_S = 3.0  # source.stall_timeout_s in every case
# Cold start: Python, OpenCV and Paddle Lite load over 9p under TCG; 20 s on an idle
# host, seen near 230 s while the host's two cores were busy with other tests.
START_TIMEOUT_S = 420.0
RESULT_TIMEOUT_S = 90.0  # inference takes seconds per frame under emulation
CONTROLS = {"brightness": 200, "exposure_mode": "manual", "nosuch_control": 1}

# The unplug case reopens after 1 s, 2 s: the window in which rmmod can unload vivid
# (the daemon holds the device at all other times, and rmmod refuses a driver in use).
UNPLUG_BACKOFF = {"reopen_backoff_initial_s": 1.0, "reopen_backoff_max_s": 2.0}
# name -> (source config, results to wait for, unplug and replug mid-run)
CASES: Dict[str, Any] = {
    "auto_640x480": ({"width": 640, "height": 480, "fps": 10, "controls": CONTROLS,
                      **UNPLUG_BACKOFF}, 3, True),
    "mjpg_1280x720": ({"fourcc": "MJPG", "width": 1280, "height": 720, "fps": 5}, 2, False),
    "bgr3_320x180": ({"fourcc": "BGR3", "width": 320, "height": 180, "fps": 10}, 2, False),
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`edged ARGS` in this process (a Python start costs ~10 s under emulation;
    `python -m edged` itself is covered by tests/test_camera_settings.py)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = edged_main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


class Checker:
    def __init__(self, modules: str, out: Path) -> None:
        self.modules, self.out = modules, out
        self.report: Dict[str, Any] = {"cases": {}, "errors": [], "started": time.time()}
        self.broker: Any = None

    def save(self) -> None:
        tmp = self.out / "report.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        tmp.replace(self.out / "report.json")

    # ------------------------------------------------------------------ the device
    def modprobe(self) -> float:
        subprocess.run(["modprobe", "-d", self.modules, "vivid", "n_devs=1"], check=True)
        return poll_until(lambda: os.path.exists(DEVICE), 20, f"{DEVICE} after modprobe")

    def rmmod(self, timeout: float = 20.0) -> Dict[str, Any]:
        """Unload vivid; retried until the daemon has closed the disconnected device
        (vivid comes back by itself when its last user closes it, so this races the
        daemon's reopen: polled often, inside the reopen backoff)."""
        start, attempts, last = time.monotonic(), 0, ""
        while time.monotonic() - start < timeout:
            attempts += 1
            proc = subprocess.run(["rmmod", "vivid"], capture_output=True, text=True)
            if proc.returncode == 0:
                return {"ok": True, "attempts": attempts, "s": round(time.monotonic() - start, 2),
                        "device_gone": not os.path.exists(DEVICE)}
            last = proc.stderr.strip()
            time.sleep(0.02)
        return {"ok": False, "attempts": attempts, "error": last}

    @staticmethod
    def ctl(*args: str) -> str:
        proc = subprocess.run(["v4l2-ctl", "-d", DEVICE, *args], capture_output=True, text=True)
        return (proc.stdout + proc.stderr).strip()

    def read_brightness(self) -> Optional[int]:
        text = self.ctl("--get-ctrl", "brightness")
        try:
            return int(text.split(":")[1])
        except (IndexError, ValueError):
            return None

    # ------------------------------------------------------------------ the CLI
    def probe_cli(self) -> None:
        t0 = time.monotonic()
        listing = run_cli("camera", "list", "--json")
        probe = run_cli("camera", "probe", DEVICE, "--json")
        missing = run_cli("camera", "probe", "/dev/video9")
        text = run_cli("camera", "probe", DEVICE)
        info = json.loads(probe.stdout) if probe.returncode == 0 else {}
        self.report["cli"] = {
            "list_rc": listing.returncode, "list": json.loads(listing.stdout or "null"),
            "probe_rc": probe.returncode, "probe_error": probe.stderr[-500:],
            "driver": info.get("driver"), "card": info.get("card"),
            "formats": {f["fourcc"]: [f"{s['width']}x{s['height']}" for s in f["sizes"]]
                        for f in info.get("formats", [])},
            "fps_640x480_yuyv": next((s["fps"] for f in info.get("formats", []) if f["fourcc"] == "YUYV"
                                      for s in f["sizes"] if (s["width"], s["height"]) == (640, 480)), None),
            "controls": sorted(info.get("controls", {})),
            "brightness": info.get("controls", {}).get("brightness"),
            "missing_rc": missing.returncode, "missing_stderr": missing.stderr.strip(),
            "text_rc": text.returncode, "text": text.stdout.splitlines(),
            "wall_s": round(time.monotonic() - t0, 1)}
        self.save()

    # ------------------------------------------------------------------ one daemon run
    def run_case(self, name: str, source: Dict[str, Any], results: int, unplug: bool) -> None:
        case: Dict[str, Any] = {"config": source}
        self.report["cases"][name] = case
        topic = f"edged/{name}"
        collector = MqttCollector(self.broker.host, self.broker.port, [f"{topic}/#"])
        config = {"source": {k: v for k, v in source.items() if k != "controls"},
                  "telemetry": {"interval_s": 2.0}}
        config["source"]["stall_timeout_s"] = WATCHDOG_S
        if "controls" in source:
            config["source.controls"] = source["controls"]
        t0 = time.monotonic()
        daemon = DaemonProcess(Path("/run/edged") / name, f"v4l2:{DEVICE}", self.broker.url, name,
                               config=config)
        try:
            online = self._wait(collector, f"{topic}/status", lambda p: p["state"] == "online",
                                START_TIMEOUT_S)
            case["online_after_s"] = round(time.monotonic() - t0, 1)
            case["camera"] = online["camera"]
            case["status_online"] = online
            got = collector.wait_for_topic(f"{topic}/result", RESULT_TIMEOUT_S, results)
            case["results_first"] = len(got)
            case["brightness_read_back"] = self.read_brightness()
            telemetry = self._wait(collector, f"{topic}/telemetry", lambda p: "fourcc" in p["source"],
                                   30)
            case["telemetry_source"] = telemetry["source"]
            case["telemetry"] = telemetry
            self.save()
            if unplug:
                self.unplug_and_replug(collector, topic, case, results)
            case["seqs"] = [m.payload["seq"] for m in collector.messages if m.topic == f"{topic}/result"]
            results_seen = [m.payload for m in collector.messages if m.topic == f"{topic}/result"]
            case["frames"] = [r["frame"] for r in results_seen]
            case["top1"] = [r["top"][0]["label"] for r in results_seen]
            case["inference_ms"] = [round(r["latency_ms"]["inference"]) for r in results_seen]
            seen = len(collector.messages)
            daemon.signal(signal.SIGTERM)
            case["exit_code"] = daemon.wait(90)
            offline = self._wait(collector, f"{topic}/status", lambda p: p["state"] == "offline", 20,
                                 after=seen)
            case["offline_reason"] = offline["reason"]
        except Exception as exc:  # recorded, and the next case still runs
            case["error"] = f"{type(exc).__name__}: {exc}"[:3000]
            case["log"] = daemon.log()[-4000:]
            daemon.kill()
        finally:
            collector.close()
            case["wall_s"] = round(time.monotonic() - t0, 1)
            case["log_head"] = daemon.log().splitlines()[:12]
            self.save()

    def unplug_and_replug(self, collector: MqttCollector, topic: str, case: Dict[str, Any],
                          results: int) -> None:
        """vivid's `disconnect` control is its hot unplug (reads fail at once); rmmod then
        removes the driver so the device stays gone (rmmod alone is refused while the
        daemon holds the device); modprobe brings /dev/video0 back."""
        before = len(collector.wait_for_topic(f"{topic}/result", 1))
        seen = len(collector.messages)
        t0 = time.monotonic()
        case["disconnect"] = self.ctl("--set-ctrl", "disconnect=1")
        degraded = self._wait(collector, f"{topic}/status", lambda p: p["state"] == "degraded",
                              WATCHDOG_S + 10, after=seen)
        case["degraded_after_s"] = round(time.monotonic() - t0, 2)
        case["degraded_reason"] = degraded["reason"]
        case["rmmod"] = self.rmmod()
        gone = self._wait(collector, f"{topic}/status", lambda p: "no such device" in (p["reason"] or ""),
                          10, after=seen)
        case["reason_while_unloaded"] = gone["reason"]
        seen = len(collector.messages)
        t1 = time.monotonic()
        case["modprobe_s"] = round(self.modprobe(), 2)
        self._wait(collector, f"{topic}/status", lambda p: p["state"] == "online", 60, after=seen)
        case["online_again_after_s"] = round(time.monotonic() - t1, 2)
        case["brightness_after_replug"] = self.read_brightness()
        got = collector.wait_for_topic(f"{topic}/result", RESULT_TIMEOUT_S, before + results)
        case["results_after_replug"] = len(got) - before
        self.save()
        self.stall_and_recover(collector, topic, case)

    def stall_and_recover(self, collector: MqttCollector, topic: str, case: Dict[str, Any]) -> None:
        """A camera that stops delivering without an error: vivid drops every buffer, the
        read blocks, and only the stall watchdog can tell."""
        before = len(collector.wait_for_topic(f"{topic}/result", 1))
        seen = len(collector.messages)
        t0 = time.monotonic()
        self.ctl("--set-ctrl", "percentage_of_dropped_buffers=100")
        stalled = self._wait(collector, f"{topic}/status", lambda p: p["state"] == "degraded",
                             WATCHDOG_S + 10, after=seen)
        case["stall_degraded_after_s"] = round(time.monotonic() - t0, 2)
        case["stall_reason"] = stalled["reason"]
        seen = len(collector.messages)
        t1 = time.monotonic()
        self.ctl("--set-ctrl", "percentage_of_dropped_buffers=0")
        self._wait(collector, f"{topic}/status", lambda p: p["state"] == "online", 60, after=seen)
        case["stall_online_after_s"] = round(time.monotonic() - t1, 2)
        got = collector.wait_for_topic(f"{topic}/result", RESULT_TIMEOUT_S, before + 1)
        case["results_after_stall"] = len(got) - before
        self.save()

    @staticmethod
    def _wait(collector: MqttCollector, topic: str, test: Callable[[Dict[str, Any]], bool],
              timeout: float, after: int = 0) -> Dict[str, Any]:
        """The first message on `topic` (after the first `after` messages) passing `test`."""
        old = {id(m) for m in collector.messages[:after]}

        def wanted(m: Message) -> bool:
            return m.topic == topic and id(m) not in old and isinstance(m.payload, dict) \
                and test(m.payload)
        return collector.wait_for(wanted, timeout)[0].payload

    # ------------------------------------------------------------------ all of it
    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.report["modprobe_s"] = round(self.modprobe(), 2)
            self.report["formats_offered"] = self.ctl("--list-formats")
            self.broker = start_broker(find_mosquitto(), workdir=Path("/run/mosquitto"))
            self.probe_cli()
            for name, (source, results, unplug) in CASES.items():
                self.run_case(name, source, results, unplug)
        except Exception:
            self.report["errors"].append(traceback.format_exc()[-3000:])
        finally:
            if self.broker is not None:
                self.broker.stop()
            self.report["guest_wall_s"] = round(time.monotonic() - t0, 1)
            self.report["done"] = True
            self.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", required=True, help="folder holding lib/modules/<version>")
    parser.add_argument("--out", type=Path, required=True, help="writable share for the report")
    args = parser.parse_args()
    Checker(args.modules, args.out).run()


if __name__ == "__main__":
    main()
