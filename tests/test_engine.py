"""The supervised inference worker (real Paddle Lite in a spawned process)."""

from __future__ import annotations

import os
import queue
import signal
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from edged.engine.supervisor import Engine, EngineSettings, Result
from edged.engine.worker import WorkerProcess
from edged.models.package import load_package
from helpers.daemon import model_dir

pytestmark = pytest.mark.slow


def start_engine(max_restarts_per_minute: int = 5) -> Engine:
    pkg = load_package(model_dir())
    p = pkg.preprocess
    results: "queue.Queue[Result]" = queue.Queue()
    eng = Engine(str(pkg.path_of(pkg.file_for())), (3, p.height, p.width),
                 EngineSettings(threads=1, hang_min_s=1.0, hang_factor=3.0,
                                max_restarts_per_minute=max_restarts_per_minute), results.put)
    eng.start()
    eng.results = results  # type: ignore[attr-defined]
    return eng


@pytest.fixture
def engine():
    eng = start_engine()
    yield eng
    eng.stop()


def infer(eng: Engine, value: float, tag: str) -> Result:
    slot = eng.acquire(timeout=30)
    assert slot is not None, "no free input slot"
    slot.array[:] = value
    eng.submit(slot, tag)
    return eng.results.get(timeout=60)


def test_results_come_back_in_submission_order_with_timings(engine):
    for i in range(2):
        slot = engine.acquire(timeout=10)
        slot.array[:] = 0.1 * i
        engine.submit(slot, i)
    got = [engine.results.get(timeout=60) for _ in range(2)]
    assert [r.tag for r in got] == [0, 1]
    assert all(r.error is None and r.inference_ms > 0 and np.isfinite(r.output).all() for r in got)
    assert engine.drain(5) and engine.median_ms > 0


def test_nan_output_fails_the_frame_and_replaces_the_worker_with_poisoned_output(monkeypatch):
    """Paddle Lite maps NaN/Inf inputs to finite outputs, so the worker's answer is
    poisoned on its way into the parent instead."""
    original = WorkerProcess.recv

    def poisoned(self, timeout):
        message = original(self, timeout)
        if message and message[0] == "done" and poison:
            poison.pop()
            message = message[:5] + (np.full_like(message[5], np.nan),)
        return message

    poison = [True]
    monkeypatch.setattr(WorkerProcess, "recv", poisoned)  # before the collector starts
    engine = start_engine()
    try:
        first_pid = engine.worker_pid
        bad = infer(engine, 0.0, "nan")
        assert bad.error and "NaN" in bad.error and bad.output is None
        good = infer(engine, 0.0, "after")
        assert good.error is None and engine.restarts == 1 and engine.worker_pid != first_pid
    finally:
        engine.stop()


def test_killed_worker_fails_its_frame_and_is_restarted(engine):
    assert infer(engine, 0.0, "warm").error is None
    slot = engine.acquire(timeout=10)
    os.kill(engine.worker_pid, signal.SIGKILL)
    slot.array[:] = 0.0
    engine.submit(slot, "lost-or-served")
    results = [engine.results.get(timeout=60)]
    if results[0].error is None:  # submitted to the new worker after the restart
        assert engine.restarts == 1
    assert infer(engine, 0.0, "next").error is None and engine.restarts == 1


def test_stopped_worker_is_declared_hung_and_replaced(engine):
    assert infer(engine, 0.0, "warm").error is None
    os.kill(engine.worker_pid, signal.SIGSTOP)
    hung = infer(engine, 0.0, "stuck")
    assert hung.error and "hung" in hung.error
    assert infer(engine, 0.0, "next").error is None and engine.restarts == 1


def test_repeated_failures_back_off_instead_of_restarting_in_a_tight_loop():
    eng = start_engine(max_restarts_per_minute=1)
    try:
        delays, reasons = [], []
        for i in range(3):
            assert infer(eng, 0.0, f"ok{i}").error is None
            os.kill(eng.worker_pid, signal.SIGKILL)
            while infer(eng, 0.0, f"after{i}").error is not None:
                pass  # frames fail until the replacement is up; each infer waits for its result
            assert eng.restarts == i + 1
            delays.append(eng.restart_delay_s)
            reasons.append(eng.last_failure)
        assert delays == [0.0, 1.0, 2.0]  # within the budget at once, then doubling
        assert "failures within a minute, next start in 2 s" in reasons[2]
        assert eng.problem is None  # recovered
    finally:
        eng.stop()


def test_stop_unlinks_the_shared_memory():
    pkg = load_package(model_dir())
    p = pkg.preprocess
    eng = Engine(str(pkg.path_of(pkg.file_for())), (3, p.height, p.width), EngineSettings(),
                 lambda r: None)
    name = eng._shm.name
    eng.start()
    eng.stop()
    with pytest.raises(FileNotFoundError):
        SharedMemory(name=name)
