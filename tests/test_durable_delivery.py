"""Results survive a broker outage and a daemon restart (real mosquitto, real daemon)."""

from __future__ import annotations

import sqlite3

from helpers.daemon import DaemonProcess, write_video

DEVICE = "cam-d"
RESULT_TOPIC = f"edged/{DEVICE}/result"


def _queued(state_dir) -> int:
    return sqlite3.connect(str(state_dir / "outbox.sqlite")).execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def test_results_made_while_the_broker_was_down_arrive_after_a_restart_in_order(
        tmp_path, mqtt_broker, mqtt_collector):
    video = write_video(tmp_path / "clip.mp4", frames=12)
    source = f"file:{video}?loop=0&rate=max"
    config = {"outbox": {"drain_timeout_s": 0.5}}
    mqtt_broker.stop()
    first = DaemonProcess(tmp_path / "d", source, mqtt_broker.url, DEVICE, config=config)
    assert first.wait(120) == 0, first.log()  # the file ends; nothing could be delivered
    assert _queued(tmp_path / "d" / "state") == 12

    mqtt_broker.start()
    sub = mqtt_collector(mqtt_broker, RESULT_TOPIC)
    second = DaemonProcess(tmp_path / "d", source, mqtt_broker.url, DEVICE, config=config)
    assert second.wait(120) == 0, second.log()
    got = sub.wait_for(lambda m: m.topic == RESULT_TOPIC, count=24, timeout=30)
    seqs = sorted({m.payload["seq"] for m in got})
    assert seqs == list(range(24)), "a result was lost or numbered twice"
    first_seen = []
    for m in got:
        if m.payload["seq"] not in first_seen:
            first_seen.append(m.payload["seq"])
    assert first_seen == seqs, "results were delivered out of order"
    assert len({m.payload["boot_id"] for m in got}) == 2  # consumers can tell the runs apart
    assert _queued(tmp_path / "d" / "state") == 0
