"""`edged demo`: local broker + daemon on the bundled model and video + live monitor.

Starts mosquitto on a free port when it is installed, otherwise the embedded
Python broker, runs `edged run --broker <it>` as a child process (its log goes
to a file so it does not scribble over the monitor), shows `edged monitor`
until Ctrl-C, then stops the daemon with SIGTERM and the broker, in that order.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional

log = logging.getLogger(__name__)

DAEMON_STOP_S = 15.0
BROKER_START_S = 10.0
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class LocalBroker:
    """Either a mosquitto child process or the embedded broker, behind one face."""

    def __init__(self, workdir: Path, prefer_embedded: bool = False) -> None:
        self.workdir = workdir
        self.kind = ""
        self.url = ""
        self._proc: Optional[subprocess.Popen] = None
        self._embedded: Any = None
        exe = None if prefer_embedded else find_mosquitto()
        if exe:
            self._start_mosquitto(exe)
        else:
            self._start_embedded()

    def _start_mosquitto(self, exe: str) -> None:
        port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
        logfile = open(self.workdir / "mosquitto.log", "wb")
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=logfile,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        logfile.close()
        if not wait_for_port(port, self._proc, BROKER_START_S):
            self.stop()
            log.warning("mosquitto did not start; using the embedded broker instead")
            self._start_embedded()
            return
        self.kind, self.url = "mosquitto", f"mqtt://127.0.0.1:{port}"

    def _start_embedded(self) -> None:
        from edged.mqtt.embedded_broker import EmbeddedBroker

        self._embedded = EmbeddedBroker().start()
        self.kind, self.url = "embedded", self._embedded.url

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._embedded is not None:
            self._embedded.stop()


def find_mosquitto() -> Optional[str]:
    found = shutil.which("mosquitto")
    return found or next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll the port (waiting on the process between tries) until it accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            pass
        try:
            proc.wait(timeout=0.05)
            return False                  # exited: port taken or bad config
        except subprocess.TimeoutExpired:
            continue
    return False


def daemon_command(url: str, args: argparse.Namespace) -> List[str]:
    """The `edged run` child; extra flags pass through when given."""
    cmd = [sys.executable, "-m", "edged", "run", "--broker", url]
    for flag in ("config", "source", "device", "model"):
        value = getattr(args, flag, None)
        if value:
            cmd += [f"--{flag}", str(value)]
    return cmd


def stop_daemon(proc: subprocess.Popen, timeout: float = DAEMON_STOP_S) -> int:
    """SIGTERM (the daemon's clean shutdown), SIGKILL if it overstays."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("daemon did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def demo(args: argparse.Namespace) -> int:
    from edged.cli.monitor import run_monitor

    workdir = Path(tempfile.mkdtemp(prefix="edged-demo-"))
    broker = LocalBroker(workdir, prefer_embedded=args.embedded_broker)
    daemon_log = workdir / "daemon.log"
    print(f"edged demo: {broker.kind} broker on {broker.url}; daemon log {daemon_log}",
          file=sys.stderr)
    daemon: Optional[subprocess.Popen] = None
    code = 0
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must clean up like Ctrl-C does:
    # the daemon and broker run in sessions of their own and would outlive the demo.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        with open(daemon_log, "wb") as logfile:
            # Own session: Ctrl-C reaches only the demo, which then sends SIGTERM.
            daemon = subprocess.Popen(daemon_command(broker.url, args), stdout=logfile,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        code = run_monitor(broker.url, "edged", once=args.seconds,
                           until=lambda: daemon.poll() is not None)
    except KeyboardInterrupt:
        pass
    finally:
        if daemon is not None:
            early = daemon.poll()
            status = stop_daemon(daemon)
            if early not in (None, 0):
                print(f"edged demo: the daemon exited with status {early}:\n{tail(daemon_log)}",
                      file=sys.stderr)
                code = early
            elif status not in (0, -signal.SIGTERM):
                print(f"edged demo: daemon stopped with status {status}", file=sys.stderr)
        broker.stop()
    return code


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="local broker + daemon + live monitor",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, metavar="FILE", help="passed to edged run")
    parser.add_argument("--source", metavar="URI", help="passed to edged run "
                        "(default: the bundled sample video)")
    parser.add_argument("--device", metavar="ID", help="passed to edged run")
    parser.add_argument("--model", metavar="DIR", help="passed to edged run")
    parser.add_argument("--embedded-broker", action="store_true",
                        help="use the built-in Python broker even if mosquitto is installed")
    parser.add_argument("--seconds", type=float, metavar="N",
                        help="stop after N seconds and print one snapshot (for scripts)")
    parser.set_defaults(func=demo)
