"""`edged monitor --once` shows devices from the messages on a real broker."""

from __future__ import annotations

import json
import subprocess
import sys

import paho.mqtt.publish as publish

from test_schemas_telemetry import RESULT, STATUS, TELEMETRY


def run_monitor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", "monitor", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_monitor_once_shows_status_label_and_latency_of_each_device(mqtt_broker):
    # Retained, so the monitor gets them when it subscribes (no timing games).
    msgs = [
        {"topic": "edged/cam1/status", "payload": json.dumps(STATUS), "retain": True, "qos": 1},
        {"topic": "edged/cam1/result", "payload": json.dumps(RESULT), "retain": True, "qos": 1},
        {"topic": "edged/cam1/telemetry", "payload": json.dumps(TELEMETRY), "retain": True,
         "qos": 1},
        {"topic": "edged/cam2/status", "payload": json.dumps(dict(STATUS, state="online",
                                                                   reason=None, device="cam2")),
         "retain": True, "qos": 1},
        {"topic": "other/cam3/status", "payload": json.dumps(STATUS), "retain": True, "qos": 1},
    ]
    publish.multiple(msgs, hostname=mqtt_broker.host, port=mqtt_broker.port)
    done = run_monitor("--broker", mqtt_broker.url, "--once", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    cam1 = next(line for line in lines if line.startswith("cam1"))
    cam2 = next(line for line in lines if line.startswith("cam2"))
    assert "degraded" in cam1 and "scratch" in cam1 and "0.91" in cam1
    assert "27.9" in cam1 and "35.0" in cam1 and "41.0" in cam1   # fps, p50, p99
    assert "camera offline" in cam1
    assert "online" in cam2
    assert "cam3" not in done.stdout
    assert "\x1b[" not in done.stdout


def test_monitor_with_custom_prefix(mqtt_broker):
    publish.single("site/edged/camX/status", json.dumps(dict(STATUS, device="camX")),
                   retain=True, qos=1, hostname=mqtt_broker.host, port=mqtt_broker.port)
    done = run_monitor("--broker", mqtt_broker.url, "--prefix", "site/edged", "--once", "0.5")
    assert done.returncode == 0 and "camX" in done.stdout


def test_monitor_rejects_bad_broker_url_in_one_line():
    done = run_monitor("--broker", "http://x", "--once", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "edged monitor: error: config: --broker: scheme must be mqtt:// or mqtts://, "
        "got 'http://x'"]


def test_monitor_once_fails_when_broker_unreachable(mqtt_broker):
    mqtt_broker.stop()
    done = run_monitor("--broker", mqtt_broker.url, "--once", "0.5")
    assert done.returncode == 1 and "could not connect" in done.stderr
