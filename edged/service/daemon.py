"""The daemon: source -> preprocess -> worker -> postprocess -> publish policy -> MQTT.

Threads, each with one job, in the order a frame meets them:

    capture    reads the source into a one-slot mailbox (latest frame wins)
    feeder     takes a free input slot, waits until the worker is about to need it,
               takes the newest frame, preprocesses it into shared memory, submits
    engine     (the supervisor's collector) receives outputs in order and calls
               `_on_result`: top-k, publish policy, hand to DurableResults
    outbox-writer  commits results to the disk outbox in batches (one fsync each)
    delivery   publishes the outbox in order with QoS 1, deletes on PUBACK
    main       signals, status, telemetry; nothing on the frame path

Signal handlers do nothing: Python writes the signal number to a wake-up pipe that
the main loop selects on, and the main loop shuts down in order (stop capture,
finish the frames in flight, flush publishes, status offline). `ready` is set after
the first inference (systemd READY later).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import cv2

from edged.capture import CaptureThread, Frame, Mailbox, open_source
from edged.config import Config, ConfigError, PublishConfig
from edged.config_check import check_publish
from edged.engine.postprocess import top_k
from edged.engine.preprocess import Preprocessor
from edged.engine.supervisor import Engine, EngineSettings, Result, Slot
from edged.engine.worker import WorkerError
from edged.errors import UserError
from edged.models.package import load_package
from edged.mqtt.delivery import DurableResults
from edged.mqtt.outbox import Outbox
from edged.service.commands import CommandError, CommandHandler, CommandSpec
from edged.service.publish_policy import PublishPolicy
from edged.service.stats import PipelineStats
from edged.service.telemetry import system_snapshot

log = logging.getLogger(__name__)

RESULT_SCHEMA = 1
TELEMETRY_SCHEMA = 1
PUBLISH_ARGS = {"policy": str, "every_nth": int, "min_interval_s": (int, float),
                "score_threshold": (int, float)}  # what set_publish may change
LEAD_MARGIN_S = 0.002  # hand the worker its next input this much before it is free


class ModelLoadError(UserError):
    """The model package passed its checks but Paddle Lite cannot load it."""


@dataclass
class FrameTag:
    """What travels with a submitted job (no image: that is in shared memory)."""

    seq: int
    captured_at: float
    t_capture: float
    decode_ms: float
    t_pre_start: float
    t_pre_end: float


class Daemon:
    """One run of `edged run`; `run()` returns the exit code."""

    def __init__(self, cfg: Config, max_frames: Optional[int] = None,
                 link_factory: Optional[Callable[..., Any]] = None, keep_run_samples: bool = False) -> None:
        cv2.setNumThreads(1)  # preprocessing stays on one core; the others are inference's
        self.cfg = cfg
        self.max_frames = max_frames
        self.boot_id = uuid.uuid4().hex
        self.device_id = cfg.device_id
        self.ready = threading.Event()
        self.stats = PipelineStats(cfg.telemetry.interval_s, keep_run_samples)
        self.package = load_package(cfg.model.resolved_path())
        self.model_file = self.package.file_for()
        self.preprocess = Preprocessor(self.package.preprocess)
        self.publish_cfg = cfg.publish
        self.policy = _policy_for(cfg.publish)
        self.commands = CommandHandler(
            {"ping": CommandSpec(self._cmd_ping),
             "get_publish": CommandSpec(self._cmd_get_publish),
             "set_publish": CommandSpec(self._cmd_set_publish, PUBLISH_ARGS, changes_state=True)},
            lambda: {"device": self.device_id, "boot_id": self.boot_id})
        self.source_uri = cfg.source.resolved_uri()
        self.mailbox = Mailbox()
        src = cfg.source
        defaults = {"width": src.width, "height": src.height, "fps": src.fps, "fourcc": src.fourcc,
                    "controls": src.controls}
        self.capture = CaptureThread(open_source(self.source_uri, defaults), self.mailbox,
                                     src.stall_timeout_s, src.reopen_backoff_initial_s,
                                     src.reopen_backoff_max_s)
        if link_factory is None:
            from edged.mqtt.link import MqttLink as link_factory  # the only paho user
        self.link = link_factory(cfg.mqtt, self.device_id, self.boot_id)
        box = cfg.outbox
        outbox_path = cfg.device.resolved_state_dir() / "outbox.sqlite"
        self.results = DurableResults(
            self.link, lambda: Outbox(outbox_path, box.max_messages, box.when_full), box.when_full,
            cfg.mqtt.qos, drain_rate=box.drain_rate)
        eng = cfg.engine
        settings = EngineSettings(eng.threads, eng.power_mode, eng.hang_factor, eng.hang_min_s,
                                  eng.max_restarts_per_minute)
        self.engine = Engine(str(self.package.path_of(self.model_file)), self.preprocess.shape,
                             settings, self._on_result)
        self.submitted = 0
        self._stop = threading.Event()
        self._feeder_done = threading.Event()
        self._lead: Deque[float] = deque(maxlen=50)
        self._status: Optional[Tuple[str, Optional[str]]] = None
        self._restarts_reported = 0
        self._started = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        self._feeder = threading.Thread(target=self._feed, name="feeder", daemon=True)

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> int:
        """Start everything, serve until a signal or the end of the source, stop cleanly."""
        previous = self._install_signals()
        self.link.subscribe(self.link.topics.command, self._on_command)
        self.link.start()
        self.results.start()
        try:
            self._start_engine()
            self.capture.start()
            self._feeder.start()
            self._main_loop()
        finally:
            self._shutdown()
            self._restore_signals(previous)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return 0

    def request_stop(self) -> None:
        """Ask the main loop to shut down (thread-safe; used by tests and the bench)."""
        self._stop.set()
        self._wake()

    def _start_engine(self) -> None:
        try:
            info = self.engine.start()
        except WorkerError as exc:
            self.link.set_status("offline", f"model failed to load: {exc}")
            raise ModelLoadError(f"model {self.package.root}: {exc}") from None
        log.info("engine ready: %s %s (%s/%s) %s", self.package.name, self.package.version,
                 self.model_file.target, self.model_file.precision, info)

    def _main_loop(self) -> None:
        interval = self.cfg.telemetry.interval_s
        next_telemetry = time.monotonic() + interval
        while not self._stop.is_set() and not self._feeder_done.is_set():
            for signum in self._wait(min(0.25, max(0.0, next_telemetry - time.monotonic()))):
                log.info("received %s, shutting down", signal.Signals(signum).name)
                self._stop.set()
            self._update_status()
            if time.monotonic() >= next_telemetry:
                self._publish_telemetry(interval)
                next_telemetry += interval

    def _shutdown(self) -> None:
        """Stop capture, finish the frames in flight, flush, go offline (bounded)."""
        self._stop.set()
        self.capture.stop()
        if self._feeder.is_alive():
            self._feeder.join(10.0)
        budget = max(5.0, 3 * self.engine.median_ms / 1e3)
        if not self.engine.drain(budget):
            log.warning("frames still in flight after %.1f s; dropping them", budget)
        self.engine.stop()
        left = self.results.drain(self.cfg.outbox.drain_timeout_s)
        if left:
            log.warning("%d result(s) not yet acknowledged stay in the outbox for the next start", left)
        self.results.stop()
        self.link.stop(timeout=5.0)  # publishes status offline, waits for acks
        log.info("stopped: %d frames inferred, %d results stored", self.stats.counts["inferred"],
                 self.stats.counts["published"])

    # ----------------------------------------------------------------- signals
    def _install_signals(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        os.set_blocking(self._wake_w, False)
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[-1] = signal.set_wakeup_fd(self._wake_w)
        return previous

    def _restore_signals(self, previous: Dict[int, Any]) -> None:
        if -1 in previous:
            signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _wait(self, timeout: float) -> List[int]:
        """Signal numbers received within `timeout` (0 bytes are plain wake-ups)."""
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if not ready:
            return []
        return [b for b in os.read(self._wake_r, 64) if b]

    # ----------------------------------------------------------------- frame path
    def _feed(self) -> None:
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.submitted >= self.max_frames:
                    break
                slot = self.engine.acquire(timeout=0.25)
                if slot is None:
                    continue
                frame = self._next_frame()
                if frame is None:
                    self.engine.release(slot)
                    if self.mailbox.closed:
                        break
                    continue
                self._submit(frame, slot)
        finally:
            self._feeder_done.set()
            self._wake()

    def _next_frame(self) -> Optional[Frame]:
        """The newest frame, taken just before the worker needs it (freshest input)."""
        lead = _p90(self._lead) + LEAD_MARGIN_S  # p90, not median: a late input idles the worker
        delay = self.engine.expected_idle_at() - lead - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        t0 = time.monotonic()
        frame = self.mailbox.get(timeout=0.25)
        if frame is not None:
            self._lead.append(time.monotonic() - t0)
        return frame

    def _submit(self, frame: Frame, slot: Slot) -> None:
        t_pre = time.monotonic()
        try:
            self.preprocess(frame.image, slot.array)
        except ValueError as exc:
            log.error("frame %d cannot be preprocessed: %s", frame.seq, exc)
            self.engine.release(slot)
            self.stats.count("failed")
            return
        t_done = time.monotonic()
        self._lead[-1] += t_done - t_pre
        self.engine.submit(slot, FrameTag(frame.seq, frame.captured_at, frame.t_capture,
                                          frame.decode_ms, t_pre, t_done))
        self.submitted += 1

    def _on_result(self, result: Result) -> None:
        """Runs on the engine's collector thread, in submission order."""
        tag: FrameTag = result.tag
        if result.error is not None or result.output is None:
            self.stats.count("failed")
            return
        t0 = time.monotonic()
        top = top_k(result.output, self.package.labels, self.cfg.publish.top_k)
        self.stats.count("inferred")
        self.ready.set()
        publish = self.policy.decide(str(top[0]["label"]), float(top[0]["score"]), time.time())
        t_end = time.monotonic()
        latency = {"capture_to_preprocess": (tag.t_pre_start - tag.t_capture) * 1e3,
                   "preprocess": (tag.t_pre_end - tag.t_pre_start) * 1e3,
                   "queue_wait": result.queue_wait_ms, "inference": result.inference_ms,
                   "postprocess": (t_end - t0) * 1e3, "total": (t_end - tag.t_capture) * 1e3}
        self.stats.add(dict(latency, decode=tag.decode_ms, worker_idle=result.worker_idle_ms))
        if not publish:
            self.stats.count("skipped")
            return
        if not self.results.submit(self._result_payload(tag, top, latency)):
            return  # turned away at the bound (drop_newest): counted in telemetry "outbox"
        self.stats.count("published")

    def _result_payload(self, tag: FrameTag, top: list, latency: Dict[str, float]) -> Dict[str, Any]:
        return {"schema": RESULT_SCHEMA, "device": self.device_id, "boot_id": self.boot_id,
                "frame": tag.seq, "captured_at": round(tag.captured_at, 6),
                "published_at": round(time.time(), 6), "top": top,
                "model": {"name": self.package.name, "version": self.package.version},
                "latency_ms": {k: round(v, 3) for k, v in latency.items()}}

    # ----------------------------------------------------------------- commands (MQTT thread)
    def _on_command(self, topic: str, raw: bytes) -> None:
        self.link.publish_reply(self.commands.handle(raw))

    def _cmd_ping(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return {"state": self._status[0] if self._status else "starting",
                "uptime_s": round(time.monotonic() - self._started, 1),
                "next_seq": self.results.stats()["next_seq"]}

    def _cmd_get_publish(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self.publish_cfg), rev=self.commands.applied_rev)

    def _cmd_set_publish(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Change which results are published until the next restart (the file is not edited)."""
        if not args:
            raise CommandError(f"set_publish: give at least one of {', '.join(PUBLISH_ARGS)}")
        wanted = dataclasses.replace(self.publish_cfg, **args)
        try:
            check_publish(wanted)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        self.policy, self.publish_cfg = _policy_for(wanted), wanted  # the collector sees one or the other
        log.info("publish settings changed by command: %s", args)
        return dataclasses.asdict(wanted)

    # ----------------------------------------------------------------- status, telemetry
    def _update_status(self) -> None:
        problems = []
        camera_ok, reason = self.capture.state()
        if not camera_ok:
            problems.append(f"camera offline: {reason}")
        if self.engine.problem:
            problems.append(self.engine.problem)
        elif self.engine.restarts > self._restarts_reported:
            problems.append(self.engine.last_failure)  # recovered within one tick: still say so
        self._restarts_reported = self.engine.restarts
        problems += [p for p in (self.results.problem, self.results.refused_by_broker) if p]
        if problems:
            wanted: Optional[Tuple[str, Optional[str]]] = ("degraded", "; ".join(problems))
        else:
            wanted = ("online", None) if self.ready.is_set() else None
        if wanted is not None and wanted != self._status:
            log.info("status %s%s", wanted[0], f" ({wanted[1]})" if wanted[1] else "")
            self.link.set_status(wanted[0], wanted[1], model=self._model_info(),
                                 source=self.source_uri, camera=self.capture.source.negotiated())
            self._status = wanted

    def _model_info(self) -> Dict[str, Any]:
        return {"name": self.package.name, "version": self.package.version,
                "target": self.model_file.target, "precision": self.model_file.precision}

    def pids(self) -> List[int]:
        """This process and the inference worker: what telemetry and bench measure."""
        worker = self.engine.worker_pid
        return [os.getpid()] + ([worker] if worker else [])

    def telemetry(self, window_s: float) -> Dict[str, Any]:
        """The telemetry payload (edged/schemas/telemetry.json)."""
        counts = dict(self.stats.counts, captured=self.capture.captured, corrupt=self.capture.corrupt,
                      dropped=self.mailbox.dropped, worker_restarts=self.engine.restarts,
                      commands=self.commands.handled, commands_refused=self.commands.refused)
        model = self._model_info()
        payload = {"schema": TELEMETRY_SCHEMA, "device": self.device_id, "boot_id": self.boot_id,
                   "uptime_s": round(time.monotonic() - self._started, 1), "window_s": window_s,
                   "fps": dict(self.stats.rates(), capture=self._capture_rate()), "counts": counts,
                   "latency_ms": self.stats.latency_snapshot(),
                   "engine": {"backend": self.engine.info.get("backend", "paddle-lite"),
                              "model": model["name"], "version": model["version"],
                              "threads": self.cfg.engine.threads,
                              "power_mode": self.cfg.engine.power_mode,
                              "target": model["target"], "precision": model["precision"],
                              "median_inference_ms": round(self.engine.median_ms, 2),
                              "worker_pid": self.engine.worker_pid},
                   "mqtt": {"connected": bool(getattr(self.link, "connected", False)),
                            "reconnects": int(getattr(self.link, "reconnects", 0))},
                   "outbox": self.results.stats(),
                   "source": {"uri": self.source_uri, "online": self.capture.state()[0],
                              "reopens": self.capture.reopens, **self.capture.source.negotiated()}}
        payload.update(system_snapshot(self.pids()))
        return payload

    def _capture_rate(self) -> float:
        now, captured = time.monotonic(), self.capture.captured
        then, before = getattr(self, "_capture_mark", (self._started, 0))
        self._capture_mark = (now, captured)
        return round((captured - before) / (now - then), 3) if now > then else 0.0

    def _publish_telemetry(self, window_s: float) -> None:
        try:
            self.link.publish_telemetry(self.telemetry(window_s))
        except Exception:  # telemetry must never take the daemon down
            log.exception("telemetry failed")


def _policy_for(pub: PublishConfig) -> PublishPolicy:
    return PublishPolicy(pub.policy, pub.every_nth, pub.min_interval_s, pub.score_threshold)


def _p90(values: Deque[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)] if values else 0.0
