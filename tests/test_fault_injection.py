"""Fault injection against the real daemon: nothing produced is lost, nothing needs a human.

Each test runs `edged run` as a child process on a real mosquitto, injects one fault
(broker stopped, daemon killed, network black-holed, disk full) and checks the end
state: every `seq` the daemon produced arrives exactly once after deduplication, in
order, the outbox is empty, and status/telemetry said what happened. Each test prints
one `fault-report` line (run with `-s` to see them): produced, delivered, duplicates,
lost, and how long recovery took.

The sleeps in these tests are the faults' durations (a broker down for 15 s), never a
way to wait for something to happen: that is always a wait on a condition.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from helpers.daemon import DaemonProcess, bundled_sample
from helpers.disk import fill
from helpers.poll import poll_until
from helpers.mqtt import Message, start_broker_with
from helpers.tcp_proxy import TcpProxy

DEVICE = "cam-f"
RESULT = f"edged/{DEVICE}/result"
STATUS = f"edged/{DEVICE}/status"
TELEMETRY = f"edged/{DEVICE}/telemetry"
COMMAND = f"edged/{DEVICE}/cmd"
REPLY = f"edged/{DEVICE}/reply"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus" / "commands"
FULL_RATE = f"file:{bundled_sample()[0]}?rate=max"  # as fast as inference, looping
QUICK_RECONNECT = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ helpers
def outbox_counters(state_dir: Path) -> Tuple[int, int]:
    """(results stored and not yet acknowledged, next seq), read while the daemon runs."""
    db = sqlite3.connect(f"file:{state_dir / 'outbox.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        queued = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        next_seq = db.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()[0]
        return queued, next_seq
    finally:
        db.close()


def result_seqs(messages: List[Message]) -> List[int]:
    return [m.payload["seq"] for m in messages if m.topic == RESULT]


def wait_for_seqs_below(sub, upto: int, timeout: float) -> float:
    """Wait until every seq < upto has arrived; returns the time taken."""
    start = time.monotonic()
    sub.wait_until(lambda msgs: set(range(upto)) <= set(result_seqs(msgs)), timeout,
                   f"every seq below {upto}")
    return time.monotonic() - start


def check_delivery(sub, state_dir: Path, name: str, strict_order: bool = True, **timings: float) -> Dict:
    """After the daemon exited: every produced seq exactly once, in order, outbox empty."""
    queued, produced = outbox_counters(state_dir)
    wait_for_seqs_below(sub, produced, timeout=60)
    seqs = result_seqs(sub.messages)
    unique = sorted(set(seqs))
    report = {"produced": produced, "received": len(seqs), "duplicates": len(seqs) - len(unique),
              "lost": len(set(range(produced)) - set(unique)), "left_in_outbox": queued}
    report.update({k: round(v, 2) for k, v in timings.items()})
    print(f"\nfault-report {name}: " + " ".join(f"{k}={v}" for k, v in report.items()))
    assert unique == list(range(produced)), "a result was lost or numbered twice"
    assert report["lost"] == 0 and queued == 0
    if strict_order:
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == unique, "results arrived out of order"
    return report


@pytest.fixture
def persistent_broker(mosquitto_executable: str, tmp_path: Path):
    """A mosquitto that keeps sessions and queued messages across its own restarts."""
    broker = start_broker_with(mosquitto_executable, tmp_path / "mosquitto", "", persistence=True)
    yield broker
    broker.close()


def start_daemon(tmp_path: Path, broker_url: str, **sections: Dict) -> DaemonProcess:
    config = {"mqtt": dict(QUICK_RECONNECT), "telemetry": {"interval_s": 1.0},
              "outbox": {"drain_timeout_s": 10.0}}
    for name, keys in sections.items():
        config.setdefault(name, {}).update(keys)
    return DaemonProcess(tmp_path / "d", FULL_RATE, broker_url, DEVICE, config=config)


# ------------------------------------------------------------------ 1. broker restart
def test_broker_stopped_for_15_s_at_full_rate_loses_nothing(tmp_path, persistent_broker, mqtt_collector):
    sub = mqtt_collector(persistent_broker, RESULT, persistent_session=True)
    daemon = start_daemon(tmp_path, persistent_broker.url)
    state = tmp_path / "d" / "state"
    try:
        sub.wait_for_topic(RESULT, count=20, timeout=120)
        persistent_broker.stop()
        _, before = outbox_counters(state)
        time.sleep(15)  # the outage
        queued, backlog_end = outbox_counters(state)
        assert queued >= backlog_end - before - 20 > 0, "results made during the outage were not stored"
        persistent_broker.start()
        recovery = wait_for_seqs_below(sub, backlog_end, timeout=120)
        sub.wait_until(lambda msgs: max(result_seqs(msgs)) >= backlog_end + 10, 60, "live results")
        assert daemon.stop() == 0, daemon.log()
        check_delivery(sub, state, "broker-stopped-15s", backlog=backlog_end - before,
                       backlog_delivered_s=recovery)
    finally:
        daemon.kill()


# ------------------------------------------------------------------ 2. kill -9 while the broker is down
def test_daemon_killed_while_the_broker_is_down_resumes_delivery_after_both_return(
        tmp_path, persistent_broker, mqtt_collector):
    sub = mqtt_collector(persistent_broker, RESULT, persistent_session=True)
    first = start_daemon(tmp_path, persistent_broker.url)
    state = tmp_path / "d" / "state"
    second = None
    try:
        sub.wait_for_topic(RESULT, count=10, timeout=120)
        persistent_broker.stop()
        poll_until(lambda: outbox_counters(state)[0] >= 30, 60, "a backlog of 30")
        first.kill()  # SIGKILL: no shutdown code runs
        _, at_kill = outbox_counters(state)
        second = start_daemon(tmp_path, persistent_broker.url)
        poll_until(lambda: outbox_counters(state)[1] >= at_kill + 20, 120, "the restarted daemon storing results")
        persistent_broker.start()
        _, now = outbox_counters(state)
        recovery = wait_for_seqs_below(sub, now, timeout=120)
        assert second.stop() == 0, second.log()
        check_delivery(sub, state, "kill-9-while-broker-down", backlog_delivered_s=recovery)
        assert len({m.payload["boot_id"] for m in sub.messages if m.topic == RESULT}) == 2
    finally:
        first.kill()
        if second is not None:
            second.kill()


# ------------------------------------------------------------------ 3. broker down at start
def test_broker_down_for_10_s_at_start_the_daemon_works_and_connects_when_it_appears(
        tmp_path, persistent_broker, mqtt_collector):
    sub = mqtt_collector(persistent_broker, RESULT, STATUS, persistent_session=True)
    persistent_broker.stop()
    # default reconnect backoff (1 s doubling): what a device in the field does
    daemon = start_daemon(tmp_path, persistent_broker.url, mqtt={"reconnect_min_s": 1.0, "reconnect_max_s": 60.0})
    state = tmp_path / "d" / "state"
    try:
        poll_until(lambda: (state / "outbox.sqlite").exists() and outbox_counters(state)[1] >= 20, 120,
                 "results stored while the broker is down")
        time.sleep(10 - 1)  # the rest of the outage (storing 20 results took about 1 s)
        assert daemon.proc.poll() is None, daemon.log()
        persistent_broker.start()
        t_up = time.monotonic()
        sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "online", timeout=120)
        connected_after = time.monotonic() - t_up
        _, now = outbox_counters(state)
        recovery = wait_for_seqs_below(sub, now, timeout=120)
        assert daemon.stop() == 0, daemon.log()
        check_delivery(sub, state, "broker-down-at-start-10s", connected_after_s=connected_after,
                       backlog_delivered_s=recovery)
    finally:
        daemon.kill()


# ------------------------------------------------------------------ 4. network black hole
def test_network_black_hole_is_detected_by_keepalive_and_delivery_resumes(
        tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, RESULT, STATUS, TELEMETRY)
    proxy = TcpProxy(mqtt_broker.host, mqtt_broker.port)
    daemon = start_daemon(tmp_path, proxy.url, mqtt={"keepalive_s": 2})
    state = tmp_path / "d" / "state"
    try:
        sub.wait_for_topic(RESULT, count=20, timeout=120)
        proxy.stall()
        t_stall = time.monotonic()
        # the broker misses the keepalive too and publishes the Last Will
        sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "offline", timeout=30)
        broker_noticed = time.monotonic() - t_stall
        time.sleep(max(0.0, 8 - broker_noticed))  # the rest of an 8 s black hole
        _, stalled_end = outbox_counters(state)
        proxy.heal()
        t_heal = time.monotonic()
        recovery = wait_for_seqs_below(sub, stalled_end, timeout=120)
        sub.wait_for(lambda m: m.topic == TELEMETRY and m.payload["mqtt"]["reconnects"] >= 1, timeout=30)
        assert daemon.stop() == 0, daemon.log()
        check_delivery(sub, state, "network-black-hole-8s", broker_noticed_s=broker_noticed,
                       backlog_delivered_s=recovery, since_heal_s=time.monotonic() - t_heal)
    finally:
        daemon.kill()
        proxy.cut()


# ------------------------------------------------------------------ 7. disk full
def test_disk_full_is_reported_and_results_are_kept_until_space_returns(
        tmp_path, small_disk, persistent_broker, mqtt_collector):
    sub = mqtt_collector(persistent_broker, RESULT, STATUS, TELEMETRY, persistent_session=True)
    state = small_disk / "state"
    daemon = start_daemon(tmp_path, persistent_broker.url, device={"state_dir": str(state)})
    filler = small_disk / "filler"
    try:
        sub.wait_for_topic(RESULT, count=10, timeout=120)
        persistent_broker.stop()  # results must now pile up on disk
        fill(filler)
        persistent_broker.start()
        degraded = sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "degraded"
                                and "outbox not writable" in (m.payload["reason"] or ""), timeout=120)[-1]
        assert "full" in degraded.payload["reason"]
        held = sub.wait_for(lambda m: m.topic == TELEMETRY and not m.payload["outbox"]["writable"]
                            and m.payload["outbox"]["held"] >= 30, timeout=60)[-1].payload
        assert daemon.proc.poll() is None, daemon.log()
        filler.unlink()  # space returns
        t_freed = time.monotonic()
        sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "online"
                     and m.payload["since"] > degraded.payload["since"], timeout=60)
        recovered = time.monotonic() - t_freed
        sub.wait_for(lambda m: m.topic == TELEMETRY and m.payload["outbox"]["writable"]
                     and m.payload["outbox"]["held"] == 0 and m.payload["outbox"]["write_failures"] > 0,
                     timeout=30)
        assert daemon.stop() == 0, daemon.log()
        check_delivery(sub, state, "disk-full", held_at_most=held["outbox"]["held"],
                       online_after_freeing_s=recovered)
    finally:
        daemon.kill()
        if filler.exists():
            filler.unlink()


def test_disk_full_at_start_the_daemon_runs_and_stores_results_once_space_returns(
        tmp_path, small_disk, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, RESULT, STATUS)
    filler = small_disk / "filler"
    fill(filler)
    state = small_disk / "state"
    daemon = start_daemon(tmp_path, mqtt_broker.url, device={"state_dir": str(state)})
    try:
        degraded = sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "degraded", timeout=120)[-1]
        assert "outbox not writable" in degraded.payload["reason"], degraded.payload
        assert not result_seqs(sub.messages), "results were published without being stored first"
        filler.unlink()
        t_freed = time.monotonic()
        sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "online", timeout=60)
        recovered = time.monotonic() - t_freed
        sub.wait_for_topic(RESULT, count=20, timeout=60)
        assert daemon.stop() == 0, daemon.log()
        check_delivery(sub, state, "disk-full-at-start", online_after_freeing_s=recovered)
    finally:
        daemon.kill()


# ------------------------------------------------------------------ 8. malformed inbound messages
def test_malformed_commands_from_the_fuzz_corpus_change_nothing_on_a_running_daemon(
        tmp_path, mqtt_broker, mqtt_collector):
    sub = mqtt_collector(mqtt_broker, RESULT, REPLY, STATUS)
    daemon = start_daemon(tmp_path, mqtt_broker.url)
    try:
        sub.wait_for(lambda m: m.topic == STATUS and m.payload["state"] == "online", timeout=120)
        corpus = [p.read_bytes() for p in sorted(CORPUS.iterdir())] + [b"{" * (20 * 1024)]

        def replies() -> List[Message]:
            return [m for m in sub.messages if m.topic == REPLY]

        for raw in corpus:
            sub.client.publish(COMMAND, raw, qos=1)
        sub.wait_until(lambda msgs: len([m for m in msgs if m.topic == REPLY]) >= len(corpus), 30,
                       "one reply per corpus message")
        refused = replies()
        assert len(refused) == len(corpus) and not any(m.payload["ok"] for m in refused)
        assert all(m.payload["error"] for m in refused)

        def command(payload: Dict) -> Dict:
            before = len(replies())
            sub.client.publish(COMMAND, json.dumps(payload), qos=1)
            sub.wait_until(lambda msgs: len([m for m in msgs if m.topic == REPLY]) > before, 30, "a reply")
            return replies()[before].payload

        unchanged = command({"schema": 1, "id": "g1", "cmd": "get_publish"})
        assert unchanged["ok"] and unchanged["result"]["policy"] == "every" and unchanged["result"]["rev"] == 0
        change = {"schema": 1, "id": "s1", "cmd": "set_publish", "rev": 1, "args": {"policy": "nth", "every_nth": 3}}
        assert command(change)["ok"]
        assert "replay" in command(change)["error"]
        assert "not newer" in command(dict(change, id="s0", args={"policy": "every"}))["error"]
        assert command({"schema": 1, "id": "g2", "cmd": "get_publish"})["result"]["every_nth"] == 3
        # still serving: new results keep their numbering, and every third frame is published
        newest = max(result_seqs(sub.messages))
        later = sub.wait_for(lambda m: m.topic == RESULT and m.payload["seq"] > newest + 5, timeout=60)
        frames = [m.payload["frame"] for m in later if m.payload["seq"] > newest + 1]
        assert all(b - a == 3 for a, b in zip(frames, frames[1:])), frames
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()


# ------------------------------------------------------------------ camera delivering corrupt frames
def test_corrupt_frames_are_skipped_and_counted_while_good_ones_are_served(
        tmp_path, mqtt_broker, mqtt_collector):
    import cv2
    import numpy as np

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        path = folder / f"{i:02d}.jpg"
        if i % 3 == 2:
            path.write_bytes(b"\xff\xd8\xff\xe0 truncated by a flaky USB link")
        else:
            cv2.imwrite(str(path), np.full((240, 320, 3), 20 * i, np.uint8))
    sub = mqtt_collector(mqtt_broker, RESULT, STATUS, TELEMETRY)
    daemon = DaemonProcess(tmp_path / "d", f"file:{folder}?rate=max", mqtt_broker.url, DEVICE,
                           config={"telemetry": {"interval_s": 1.0}})
    try:
        sub.wait_for(lambda m: m.topic == TELEMETRY and m.payload["counts"]["corrupt"] >= 8
                     and m.payload["counts"]["inferred"] >= 16, timeout=120)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    states = [m.payload["state"] for m in sub.messages if m.topic == STATUS]
    assert "degraded" not in states, states  # a corrupt frame now and then is not an outage
    results = [m.payload for m in sub.messages if m.topic == RESULT]
    assert [r["seq"] for r in results] == list(range(len(results)))
    assert "skipped corrupt frame" in daemon.log()
