"""The broker and collector fixtures themselves behave as other tests assume."""

from __future__ import annotations

import json

import paho.mqtt.publish as publish


def _publish(broker, topic, payload, retain=False):
    publish.single(topic, json.dumps(payload), qos=1, retain=retain,
                   hostname=broker.host, port=broker.port)


def test_collector_receives_json_messages_matching_wildcard(mqtt_broker, mqtt_collector):
    collector = mqtt_collector(mqtt_broker, "edged/+/result")
    _publish(mqtt_broker, "edged/cam1/result", {"seq": 1})
    _publish(mqtt_broker, "edged/cam1/other", {"seq": 2})
    got = collector.wait_for(lambda m: m.payload["seq"] == 1)
    assert got[0].topic == "edged/cam1/result"
    assert got[0].retain is False
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"


def test_collector_sees_retained_flag(mqtt_broker, mqtt_collector):
    _publish(mqtt_broker, "edged/cam1/status", {"state": "online"}, retain=True)
    collector = mqtt_collector(mqtt_broker, "edged/+/status")
    got = collector.wait_for()
    assert got[0].retain is True and got[0].payload == {"state": "online"}


def test_wait_for_reports_what_arrived_on_timeout(mqtt_broker, mqtt_collector):
    collector = mqtt_collector(mqtt_broker, "edged/#")
    _publish(mqtt_broker, "edged/cam1/result", {"seq": 7})
    collector.wait_for()
    try:
        collector.wait_for(lambda m: m.payload["seq"] == 8, timeout=0.2)
    except AssertionError as exc:
        assert "'seq': 7" in str(exc)
    else:
        raise AssertionError("wait_for should have timed out")


def test_broker_restarts_on_same_port_and_collector_resubscribes(mqtt_broker, mqtt_collector):
    collector = mqtt_collector(mqtt_broker, "edged/+/result")
    port = mqtt_broker.port
    subscribed = collector.subscriptions
    mqtt_broker.stop()
    mqtt_broker.start()
    assert mqtt_broker.port == port
    collector.wait_subscribed(subscribed + 1)
    _publish(mqtt_broker, "edged/cam1/result", {"seq": 1})
    assert collector.wait_for()[0].payload == {"seq": 1}
