"""The daemon end to end: real mosquitto, real Paddle Lite worker, real OpenCV."""

from __future__ import annotations

import csv
import os
import shutil
import signal

import jsonschema
import psutil
import pytest

from edged.schemas import load_schema
from helpers.daemon import DaemonProcess, bundled_sample, direct_top1, model_dir, write_video

pytestmark = pytest.mark.slow
FAST_TELEMETRY = {"telemetry": {"interval_s": 0.5}}


def topic(device: str, kind: str) -> str:
    return f"edged/{device}/{kind}"


def payloads(collector, device: str, kind: str):
    return [m.payload for m in collector.messages if m.topic == topic(device, kind)]


def status_is(device: str, state: str, reason_part: str = ""):
    def match(m):
        return (m.topic == topic(device, "status") and m.payload["state"] == state
                and reason_part in (m.payload.get("reason") or ""))
    return match


def worker_gone(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (or is a zombie waiting for its new parent to reap it)."""
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE
    return True


def assert_consecutive(results):
    assert [r["seq"] for r in results] == list(range(len(results))), "gap or reorder in seq"


def test_every_frame_of_a_file_is_published_in_order_without_seq_gaps(
        tmp_path, mqtt_broker, mqtt_collector):
    video = write_video(tmp_path / "clip.mp4", frames=15)
    sub = mqtt_collector(mqtt_broker, "edged/#")
    daemon = DaemonProcess(tmp_path / "d", f"file:{video}?loop=0&rate=max", mqtt_broker.url, "cam-a")
    assert daemon.wait(120) == 0, daemon.log()
    results = payloads(sub, "cam-a", "result")
    assert_consecutive(results)
    assert [r["frame"] for r in results] == list(range(15))
    assert len({r["boot_id"] for r in results}) == 1
    for r in results:
        jsonschema.validate(r, load_schema("result"))
    final = sub.wait_for(status_is("cam-a", "offline", "shutdown"), timeout=10)[-1].payload
    jsonschema.validate(final, load_schema("status"))


def test_pipeline_results_equal_direct_inference_frame_by_frame(tmp_path, mqtt_broker, mqtt_collector):
    """Double-buffered shared memory must never pair a frame with another's output."""
    video = write_video(tmp_path / "varied.mp4", frames=24)
    sub = mqtt_collector(mqtt_broker, "edged/cam-r/result")
    daemon = DaemonProcess(tmp_path / "d", f"file:{video}?loop=0&rate=max", mqtt_broker.url, "cam-r")
    assert daemon.wait(120) == 0, daemon.log()
    got = [(r["top"][0]["label"], r["top"][0]["score"]) for r in payloads(sub, "cam-r", "result")]
    expected = direct_top1(model_dir(), video)
    assert len(got) == len(expected) == 24
    assert len(set(expected)) > 1, "the clip should give varied outputs"
    for frame, ((label, score), (want_label, want_score)) in enumerate(zip(got, expected)):
        assert label == want_label and score == pytest.approx(want_score, abs=1e-4), frame


def test_sample_video_results_match_the_label_sidecar(tmp_path, mqtt_broker, mqtt_collector):
    video, labels_csv = bundled_sample()
    with open(labels_csv, newline="") as fh:
        expected = {int(row["frame"]): row["label"] for row in csv.DictReader(fh)}
    sub = mqtt_collector(mqtt_broker, "edged/cam-s/result")
    daemon = DaemonProcess(tmp_path / "d", f"file:{video}?loop=0&rate=max", mqtt_broker.url, "cam-s")
    assert daemon.wait(600) == 0, daemon.log()
    results = payloads(sub, "cam-s", "result")
    assert_consecutive(results)
    assert [r["frame"] for r in results] == sorted(expected)
    hits = sum(r["top"][0]["label"] == expected[r["frame"]] for r in results)
    assert hits >= 0.95 * len(expected), f"{hits}/{len(expected)} labels match the sidecar"


def test_status_online_while_running_and_last_will_offline_after_kill_9(
        tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-k/#")
    daemon = DaemonProcess(tmp_path / "d", "synthetic:320x240@10", mqtt_broker.url, "cam-k",
                           config=FAST_TELEMETRY)
    try:
        online = sub.wait_for(status_is("cam-k", "online"), timeout=60)[-1]
        jsonschema.validate(online.payload, load_schema("status"))
        worker = sub.wait_for(lambda m: m.topic.endswith("/telemetry"),
                              timeout=30)[-1].payload["engine"]["worker_pid"]
        daemon.signal(signal.SIGKILL)
        will = sub.wait_for(status_is("cam-k", "offline"), timeout=30)[-1].payload
        assert will["boot_id"] == online.payload["boot_id"] and will["reason"] == "connection lost"
        assert worker_gone(worker, timeout=10), "the worker outlived its daemon"
    finally:
        daemon.kill()
    late = mqtt_collector(mqtt_broker, "edged/cam-k/status")
    retained = late.wait_for(status_is("cam-k", "offline"), timeout=10)[-1]
    assert retained.retain


def test_killed_worker_is_restarted_and_results_continue(tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-w/#")
    daemon = DaemonProcess(tmp_path / "d", "synthetic:320x240@15", mqtt_broker.url, "cam-w",
                           config=FAST_TELEMETRY)
    try:
        first = sub.wait_for(lambda m: m.topic.endswith("/telemetry")
                             and m.payload["engine"].get("worker_pid"), timeout=60)[-1].payload
        jsonschema.validate(first, load_schema("telemetry"))
        os.kill(first["engine"]["worker_pid"], signal.SIGKILL)
        after = sub.wait_for(lambda m: m.topic.endswith("/telemetry")
                             and m.payload["counts"]["worker_restarts"] >= 1, timeout=60)[-1].payload
        assert after["engine"]["worker_pid"] != first["engine"]["worker_pid"]
        seen = len(payloads(sub, "cam-w", "result"))
        sub.wait_for(lambda m: m.topic.endswith("/result"), count=seen + 5, timeout=60)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    assert_consecutive(payloads(sub, "cam-w", "result"))


def test_hung_worker_is_killed_and_replaced(tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-h/#")
    config = dict(FAST_TELEMETRY, engine={"hang_min_s": 1.0, "hang_factor": 3.0})
    daemon = DaemonProcess(tmp_path / "d", "synthetic:320x240@15", mqtt_broker.url, "cam-h",
                           config=config)
    try:
        first = sub.wait_for(lambda m: m.topic.endswith("/telemetry")
                             and m.payload["engine"].get("worker_pid"), timeout=60)[-1].payload
        os.kill(first["engine"]["worker_pid"], signal.SIGSTOP)  # alive but never answers
        sub.wait_for(status_is("cam-h", "degraded", "inference worker"), timeout=30)
        sub.wait_for(lambda m: m.topic.endswith("/telemetry")
                     and m.payload["counts"]["worker_restarts"] >= 1, timeout=30)
        sub.wait_for(status_is("cam-h", "online"), count=2, timeout=30)
        seen = len(payloads(sub, "cam-h", "result"))
        sub.wait_for(lambda m: m.topic.endswith("/result"), count=seen + 5, timeout=60)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    assert_consecutive(payloads(sub, "cam-h", "result"))  # the hung frame is not a gap in seq


def test_removed_source_goes_degraded_then_online_when_it_returns(
        tmp_path, mqtt_broker, mqtt_collector):
    video = write_video(tmp_path / "clip.mp4", frames=10)
    sub = mqtt_collector(mqtt_broker, "edged/cam-f/#")
    daemon = DaemonProcess(tmp_path / "d", f"file:{video}?rate=max", mqtt_broker.url, "cam-f")
    try:
        sub.wait_for(status_is("cam-f", "online"), timeout=60)
        hidden = tmp_path / "hidden.mp4"
        shutil.move(str(video), hidden)
        degraded = sub.wait_for(status_is("cam-f", "degraded", "camera offline"), timeout=30)
        assert "not found" in degraded[-1].payload["reason"]
        seen = len(payloads(sub, "cam-f", "result"))
        shutil.move(str(hidden), video)
        sub.wait_for(status_is("cam-f", "online"), count=2, timeout=30)
        sub.wait_for(lambda m: m.topic.endswith("/result"), count=seen + 5, timeout=60)  # frames resume
        assert daemon.stop() == 0, daemon.log()
        sub.wait_for(status_is("cam-f", "offline", "shutdown"), timeout=10)
    finally:
        daemon.kill()
    assert_consecutive(payloads(sub, "cam-f", "result"))


def test_unreadable_camera_device_is_retried_and_reported_degraded(
        tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-v/status")
    daemon = DaemonProcess(tmp_path / "d", "v4l2:/dev/video-missing", mqtt_broker.url, "cam-v")
    try:
        status = sub.wait_for(status_is("cam-v", "degraded", "camera offline"), timeout=60)[-1]
        assert "/dev/video-missing: no such device" in status.payload["reason"]
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    assert "retrying" in daemon.log()


def test_sigint_finishes_in_flight_frames_and_goes_offline(tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-i/#")
    daemon = DaemonProcess(tmp_path / "d", "synthetic:320x240@30", mqtt_broker.url, "cam-i")
    try:
        sub.wait_for(status_is("cam-i", "online"), timeout=60)
        sub.wait_for(lambda m: m.topic.endswith("/result"), count=3, timeout=30)
        daemon.signal(signal.SIGINT)
        assert daemon.wait(30) == 0, daemon.log()
    finally:
        daemon.kill()
    sub.wait_for(status_is("cam-i", "offline", "shutdown"), timeout=10)
    assert_consecutive(payloads(sub, "cam-i", "result"))
    assert "Traceback" not in daemon.log()


def test_max_frames_stops_after_exactly_that_many_results(tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, "edged/cam-m/result")
    daemon = DaemonProcess(tmp_path / "d", "synthetic:320x240@0", mqtt_broker.url, "cam-m",
                           extra_args=["--max-frames", "7"])
    assert daemon.wait(120) == 0, daemon.log()
    results = payloads(sub, "cam-m", "result")
    assert_consecutive(results)
    assert len(results) == 7 and [r["frame"] for r in results] == list(range(7))
