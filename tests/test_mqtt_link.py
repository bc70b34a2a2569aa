"""MqttLink against a real mosquitto: status, Last Will, reconnects, queueing, auth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import MqttConfig
from edged.mqtt.link import MqttLink
from edged.mqtt import topics
from helpers.tcp_proxy import TcpProxy

HELPERS = Path(__file__).resolve().parent / "helpers"


def fast_cfg(url: str, **kw) -> MqttConfig:
    return MqttConfig(broker=url, reconnect_min_s=0.05, reconnect_max_s=0.3, **kw)


@pytest.fixture
def links():
    made = []

    def make(url: str, device: str = "cam1", **kw) -> MqttLink:
        link = MqttLink(fast_cfg(url, **kw), device, boot_id="boot-1")
        made.append(link)
        return link

    yield make
    for link in made:
        link.stop(timeout=1)


def test_status_is_retained_with_documented_fields(mqtt_broker, mqtt_collector, links):
    link = links(mqtt_broker.url)
    link.start()
    link.set_status("online", None, model={"name": "m", "version": "1"}, source="file:x")
    assert link.wait_connected(10)
    # the status may reach the broker after a subscriber that is already there (then it
    # arrives live, without the retain flag): wait until the broker has it, then subscribe
    mqtt_collector(mqtt_broker, "edged/+/status").wait_for(lambda m: m.payload["state"] == "online")
    late = mqtt_collector(mqtt_broker, "edged/+/status")
    got = late.wait_for(lambda m: m.retain and m.payload["state"] == "online")[0]
    assert got.topic == "edged/cam1/status"
    status = got.payload
    assert status["schema"] == 1 and status["reason"] is None
    assert status["device"] == "cam1" and status["boot_id"] == "boot-1"
    assert status["model"] == {"name": "m", "version": "1"} and status["source"] == "file:x"
    assert isinstance(status["since"], float) and status["version"]


def test_status_since_changes_only_when_state_or_reason_changes(mqtt_broker, links):
    link = links(mqtt_broker.url)
    link.set_status("online", None, fps=1)
    first = link.status["since"]
    link.set_status("online", None, fps=2)
    assert link.status["since"] == first and link.status["fps"] == 2
    link.set_status("degraded", "camera offline")
    assert link.status["since"] >= first and link.status["reason"] == "camera offline"
    with pytest.raises(ValueError):
        link.set_status("sleepy")


def test_last_will_marks_device_offline_after_kill_9(mqtt_broker, mqtt_collector):
    collector = mqtt_collector(mqtt_broker, "edged/+/status")
    child = subprocess.Popen([sys.executable, str(HELPERS / "link_child.py"), mqtt_broker.url,
                              "cam-kill"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        collector.wait_for(lambda m: m.payload["state"] == "online")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        will = collector.wait_for(lambda m: m.payload["state"] == "offline")[0]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert will.topic == "edged/cam-kill/status"
    assert will.payload["device"] == "cam-kill" and will.payload["boot_id"] == "child-boot"
    assert will.payload["schema"] == 1 and will.payload["reason"] == "connection lost"
    late = mqtt_collector(mqtt_broker, "edged/cam-kill/status")
    retained = late.wait_for()[0]
    assert retained.retain and retained.payload["state"] == "offline"


def test_status_is_republished_after_broker_restart(mqtt_broker, mqtt_collector, links):
    link = links(mqtt_broker.url)
    link.set_status("degraded", "camera offline")
    link.start()
    assert link.wait_connected(10)
    collector = mqtt_collector(mqtt_broker, "edged/+/status")
    collector.wait_for(lambda m: m.payload["state"] == "degraded")
    subscribed = collector.subscriptions
    mqtt_broker.stop()          # persistence is off: the retained status is gone
    assert link.wait_connected(10, connected=False)
    mqtt_broker.start()
    collector.wait_subscribed(subscribed + 1)
    assert link.wait_until(lambda: link.reconnects == 1 and link.connected, 15)
    late = mqtt_collector(mqtt_broker, "edged/cam1/status")
    got = late.wait_for(lambda m: m.retain)[0]
    assert got.payload["state"] == "degraded" and got.payload["reason"] == "camera offline"


def test_start_never_blocks_when_broker_is_down(mqtt_broker, mqtt_collector, links):
    mqtt_broker.stop()
    link = links(mqtt_broker.url)
    link.start()
    link.set_status("online")
    assert link.publish_result({"seq": 0}) is True     # queued, not an error
    assert not link.connected
    mqtt_broker.start()
    assert link.wait_connected(15)
    late = mqtt_collector(mqtt_broker, "edged/+/status")
    assert late.wait_for(lambda m: m.retain)[0].payload["state"] == "online"


def test_results_published_while_offline_arrive_in_order_after_reconnect(
        mqtt_broker, mqtt_collector, links):
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    try:
        collector = mqtt_collector(mqtt_broker, "edged/+/result")
        link = links(proxy.url)
        link.start()
        assert link.wait_connected(10)
        link.publish_result({"seq": 0})
        collector.wait_for(lambda m: m.payload["seq"] == 0)
        proxy.cut()
        assert link.wait_connected(10, connected=False)
        for seq in range(1, 21):
            link.publish_result({"seq": seq})
        proxy.restore()
        got = collector.wait_for(lambda m: True, timeout=15, count=21)
        assert [m.payload["seq"] for m in got] == list(range(21))
        assert link.reconnects == 1
    finally:
        proxy.close()


def test_stop_sends_pending_results_then_offline_status(mqtt_broker, mqtt_collector, links):
    collector = mqtt_collector(mqtt_broker, "edged/cam1/#")
    link = links(mqtt_broker.url)
    link.set_status("online", model="m")
    link.start()
    assert link.wait_connected(10)
    for seq in range(200):
        link.publish_result({"seq": seq})
    link.publish_telemetry({"uptime_s": 1})
    link.stop(timeout=10)
    assert link.pending() == 0
    results = collector.wait_for(lambda m: m.topic.endswith("/result"), count=200)
    assert [m.payload["seq"] for m in results] == list(range(200))
    collector.wait_for(lambda m: m.topic.endswith("/telemetry"))
    offline = collector.wait_for(lambda m: m.topic.endswith("/status")
                                 and m.payload["state"] == "offline")[0]
    assert offline.payload["reason"] == "shutdown" and offline.payload["model"] == "m"


def test_mqtt_311_option_publishes_results(mqtt_broker, mqtt_collector, links):
    collector = mqtt_collector(mqtt_broker, "edged/+/result", protocol=311)
    link = links(mqtt_broker.url, protocol="3.1.1")
    link.start()
    assert link.wait_connected(10)
    link.publish_result({"seq": 5})
    assert collector.wait_for()[0].payload == {"seq": 5}


def test_connection_refused_is_never_reported_connected_then_password_file_works(
        mosquitto_executable, tmp_path, mqtt_collector, links):
    from helpers.mqtt import start_broker_with

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "cam", "s3cret"], check=True,
                   capture_output=True)
    pwfile.chmod(0o600)
    broker = start_broker_with(mosquitto_executable, tmp_path / "auth",
                               f"password_file {pwfile}\n", allow_anonymous=False)
    try:
        anonymous = links(broker.url, device="anon")
        anonymous.start()
        assert anonymous.wait_until(lambda: anonymous.refused >= 1, 10)
        assert not anonymous.connected
        secret = tmp_path / "cam.pw"
        secret.write_text("s3cret\n")
        link = links(broker.url, device="cam", username="cam", password_file=str(secret))
        link.start()
        assert link.wait_connected(10)
        assert "s3cret" not in repr(link) and "s3cret" not in repr(link.cfg)
    finally:
        broker.close()


def test_topic_helpers_format_and_parse():
    assert topics.status_topic("edged", "cam1") == "edged/cam1/status"
    assert topics.all_devices("site/edged", "result") == "site/edged/+/result"
    assert topics.parse("site/edged", "site/edged/cam1/telemetry") == ("cam1", "telemetry")
    assert topics.parse("edged", "edged/cam1/ota/chunk") is None
    assert topics.shared("dash", "edged/+/result") == "$share/dash/edged/+/result"
    with pytest.raises(ValueError):
        topics.result_topic("edged", "a/b")
    assert json.loads(json.dumps(topics.DeviceTopics("p", "d").telemetry)) == "p/d/telemetry"
