"""Payload schemas accept documented examples and reject broken ones; telemetry helpers."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import jsonschema
import pytest

from edged.schemas import load_schema
from edged.service.telemetry import (
    LatencyWindow,
    ProcessSampler,
    RateWindow,
    StageLatencies,
    board_temperature,
    summarize,
    system_snapshot,
)

STATUS = {"schema": 1, "state": "degraded", "reason": "camera offline: no frame for 5 s",
          "device": "cam1", "boot_id": "2f1c", "version": "0.1.0", "since": 1796400000.5,
          "model": {"name": "regnety_400mf_inspect", "version": "1.0.0"},
          "source": "v4l2:/dev/video0"}
RESULT = {"schema": 1, "device": "cam1", "boot_id": "2f1c", "seq": 41, "frame": 57,
          "captured_at": 1796400001.25, "published_at": 1796400001.31,
          "top": [{"label": "scratch", "index": 3, "score": 0.91},
                  {"label": "ok", "index": 0, "score": 0.05}],
          "model": {"name": "regnety_400mf_inspect", "version": "1.0.0"},
          "latency_ms": {"capture_to_preprocess": 0.4, "preprocess": 1.6, "queue_wait": 0.2,
                         "inference": 35.1, "postprocess": 0.1, "total": 38.0}}
PCT = {"p50": 35.0, "p90": 37.2, "p99": 41.0, "max": 44.3}
TELEMETRY = {"schema": 1, "device": "cam1", "boot_id": "2f1c", "uptime_s": 120.5,
             "window_s": 10.0, "fps": {"capture": 25.0, "inference": 27.9, "publish": 25.0},
             "counts": {"captured": 3000, "inferred": 2990, "dropped": 10, "published": 2990,
                        "failed": 0, "worker_restarts": 0},
             "latency_ms": {"inference": PCT, "end_to_end": PCT, "preprocess": None},
             "engine": {"backend": "paddle-lite", "model": "regnety_400mf_inspect",
                        "version": "1.0.0", "threads": 2, "power_mode": "high",
                        "target": "x86", "precision": "fp32"},
             "processes": {"cpu_percent": 180.2, "rss_mb": 160.4,
                           "list": [{"pid": 10, "name": "edged", "cpu_percent": 20.1,
                                     "rss_mb": 80.0}]},
             "temperature_c": None, "load_avg": [1.2, 1.0, 0.8],
             "mqtt": {"reconnects": 0, "connected": True},
             "outbox": {"queued": 0, "held": 0, "inflight": 1, "dropped": 0, "next_seq": 1042,
                        "write_failures": 0, "writable": True, "rejected": 0}}
EXAMPLES = {"status": STATUS, "result": RESULT, "telemetry": TELEMETRY}


def validate(name, payload):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(payload)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_documented_example_payloads_validate(name):
    validate(name, EXAMPLES[name])


def mutate(payload, path, value):
    bad = copy.deepcopy(payload)
    node = bad
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return bad


@pytest.mark.parametrize("name, path, value", [
    ("status", ["state"], "sleeping"),
    ("status", ["schema"], 2),
    ("status", ["boot_id"], KeyError),
    ("status", ["reason"], 5),
    ("result", ["seq"], -1),
    ("result", ["seq"], "7"),
    ("result", ["top"], []),
    ("result", ["top", 0, "score"], 1.5),
    ("result", ["latency_ms", "inference"], KeyError),
    ("result", ["published_at"], KeyError),
    ("telemetry", ["latency_ms", "end_to_end"], {"p50": 1.0}),
    ("telemetry", ["load_avg"], [1.0]),
    ("telemetry", ["mqtt", "connected"], "yes"),
    ("telemetry", ["counts", "dropped"], -3),
    ("telemetry", ["fps"], KeyError),
])
def test_schemas_reject_broken_payloads(name, path, value):
    with pytest.raises(jsonschema.ValidationError):
        validate(name, mutate(EXAMPLES[name], path, value))


def test_every_documented_example_in_docs_is_valid():
    """docs/mqtt.md shows one example per topic; they must stay valid."""
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "mqtt.md").read_text()
    blocks = re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", text, re.S)
    assert sorted(name for name, _ in blocks) == ["reply", "result", "status", "telemetry"]
    for name, body in blocks:
        validate(name, json.loads(body))


def test_percentiles_interpolate_like_numpy():
    values = list(range(1, 101))
    assert summarize(values) == {"p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100}
    assert summarize([]) is None
    assert summarize([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


def test_latency_window_forgets_samples_older_than_window():
    window = LatencyWindow(window_s=10.0, clock=lambda: 0.0)
    window.add(100.0, now=0.0)
    for i in range(10):
        window.add(float(i), now=5.0 + i * 0.1)
    assert window.percentiles(now=6.0)["max"] == 100.0
    assert window.percentiles(now=11.0)["max"] == 9.0
    assert window.percentiles(now=100.0) is None


def test_stage_latencies_and_rates_over_a_window():
    now = [0.0]
    stages = StageLatencies(window_s=2.0, clock=lambda: now[0])
    rates = RateWindow(window_s=2.0, clock=lambda: now[0])
    for i in range(40):
        now[0] = i * 0.1
        stages.add_all({"inference": 30.0 + i % 3, "end_to_end": 40.0})
        rates.tick()
    snap = stages.snapshot()
    assert set(snap) == {"end_to_end", "inference"}
    assert snap["end_to_end"]["p99"] == 40.0 and snap["inference"]["max"] == 32.0
    assert rates.rate() == pytest.approx(10.5, abs=0.6)


def test_system_snapshot_reports_cpu_and_rss_of_given_processes():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = ProcessSampler()
        sampler.sample([os.getpid(), busy.pid])
        # CPU% spans the time since the previous sample; burn a little of our own.
        sum(i * i for i in range(2_000_000))
        snap = system_snapshot([os.getpid(), busy.pid, 999_999_999], sampler)
    finally:
        busy.kill()
        busy.wait()
    procs = snap["processes"]
    assert [p["pid"] for p in procs["list"]] == sorted([os.getpid(), busy.pid])
    assert procs["rss_mb"] > 5 and procs["cpu_percent"] > 0
    assert len(snap["load_avg"]) == 3
    assert snap["temperature_c"] is None or isinstance(snap["temperature_c"], float)
    validate("telemetry", dict(TELEMETRY, **snap))


def test_board_temperature_reads_hottest_zone(tmp_path):
    for i, milli in enumerate(("41000", "55500", "garbage")):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "temp").write_text(milli + "\n")
    assert board_temperature(str(tmp_path / "thermal_zone*/temp")) == 55.5
    assert board_temperature(str(tmp_path / "none*/temp")) is None
