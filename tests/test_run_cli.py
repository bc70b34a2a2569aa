"""`edged run` rejects invalid configuration at start: exit 2, one line naming the key."""

from __future__ import annotations

import pytest

from helpers.daemon import model_dir, run_cli, toml_text


@pytest.mark.parametrize("config, flags, expected", [
    ({"engine": {"turbo": True}}, [], "engine.turbo: unknown key"),
    ({"engine": {"threads": "many"}}, [], "engine.threads"),
    ({}, ["--model", "/nonexistent/model"], "model.path"),
    ({}, ["--broker", "http://localhost:1883"], "mqtt.broker"),
    ({"publish": {"policy": "sometimes"}}, [], "publish.policy"),
    ({}, ["--source", "rtsp://camera"], "source"),
], ids=["unknown-key", "wrong-type", "missing-model", "bad-broker-url", "bad-policy", "bad-source"])
def test_invalid_config_exits_2_with_one_line_naming_the_key(tmp_path, config, flags, expected):
    path = tmp_path / "edged.toml"
    path.write_text(toml_text(config))
    args = ["run", "--config", str(path)]
    if "--model" not in flags:
        args += ["--model", str(model_dir())]
    proc = run_cli(*args, *flags)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edged run: error:"), proc.stderr
    assert expected in lines[0] and "Traceback" not in proc.stderr


def test_run_help_lists_the_overrides():
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for flag in ("--config", "--source", "--broker", "--device", "--model", "--max-frames"):
        assert flag in proc.stdout


def test_model_that_paddle_lite_cannot_load_exits_2(tmp_path):
    import hashlib
    import json
    import shutil

    source = model_dir()
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = broken / entry["path"]
        path.write_bytes(b"not a paddle lite model" * 100)
        entry["size"] = path.stat().st_size
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("run", "--model", str(broken), "--source", "synthetic:64x48@5",
                   "--broker", "mqtt://127.0.0.1:1", "--max-frames", "1")
    assert proc.returncode == 2, proc.stderr
    assert "edged run: error: model" in proc.stderr and "Traceback" not in proc.stderr
