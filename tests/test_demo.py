"""`edged demo` orchestration: broker, daemon child, monitor, clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest



def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", "demo", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("broker_flag", [[], ["--embedded-broker"]])
def test_demo_reports_daemon_start_failure_in_one_line_and_stops(broker_flag, tmp_path):
    done = demo(*broker_flag, "--model", str(tmp_path / "absent"), "--seconds", "30")
    assert done.returncode == 2
    assert "the daemon exited with status 2" in done.stderr
    assert "config: model.path:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_demo_shows_the_device_online_with_results(tmp_path):
    done = demo("--embedded-broker", "--device", "demo-cam", "--source", "synthetic:320x240@10",
                "--seconds", "25")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("demo-cam"))
    assert "online" in row


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "kill", "terminal-closed"])
def test_ctrl_c_kill_or_closed_terminal_stops_daemon_then_broker(signum):
    proc = subprocess.Popen([sys.executable, "-m", "edged", "demo", "--device", "demo-int",
                             "--source", "synthetic:320x240@10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The monitor's header means broker and daemon are up.
        for line in proc.stdout:
            if "edged monitor" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(signum)
        assert proc.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
