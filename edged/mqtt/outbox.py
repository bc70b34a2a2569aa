"""A bounded, disk-backed FIFO of messages awaiting the broker's PUBACK.

SQLite from the standard library in WAL mode with `synchronous=FULL`: every
committed append survives `kill -9` and power loss, a crash mid-write never
corrupts the file, and readers (the publisher) do not block the writer. The
result sequence number is allocated in the same transaction as the row, so it
is monotonic per device across restarts and a gap means a dropped result,
which is counted. Appends and acknowledgements come in batches so that one fsync
covers many results (group commit, see `edged.mqtt.delivery`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

POLICIES = ("drop_oldest", "drop_newest")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 0), ('dropped', 0);
"""


class OutboxError(Exception):
    """The outbox could not store a message (disk full, I/O error); nothing was half-written."""


@dataclass(frozen=True)
class Pending:
    seq: int
    topic: str
    payload: bytes


class Outbox:
    """Append with a fresh `seq`, read pending in order, delete once acknowledged."""

    def __init__(self, path: Path, max_messages: int = 100_000, when_full: str = "drop_oldest"):
        if when_full not in POLICIES:
            raise ValueError(f"when_full must be one of {POLICIES}, got {when_full!r}")
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.max_messages = max_messages
        self.when_full = when_full
        self._lock = threading.Lock()
        db = None
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc
        self._db = db

    def append(self, topic: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Store `payload` with the next `seq` (set in the returned copy; None if dropped)."""
        seq = self.append_many([(topic, payload)])[0]
        return dict(payload, seq=seq)

    def append_many(self, items: Sequence[Tuple[str, Dict[str, Any]]], dropped_elsewhere: int = 0) -> List[Optional[int]]:
        """Store the messages in one transaction, each with the next `seq`; enforce the bound.

        Returns each message's seq, or None where `drop_newest` turned it away.
        `dropped_elsewhere` adds drops counted outside the file (while it was not
        writable) to the persistent counter in the same transaction.
        """
        with self._lock, self._transaction():
            count, seq = self._count(), self._counter("next_seq")
            room = self.max_messages - count
            seqs: List[Optional[int]] = []
            for topic, payload in items:
                if self.when_full == "drop_newest" and room <= 0:
                    seqs.append(None)
                    continue
                data = json.dumps(dict(payload, seq=seq), separators=(",", ":")).encode()
                self._db.execute("INSERT INTO messages VALUES (?, ?, ?)", (seq, topic, data))
                seqs.append(seq)
                seq, room = seq + 1, room - 1
            excess = max(0, -room)  # drop_oldest: the oldest rows beyond the bound go
            if excess:
                self._db.execute("DELETE FROM messages WHERE seq IN "
                                 "(SELECT seq FROM messages ORDER BY seq LIMIT ?)", (excess,))
            self._db.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'", (seq,))
            self._add("dropped", excess + seqs.count(None) + dropped_elsewhere)
            return seqs

    def pending(self, limit: int = 100, from_seq: int = 0, below_seq: Optional[int] = None) -> List[Pending]:
        """The oldest `limit` unacknowledged messages with from_seq <= seq < below_seq, in order."""
        upper = below_seq if below_seq is not None else 2 ** 62
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, payload FROM messages WHERE seq >= ? AND seq < ? "
                                    "ORDER BY seq LIMIT ?", (from_seq, upper, limit)).fetchall()
        return [Pending(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def ack(self, seq: int) -> None:
        """The broker acknowledged `seq`: forget it."""
        self.ack_many([seq])

    def ack_many(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these: forget them in one transaction."""
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs])

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"queued": self._count(), "dropped": self._counter("dropped"),
                    "next_seq": self._counter("next_seq")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals
    def _transaction(self):
        return _Transaction(self._db)

    def _count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def _counter(self, name: str) -> int:
        return self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def _add(self, name: str, delta: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK and OutboxError on a storage failure."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return False
            except sqlite3.Error as error:
                exc = error
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"outbox write failed: {exc}") from exc
        return False
