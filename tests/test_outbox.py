"""The disk-backed outbox: order, persistent sequence numbers, bounds, crash safety."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys

import pytest

from edged.mqtt.outbox import Outbox

TOPIC = "edged/cam/result"


def test_messages_come_back_in_order_and_leave_when_acknowledged(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    stored = [box.append(TOPIC, {"n": i}) for i in range(5)]
    assert [m["seq"] for m in stored] == [0, 1, 2, 3, 4]
    assert [json.loads(p.payload)["n"] for p in box.pending()] == [0, 1, 2, 3, 4]
    box.ack(0)
    box.ack(2)
    assert [p.seq for p in box.pending()] == [1, 3, 4]
    assert box.stats() == {"queued": 3, "dropped": 0, "next_seq": 5}


def test_sequence_numbers_continue_after_reopening(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.append(TOPIC, {})
    box.ack(box.append(TOPIC, {})["seq"])
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert again.append(TOPIC, {})["seq"] == 2
    assert [p.seq for p in again.pending()] == [0, 2]


def test_full_outbox_drops_oldest_and_counts_it(tmp_path):
    box = Outbox(tmp_path / "outbox.db", max_messages=3, when_full="drop_oldest")
    for i in range(5):
        box.append(TOPIC, {"n": i})
    assert [p.seq for p in box.pending()] == [2, 3, 4]
    assert box.stats()["dropped"] == 2


def test_full_outbox_drops_newest_and_counts_it(tmp_path):
    box = Outbox(tmp_path / "outbox.db", max_messages=3, when_full="drop_newest")
    results = [box.append(TOPIC, {"n": i}) for i in range(5)]
    assert [r["seq"] for r in results] == [0, 1, 2, None, None]
    assert [p.seq for p in box.pending()] == [0, 1, 2]
    assert box.stats()["dropped"] == 2


def test_bad_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="when_full"):
        Outbox(tmp_path / "outbox.db", when_full="drop_random")


CHILD = """
import sys
from pathlib import Path
from edged.mqtt.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
while True:
    seq = box.append("t", {"pad": "x" * 200})["seq"]
    print(seq, flush=True)
"""


def test_kill_9_mid_write_loses_no_committed_message_and_never_corrupts(tmp_path):
    db = tmp_path / "outbox.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    committed = []
    for line in child.stdout:
        committed.append(int(line))
        if len(committed) >= 300:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sqlite3.connect(str(db)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    box = Outbox(db)
    seqs = [p.seq for p in box.pending(limit=1_000_000)]
    assert seqs[:len(committed)] == committed  # every append that returned is on disk, in order
    assert seqs == list(range(len(seqs)))  # and nothing beyond it is half-written
    assert box.append("t", {})["seq"] == len(seqs)
