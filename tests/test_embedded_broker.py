"""The embedded demo broker speaks enough MQTT for edged: pub/sub, retain, LWT, v3.1.1/v5."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import MqttConfig
from edged.mqtt.embedded_broker import EmbeddedBroker, topic_matches
from edged.mqtt.link import MqttLink

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def broker():
    b = EmbeddedBroker().start()
    yield b
    b.stop()


@pytest.fixture
def link(broker):
    cfg = MqttConfig(broker=broker.url, reconnect_min_s=0.05, reconnect_max_s=0.3)
    lk = MqttLink(cfg, "cam1", boot_id="b1")
    yield lk
    lk.stop(timeout=2)


@pytest.mark.parametrize("protocol", [5, 311])
def test_results_reach_wildcard_subscriber(broker, mqtt_collector, protocol):
    collector = mqtt_collector(broker, "edged/+/result", protocol=protocol)
    cfg = MqttConfig(broker=broker.url, protocol="5" if protocol == 5 else "3.1.1")
    lk = MqttLink(cfg, "cam1", boot_id="b1")
    lk.start()
    try:
        assert lk.wait_connected(10)
        for seq in range(50):
            lk.publish_result({"seq": seq})
        got = collector.wait_for(count=50)
        assert [m.payload["seq"] for m in got] == list(range(50))
        assert not got[0].retain and got[0].topic == "edged/cam1/result"
    finally:
        lk.stop(timeout=5)
    assert lk.pending() == 0


def test_retained_status_reaches_late_subscriber_and_stop_marks_offline(
        broker, link, mqtt_collector):
    link.set_status("online", model="m")
    link.start()
    assert link.wait_connected(10)
    # The status goes out right after CONNACK; wait for it through a subscriber.
    mqtt_collector(broker, "edged/cam1/status").wait_for(lambda m: m.payload["state"] == "online")
    late = mqtt_collector(broker, "edged/+/status")
    got = late.wait_for()[0]
    assert got.retain and got.payload["model"] == "m"
    link.stop(timeout=5)
    late.wait_for(lambda m: m.payload["state"] == "offline" and m.payload["reason"] == "shutdown")


def test_last_will_published_when_client_is_killed(broker, mqtt_collector):
    collector = mqtt_collector(broker, "edged/+/status")
    child = subprocess.Popen([sys.executable, str(HELPERS / "link_child.py"), broker.url, "k9"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        collector.wait_for(lambda m: m.payload["state"] == "online")
        os.kill(child.pid, signal.SIGKILL)
        will = collector.wait_for(lambda m: m.payload["state"] == "offline")[0]
    finally:
        child.kill()
        child.wait()
    assert will.payload["reason"] == "connection lost" and will.topic == "edged/k9/status"


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("edged/+/result", "edged/cam1/result", True),
    ("edged/+/result", "edged/cam1/status", False),
    ("edged/#", "edged/cam1/ota/chunk", True),
    ("edged/#", "edged", True),
    ("#", "$SYS/x", False),
    ("a/+", "a/b/c", False),
    ("a/b", "a/b", True),
])
def test_topic_filter_matching(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected
