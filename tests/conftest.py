"""Shared fixtures: a real mosquitto broker and a real MQTT subscriber.

`mqtt_broker` starts mosquitto on a free 127.0.0.1 port for one test;
`mqtt_collector(broker, "edged/+/result")` subscribes and records messages.
Without mosquitto the broker tests skip locally, but fail in CI (CI=true).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.disk import small_tmpfs  # noqa: E402
from helpers.mqtt import (  # noqa: E402
    MosquittoBroker,
    MqttCollector,
    find_mosquitto,
    start_broker,
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def mosquitto_executable() -> str:
    """Path of mosquitto, or skip (locally) / fail (CI) with the reason."""
    path = find_mosquitto()
    if path is None:
        reason = ("mosquitto is not installed (apt-get install mosquitto); "
                  "the MQTT tests need a real broker")
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def mqtt_broker(mosquitto_executable: str, tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto with `.host .port .url .stop() .start()`; killed at teardown."""
    broker = start_broker(mosquitto_executable, workdir=tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mqtt_collector() -> Iterator:
    """Factory: `mqtt_collector(broker, topic, *more_topics, qos=1, protocol=5,
    persistent_session=False)`."""
    made: List[MqttCollector] = []

    def make(broker: MosquittoBroker, topic: str, *more: str, qos: int = 1,
             protocol: int = 5, persistent_session: bool = False) -> MqttCollector:
        collector = MqttCollector(broker.host, broker.port, [topic, *more], qos=qos,
                                  protocol=protocol, persistent_session=persistent_session)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, for running out of disk space (skipped where mounting needs root)."""
    yield from small_tmpfs(tmp_path / "small", required=_in_ci())
