"""DurableResults in-process against a real mosquitto: paced backlog, full disk, bounds."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

from edged.config import MqttConfig
from edged.mqtt.delivery import DurableResults
from edged.mqtt.link import MqttLink
from edged.mqtt.outbox import Outbox
from helpers.disk import fill
from helpers.mqtt import start_broker_with

DEVICE = "cam-r"
RESULT = f"edged/{DEVICE}/result"


def make_link(url: str) -> MqttLink:
    return MqttLink(MqttConfig(broker=url, reconnect_min_s=0.05, reconnect_max_s=0.3), DEVICE, "boot-1")


@contextmanager
def delivering(url: str, outbox: Outbox, **options: Any) -> Iterator[DurableResults]:
    """A started link and DurableResults over `outbox`; both stopped afterwards."""
    link = make_link(url)
    results = DurableResults(link, lambda: outbox, **options)
    link.start()
    results.start()
    try:
        yield results
    finally:
        results.stop()
        link.stop(timeout=1)


def seqs_of(messages) -> list:
    return [m.payload["seq"] for m in messages if m.topic == RESULT]


def test_with_a_drain_rate_live_results_overtake_a_paced_backlog(tmp_path, mqtt_broker, mqtt_collector):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for i in range(60):  # left over from an outage
        outbox.append(RESULT, {"n": i})
    sub = mqtt_collector(mqtt_broker, RESULT)
    with delivering(mqtt_broker.url, outbox, drain_rate=20.0) as results:
        assert results.link.wait_connected(10)
        sub.wait_for_topic(RESULT, count=1, timeout=10)  # the backlog has started
        for i in range(5):
            assert results.submit({"live": i})
        got = sub.wait_until(lambda msgs: set(range(65)) <= set(seqs_of(msgs)), 30, "all 65 results")
        order = seqs_of(got)
        first_live = min(order.index(s) for s in range(60, 65))
        assert first_live < order.index(59), "live results waited behind the whole backlog"
        assert order[:first_live] == sorted(order[:first_live])  # the backlog itself stays in order
        assert results.drain(10) == 0


def test_without_a_drain_rate_everything_goes_strictly_in_seq_order(tmp_path, mqtt_broker, mqtt_collector):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for i in range(100):
        outbox.append(RESULT, {"n": i})
    sub = mqtt_collector(mqtt_broker, RESULT)
    with delivering(mqtt_broker.url, outbox) as results:
        for i in range(20):
            results.submit({"live": i})
        got = sub.wait_until(lambda msgs: len(seqs_of(msgs)) >= 120, 30, "120 results")
        assert seqs_of(got) == list(range(120))


def test_full_disk_holds_results_in_memory_within_the_bound_and_writes_them_later(
        tmp_path, small_disk, mqtt_broker, mqtt_collector):
    outbox = Outbox(small_disk / "outbox.sqlite", when_full="drop_oldest")
    link = make_link(mqtt_broker.url)  # never started: everything stays in the outbox
    results = DurableResults(link, lambda: outbox, max_held=5)
    results.start()
    filler = small_disk / "filler"
    try:
        fill(filler)
        for i in range(100):  # until a write needs a page the disk no longer has
            results.submit({"n": i, "pad": "x" * 2000})
            if not results.flush(timeout=2):
                break
        assert results.problem and "outbox not writable" in results.problem and "full" in results.problem
        for i in range(10):
            results.submit({"n": 100 + i})
        assert not results.flush(timeout=2.5)  # a full retry cycle: the bound has been applied
        stats = results.stats()
        assert not stats["writable"] and stats["held"] == 5 and stats["dropped"] >= 5
        filler.unlink()
        assert results.flush(timeout=10) and results.problem is None
        stored = [json.loads(p.payload) for p in outbox.pending(limit=1000)]
        assert [m["seq"] for m in stored] == list(range(len(stored)))  # no seq lost to the failure
        assert [m["n"] for m in stored[-5:]] == [105, 106, 107, 108, 109]  # drop_oldest kept the newest
        assert outbox.stats()["dropped"] == results.stats()["dropped"] >= 5  # the drops were saved
    finally:
        results.stop()


def test_results_the_broker_refuses_are_counted_and_reported_not_kept(tmp_path, mosquitto_executable):
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {RESULT}\ntopic readwrite edged/{DEVICE}/status\n")
    broker = start_broker_with(mosquitto_executable, tmp_path / "mosq", f"acl_file {acl}\n")
    try:
        with delivering(broker.url, Outbox(tmp_path / "outbox.sqlite")) as results:
            for i in range(3):
                results.submit({"n": i})
            assert results.drain(10) == 0  # acknowledged, though with "Not authorized"
            assert results.stats()["rejected"] == 3
            assert results.refused_by_broker == "broker refuses results: Not authorized"
    finally:
        broker.close()
