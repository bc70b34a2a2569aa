"""The engine: one supervised inference worker behind a small interface.

    engine.start()                  spawn the worker, wait until it has run once
    slot = engine.acquire()         a free input buffer (blocks while both are in use)
    preprocess(image, slot.array)   fill it
    engine.submit(slot, tag)        queue it; `on_result(Result)` fires, in order

Two slots double-buffer the input: the caller preprocesses frame N+1 while the
worker infers frame N, and the worker finds N+1 waiting when it finishes. The
collector thread reads results, and restarts a worker that died, hung (busy longer
than max(hang_min_s, hang_factor x median inference)) or produced NaN/Inf; the jobs it
held come back as failed results and the pipeline carries on. Restarts beyond
`max_restarts_per_minute` wait with exponential backoff. A second worker for an OTA
warm-up would be another `WorkerProcess` on its own block.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import numpy as np

from edged.engine.postprocess import NonFiniteOutput, check_finite
from edged.engine.worker import WorkerError, WorkerProcess, WorkerSpec, map_views, shm_size

log = logging.getLogger(__name__)

SLOTS = 2


@dataclass
class Slot:
    index: int
    array: np.ndarray  # (C, H, W) float32 view of shared memory


@dataclass
class Job:
    slot: Slot
    tag: Any
    submitted: float  # monotonic


@dataclass
class Result:
    """One finished (or failed) job; `tag` is whatever the caller submitted."""

    tag: Any
    output: Optional[np.ndarray]
    inference_ms: float = 0.0
    queue_wait_ms: float = 0.0
    done: float = 0.0  # monotonic, when the parent received it
    error: Optional[str] = None
    worker_idle_ms: float = 0.0  # how long the worker waited for this input (starvation)


@dataclass
class EngineSettings:
    threads: int = 1
    power_mode: str = "high"
    hang_factor: float = 5.0
    hang_min_s: float = 5.0
    max_restarts_per_minute: int = 5
    start_timeout_s: float = 120.0


class Engine:
    """Supervises one worker; see the module docstring for the contract."""

    def __init__(self, model_path: str, input_shape: Tuple[int, int, int], settings: EngineSettings,
                 on_result: Callable[[Result], None]) -> None:
        self.settings = settings
        self.on_result = on_result
        self._shm = SharedMemory(create=True, size=shm_size(input_shape, SLOTS))
        self._header, views = map_views(self._shm.buf, input_shape, SLOTS)
        self._spec = WorkerSpec(str(model_path), tuple(input_shape), settings.threads,  # type: ignore[arg-type]
                                settings.power_mode, self._shm.name, SLOTS)
        self._free: "queue.Queue[Slot]" = queue.Queue()
        for i, view in enumerate(views):
            self._free.put(Slot(i, view))
        self._jobs: Dict[int, Job] = {}
        self._lock = threading.Lock()
        self._next_job = 0
        self._times: Deque[float] = deque(maxlen=200)
        self._restart_times: Deque[float] = deque()
        self._last_done = 0.0
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._worker: Optional[WorkerProcess] = None
        self._thread = threading.Thread(target=self._collect, name="engine", daemon=True)
        self.restarts = 0
        self.inferred = 0
        self.failed = 0
        self.problem: Optional[str] = None  # set while the worker is being replaced
        self.restart_delay_s = 0.0  # how long the latest replacement waited (restart backoff)
        self.last_failure: str = ""  # the reason of the latest restart
        self.info: dict = {}

    # -- the caller's side -------------------------------------------------------
    def start(self) -> dict:
        """Spawn the first worker (raises WorkerError if it cannot load) and collect."""
        self._worker = self._spawn()
        self._thread.start()
        return self.info

    def acquire(self, timeout: Optional[float] = None) -> Optional[Slot]:
        try:
            return self._free.get(timeout=timeout)
        except queue.Empty:
            return None

    def release(self, slot: Slot) -> None:
        """Give back a slot that will not be submitted."""
        self._free.put(slot)

    def submit(self, slot: Slot, tag: Any) -> None:
        """Queue a filled slot. While a worker is being replaced the job waits and is
        sent to the new one (or fails with the old one's jobs)."""
        with self._lock:
            job_id = self._next_job
            self._next_job += 1
            self._jobs[job_id] = Job(slot, tag, time.monotonic())
            if self._worker is not None:
                try:
                    self._worker.submit(job_id, slot.index)
                except WorkerError:
                    pass  # the collector notices the dead worker and fails this job

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted job has produced a result."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        if self._worker is not None:
            self._worker.stop()
        del self._header
        self._free = queue.Queue()
        self._shm.close()
        self._shm.unlink()

    @property
    def median_ms(self) -> float:
        return statistics.median(self._times) if self._times else 0.0

    def expected_idle_at(self) -> float:
        """Monotonic time the worker should finish what it has (now if nothing)."""
        with self._lock:
            jobs = len(self._jobs)
        if not jobs or self._worker is None:
            return time.monotonic()
        since = self._worker.busy_since or time.monotonic()
        return since + jobs * self.median_ms / 1e3

    @property
    def worker_pid(self) -> Optional[int]:
        return self._worker.pid if self._worker is not None else None

    # -- the collector thread ----------------------------------------------------
    def _collect(self) -> None:
        while not self._stop.is_set():
            worker = self._worker
            try:
                if worker is None:
                    raise WorkerError(self.problem or "no worker")
                message = worker.recv(0.1)
                if message is not None:
                    self._finish(message)
                self._check_hang(worker)
            except (WorkerError, NonFiniteOutput) as exc:
                self._replace_worker(str(exc))

    def _finish(self, message: tuple) -> None:
        if message[0] != "done":
            raise WorkerError(f"unexpected message {message[0]!r}")
        _, job_id, _, started, inference_ms, output = message
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return
        check_finite(output)  # raises before the job is settled: it fails with the worker
        self._times.append(inference_ms)
        self.inferred += 1
        idle = max(0.0, started - self._last_done) * 1e3 if self._last_done else 0.0
        self._last_done = started + inference_ms / 1e3
        self._settle(job_id, Result(job.tag, output, inference_ms,
                                    max(0.0, (started - job.submitted) * 1e3), time.monotonic(),
                                    worker_idle_ms=idle))

    def _settle(self, job_id: int, result: Result) -> None:
        with self._lock:
            job = self._jobs.pop(job_id)
        self._free.put(job.slot)
        try:
            self.on_result(result)
        except Exception:  # a bug downstream must not kill the engine
            log.exception("result handler failed")
        with self._idle:
            self._idle.notify_all()

    def _check_hang(self, worker: WorkerProcess) -> None:
        """Busy too long, or a job not even started (a stopped process) for too long."""
        since = worker.busy_since
        if since <= 0:
            with self._lock:
                if not self._jobs:
                    return
                since = min(job.submitted for job in self._jobs.values())
        limit = max(self.settings.hang_min_s, self.settings.hang_factor * self.median_ms / 1e3)
        if time.monotonic() - since > limit:
            raise WorkerError(f"worker hung (no answer for more than {limit:.1f} s)")

    def _replace_worker(self, reason: str) -> None:
        """Kill, fail its jobs, wait out the restart budget, spawn again (until stopped)."""
        log.warning("inference worker failed: %s; restarting", reason)
        self.problem = f"inference worker restarting: {reason}"
        self.last_failure = self.problem  # kept after recovery so a brief outage is still reported
        self._last_done = 0.0
        with self._lock:
            worker, self._worker = self._worker, None
            pending = [(job_id, job.tag) for job_id, job in sorted(self._jobs.items())]
        if worker is not None:
            worker.kill()
        for job_id, tag in pending:
            self.failed += 1
            self._settle(job_id, Result(tag, None, done=time.monotonic(), error=reason))
        delay = self.restart_delay_s = self._restart_delay()
        if delay:
            self.problem += (f"; {len(self._restart_times)} failures within a minute, "
                             f"next start in {delay:.0f} s")
            self.last_failure = self.problem
        while not self._stop.is_set():
            self._stop.wait(delay)
            if self._stop.is_set():
                return
            try:
                self._adopt(self._spawn())
                return
            except WorkerError as exc:
                log.error("inference worker did not start: %s", exc)
                delay = min(60.0, max(1.0, delay * 2))

    def _adopt(self, worker: WorkerProcess) -> None:
        """Make `worker` current and send it the jobs submitted while there was none."""
        with self._lock:
            self._worker = worker
            for job_id, job in sorted(self._jobs.items()):
                job.submitted = time.monotonic()  # its wait starts again with this worker
                worker.submit(job_id, job.slot.index)
        self.restarts += 1
        self.problem = None

    def _restart_delay(self) -> float:
        """0 within the per-minute budget, then doubling from 1 s up to 60 s."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > 60.0:
            self._restart_times.popleft()
        self._restart_times.append(now)
        excess = len(self._restart_times) - self.settings.max_restarts_per_minute
        return 0.0 if excess <= 0 else min(60.0, 2.0 ** (excess - 1))

    def _spawn(self) -> WorkerProcess:
        worker = WorkerProcess(self._spec, self._header)
        self.info = worker.start(self.settings.start_timeout_s)
        log.info("inference worker %s ready (%s)", worker.pid, self.info)
        return worker
