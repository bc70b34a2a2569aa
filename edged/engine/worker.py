"""The inference worker process and the parent's handle on it.

The worker loads one `.nb`, then serves ("run", job, slot) requests: it reads the
input from slot `slot` of a shared-memory block (so no image crosses a pipe), runs
Paddle Lite and answers ("done", job, slot, started, inference_ms, output). While it
runs it keeps the start time in the block's header ("busy since") so the parent can
tell a hung worker from a slow one without asking it anything.

Exit codes: 3 = the model could not be loaded (restarting will not help).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

HEADER_BYTES = 64  # float64 busy_since, then padding to keep slots aligned
EXIT_LOAD_FAILED = 3


class WorkerError(Exception):
    """The worker died, failed to start, or broke its protocol."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; picklable, sent once at spawn."""

    model_path: str
    input_shape: Tuple[int, int, int]
    threads: int
    power_mode: str
    shm_name: str
    slots: int


def slot_bytes(shape: Tuple[int, int, int]) -> int:
    n = int(np.prod(shape)) * 4
    return (n + 63) // 64 * 64


def shm_size(shape: Tuple[int, int, int], slots: int) -> int:
    return HEADER_BYTES + slots * slot_bytes(shape)


def map_views(buf: Any, shape: Tuple[int, int, int], slots: int) -> Tuple[np.ndarray, list]:
    """(header float64[1], [slot float32 (C, H, W) views]) over a shared block."""
    header = np.ndarray((1,), dtype=np.float64, buffer=buf, offset=0)
    step = slot_bytes(shape)
    views = [np.ndarray(shape, dtype=np.float32, buffer=buf, offset=HEADER_BYTES + i * step)
             for i in range(slots)]
    return header, views


def attach_shared_memory(name: str) -> SharedMemory:
    """Attach without registering with the resource tracker: the parent owns the
    block and unlinks it; a tracked attach would unlink it when a worker dies
    (bpo-39959)."""
    original = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return SharedMemory(name=name)
    finally:
        resource_tracker.register = original  # type: ignore[assignment]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (kill -9 of the daemon)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of the worker process."""
    _die_with_parent()
    from edged.engine.lite import configure_threads
    configure_threads(spec.threads)
    shm = attach_shared_memory(spec.shm_name)
    header, inputs = map_views(shm.buf, spec.input_shape, spec.slots)
    try:
        started = time.monotonic()
        from edged.engine.lite import LitePredictor
        predictor = LitePredictor(spec.model_path, spec.threads, spec.power_mode)
        predictor.run(np.zeros(spec.input_shape, dtype=np.float32))  # warm-up allocates
    except Exception as exc:  # report why, then exit with the "will not load" code
        conn.send(("error", f"cannot load {spec.model_path}: {exc}"))
        os._exit(EXIT_LOAD_FAILED)
    conn.send(("ready", {"pid": os.getpid(), "load_ms": (time.monotonic() - started) * 1e3,
                         "output_shape": predictor.output_shape(), **predictor.applied}))
    _serve(conn, predictor, header, inputs)
    del header, inputs
    shm.close()


def _serve(conn: Connection, predictor: Any, header: np.ndarray, inputs: list) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent gone
        if message[0] == "stop":
            return
        _, job, slot = message
        started = time.monotonic()
        header[0] = started
        output = predictor.run(inputs[slot])
        done = time.monotonic()
        header[0] = 0.0
        conn.send(("done", job, slot, started, (done - started) * 1e3, output))


def describe_exit(code: Optional[int]) -> str:
    """'exited with code 3' / 'killed by SIGKILL' for a multiprocessing exitcode."""
    if code is None:
        return "is gone"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerProcess:
    """The parent's handle: spawn, wait until ready, submit, receive, kill."""

    def __init__(self, spec: WorkerSpec, header: np.ndarray) -> None:
        self.spec = spec
        self._header = header
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=worker_main, args=(spec, child), name="edged-worker",
                                    daemon=True)
        self._child_conn = child
        self.info: dict = {}

    def start(self, timeout: float) -> dict:
        """Spawn and wait for "ready"; raise WorkerError (and reap) on failure."""
        self._header[0] = 0.0
        self._process.start()
        self._child_conn.close()
        try:
            message = self.recv(timeout)
        except WorkerError:
            raise WorkerError(f"Paddle Lite could not load {self.spec.model_path} "
                              f"(worker {describe_exit(self._process.exitcode)})") from None
        if message is None or message[0] != "ready":
            reason = message[1] if message else f"not ready within {timeout:.0f} s"
            self.kill()
            raise WorkerError(reason)
        self.info = message[1]
        return self.info

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid

    @property
    def busy_since(self) -> float:
        """Monotonic time the current inference started, 0.0 when idle."""
        return float(self._header[0])

    def submit(self, job: int, slot: int) -> None:
        try:
            self._conn.send(("run", job, slot))
        except (OSError, ValueError) as exc:
            raise WorkerError(f"worker unreachable: {exc}") from None

    def recv(self, timeout: float) -> Optional[tuple]:
        """The next message, None on timeout; WorkerError if the worker is gone."""
        try:
            if not self._conn.poll(timeout):
                if not self._process.is_alive():
                    raise WorkerError(f"worker {describe_exit(self._process.exitcode)}")
                return None
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(1.0)
            raise WorkerError(f"worker {describe_exit(self._process.exitcode)}") from None

    def stop(self, timeout: float = 2.0) -> None:
        """Ask politely, then kill."""
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self._process.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5.0)
        self._conn.close()
