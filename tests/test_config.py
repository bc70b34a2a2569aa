"""edged.config: defaults, file, env and CLI overrides, and errors that name the key."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from edged.config import (
    Config,
    ConfigError,
    apply_overrides,
    default_model_dir,
    default_source_uri,
    describe_keys,
    env_var,
    load_config,
)
from edged.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def bundle(tmp_path, monkeypatch) -> Path:
    """A data dir with the bundled model directory, so defaults validate anywhere."""
    data = tmp_path / "data"
    (data / "firmware_models" / "regnety_400mf_inspect").mkdir(parents=True)
    monkeypatch.setenv("EDGED_DATA_DIR", str(data))
    for name in list(os.environ):
        if name.startswith("EDGED_") and name != "EDGED_DATA_DIR":
            monkeypatch.delenv(name)
    return data


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edged.toml"
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str, env=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    assert isinstance(info.value, UserError)
    return str(info.value)


def test_no_file_gives_documented_defaults(bundle):
    cfg = load_config(None, env={})
    assert cfg.engine.threads == 2 and cfg.engine.power_mode == "high"
    assert cfg.publish.policy == "every" and cfg.publish.top_k == 3
    assert cfg.mqtt.broker == "mqtt://localhost:1883" and cfg.mqtt.protocol == "5"
    assert cfg.mqtt.qos == 1 and cfg.mqtt.keepalive_s == 30
    assert cfg.telemetry.interval_s == 10.0
    assert cfg.source.stall_timeout_s == 5.0
    assert cfg.model.resolved_path() == default_model_dir()
    assert default_model_dir() == bundle / "firmware_models" / "regnety_400mf_inspect"
    assert cfg.source.resolved_uri() == default_source_uri()
    assert default_source_uri() == f"file:{bundle}/firmware_models/sample/parts.mp4"


def test_bundle_defaults_to_checkout_without_data_dir_env(monkeypatch):
    monkeypatch.delenv("EDGED_DATA_DIR")
    assert default_model_dir() == REPO / "firmware_models" / "regnety_400mf_inspect"


def test_empty_device_id_means_hostname_and_client_id_follows():
    cfg = load_config(None, env={})
    assert cfg.device_id == socket.gethostname().split(".")[0]
    assert cfg.mqtt.resolved_client_id(cfg.device_id) == f"edged-{cfg.device_id}"


def test_file_values_override_defaults(tmp_path):
    cfg = load_config(write(tmp_path, """
[device]
id = "cam-7"
[engine]
threads = 4
power_mode = "low"
[mqtt]
broker = "mqtts://broker.example:9999"
protocol = "3.1.1"
keepalive_s = 15
reconnect_min_s = 2      # an integer is fine for a float key
"""), env={})
    assert cfg.device_id == "cam-7"
    assert (cfg.engine.threads, cfg.engine.power_mode) == (4, "low")
    assert cfg.mqtt.endpoint() == ("broker.example", 9999, True)
    assert cfg.mqtt.protocol == "3.1.1" and cfg.mqtt.keepalive_s == 15
    assert cfg.mqtt.reconnect_min_s == 2.0 and isinstance(cfg.mqtt.reconnect_min_s, float)


def test_broker_default_ports_follow_scheme():
    cfg = load_config(None, env={"EDGED_MQTT_BROKER": "mqtts://h"})
    assert cfg.mqtt.endpoint() == ("h", 8883, True)
    cfg = load_config(None, env={"EDGED_MQTT_BROKER": "mqtt://h"})
    assert cfg.mqtt.endpoint() == ("h", 1883, False)


def test_env_overrides_file_and_is_converted_to_the_key_type(tmp_path):
    path = write(tmp_path, '[mqtt]\nbroker = "mqtt://a:1"\n[engine]\nthreads = 3\n')
    cfg = load_config(path, env={"EDGED_MQTT_BROKER": "mqtts://h:8883",
                                 "EDGED_ENGINE_THREADS": "1",
                                 "EDGED_MQTT_TLS_INSECURE": "yes",
                                 "EDGED_SOURCE_STALL_TIMEOUT_S": "2.5",
                                 "EDGED_MQTT_PASSWORD": "not a key, ignored"})
    assert cfg.mqtt.broker == "mqtts://h:8883"
    assert cfg.engine.threads == 1
    assert cfg.mqtt.tls_insecure is True
    assert cfg.source.stall_timeout_s == 2.5


def test_env_is_read_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("EDGED_PUBLISH_POLICY", "change")
    assert load_config(None).publish.policy == "change"


def test_cli_overrides_beat_env_and_return_a_new_config(tmp_path):
    model = tmp_path / "other_model"
    model.mkdir()
    cfg = load_config(None, env={"EDGED_MQTT_BROKER": "mqtt://env:1"})
    new = apply_overrides(cfg, broker="mqtt://cli:2", device="d1", model=model,
                          source="synthetic:64x48@5", engine_threads=3, publish_top_k=None)
    assert new.mqtt.endpoint() == ("cli", 2, False)
    assert new.device_id == "d1" and new.model.resolved_path() == model
    assert new.source.uri == "synthetic:64x48@5" and new.engine.threads == 3
    assert new.publish.top_k == 3
    assert cfg.mqtt.broker == "mqtt://env:1"


def test_cli_override_with_bad_value_names_the_key():
    cfg = load_config(None, env={})
    with pytest.raises(ConfigError, match=r"^config: mqtt\.broker: scheme must be"):
        apply_overrides(cfg, broker="http://x")
    with pytest.raises(ConfigError, match="unknown override 'bogus'"):
        apply_overrides(cfg, bogus=1)


@pytest.mark.parametrize("text, expected", [
    ('[mqtt]\nkeepalive_s = "abc"', "config: mqtt.keepalive_s: expected a number, got 'abc'"),
    ("[engine]\nthreads = true", "config: engine.threads: expected a number, got True"),
    ("[mqtt]\ntls_insecure = 1", "config: mqtt.tls_insecure: expected true or false, got 1"),
    ("[device]\nid = 5", "config: device.id: expected a string, got 5"),
    ("[source]\nfps = [1]", "config: source.fps: expected a number, got [1]"),
])
def test_wrong_type_names_key_and_value(tmp_path, text, expected):
    assert config_error(tmp_path, text) == expected


def test_wrong_type_from_env_names_the_key(tmp_path):
    message = config_error(tmp_path, "", env={"EDGED_MQTT_KEEPALIVE_S": "abc"})
    assert message == "config: mqtt.keepalive_s: expected a number, got 'abc'"


def test_unknown_section_and_unknown_key_are_rejected(tmp_path):
    assert "unknown section [cameras]" in config_error(tmp_path, "[cameras]\nx = 1")
    assert config_error(tmp_path, "[mqtt]\nbrokr = 'x'") == "config: mqtt.brokr: unknown key"
    assert "expected a table" in config_error(tmp_path, "mqtt = 1")


@pytest.mark.parametrize("text, key, problem", [
    ("[source]\nstall_timeout_s = -1", "source.stall_timeout_s", "greater than 0"),
    ("[source]\nreopen_backoff_max_s = 0.1", "source.reopen_backoff_max_s", "at least 0.5"),
    ("[telemetry]\ninterval_s = 0", "telemetry.interval_s", "greater than 0"),
    ("[mqtt]\nreconnect_min_s = -2", "mqtt.reconnect_min_s", "greater than 0"),
    ("[publish]\npolicy = 'sometimes'", "publish.policy", "one of every, nth, change, interval"),
    ("[publish]\nevery_nth = 0", "publish.every_nth", "at least 1"),
    ("[publish]\nscore_threshold = 1.5", "publish.score_threshold", "between 0 and 1"),
    ("[engine]\npower_mode = 'turbo'", "engine.power_mode", "one of high, low, full"),
    ("[engine]\nthreads = 0", "engine.threads", "at least 1"),
    ("[mqtt]\nbroker = 'http://h:1883'", "mqtt.broker", "scheme must be mqtt:// or mqtts://"),
    ("[mqtt]\nbroker = 'mqtt://'", "mqtt.broker", "missing host"),
    ("[mqtt]\nbroker = 'mqtt://u:pw@h'", "mqtt.broker", "credentials do not belong"),
    ("[mqtt]\nbroker = 'mqtt://h:99999'", "mqtt.broker", "invalid URL"),
    ("[mqtt]\nprotocol = '4'", "mqtt.protocol", "one of 5, 3.1.1"),
    ("[mqtt]\nqos = 3", "mqtt.qos", "one of 0, 1, 2"),
    ("[mqtt]\nprefix = 'a/#'", "mqtt.prefix", "topic level"),
    ("[device]\nid = 'cam/1'", "device.id", "topic level"),
    ("[mqtt]\nca_file = '/nonexistent/ca.pem'", "mqtt.ca_file", "does not exist"),
    ("[mqtt]\npassword_file = '/nonexistent/pw'", "mqtt.password_file", "does not exist"),
    ("[source]\nfourcc = 'MJPEG'", "source.fourcc", "4 characters"),
    ("[model]\npath = '/nonexistent/model'", "model.path", "/nonexistent/model does not exist"),
])
def test_bad_value_names_key_and_problem(tmp_path, text, key, problem):
    message = config_error(tmp_path, text)
    assert message.startswith(f"config: {key}: "), message
    assert problem in message


def test_missing_bundled_model_is_reported_on_model_path(bundle):
    (bundle / "firmware_models" / "regnety_400mf_inspect").rmdir()
    with pytest.raises(ConfigError, match=r"^config: model\.path: bundled model directory"):
        load_config(None, env={})


def test_missing_or_broken_file_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", env={})
    assert "invalid TOML" in config_error(tmp_path, "[mqtt\n")


def test_protocol_written_as_number_means_version_5(tmp_path):
    cfg = load_config(write(tmp_path, "[mqtt]\nprotocol = 5\n"), env={})
    assert cfg.mqtt.protocol == "5"


def test_password_is_read_from_file_or_env_and_never_in_repr(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = load_config(write(tmp_path, f"[mqtt]\nusername = 'u'\npassword_file = '{secret}'\n"),
                      env={})
    assert cfg.mqtt.password() == "s3cret"
    assert "s3cret" not in repr(cfg)
    cfg = load_config(None, env={"EDGED_MQTT_PASSWORD_ENV": "MY_PW"})
    assert cfg.mqtt.password(env={"MY_PW": "x"}) == "x"
    assert "password_file" in config_error(
        tmp_path, f"[mqtt]\npassword_file = '{secret}'\npassword_env = 'X'\n")


def test_state_dir_falls_back_to_home_when_not_writable(tmp_path, monkeypatch):
    cfg = load_config(None, env={"EDGED_DEVICE_STATE_DIR": str(tmp_path / "new" / "state")})
    assert cfg.device.resolved_state_dir() == tmp_path / "new" / "state"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cfg = apply_overrides(cfg, device_state_dir=str(locked / "state"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cfg.device.resolved_state_dir() == Path.home() / ".local/state/edged"


def test_every_key_is_documented_with_default_and_env_var():
    docs = (REPO / "docs" / "configuration.md").read_text()
    example = (REPO / "systemd" / "edged.toml").read_text()
    for section, keys in describe_keys().items():
        assert f"[{section}]" in example
        for key in keys:
            assert f"`{section}.{key}`" in docs, f"{section}.{key} missing in configuration.md"
            assert env_var(section, key) in docs
            assert re.search(rf"^#?\s*{key} = ", example, re.M), f"{key} missing in edged.toml"


def test_example_config_loads(bundle):
    cfg = load_config(REPO / "systemd" / "edged.toml", env={})
    assert isinstance(cfg, Config)


def test_example_config_defaults_match_the_code(tmp_path):
    """Uncommenting every key of systemd/edged.toml must change nothing."""
    example = (REPO / "systemd" / "edged.toml").read_text()
    uncommented = re.sub(r"^#(\w+ = )", r"\1", example, flags=re.M)
    assert uncommented != example
    cfg = load_config(write(tmp_path, uncommented), env={})
    assert cfg == load_config(None, env={})


def test_load_config_overrides_apply_before_validation(bundle, tmp_path):
    """`--model DIR` must work even where the bundled model is absent."""
    (bundle / "firmware_models" / "regnety_400mf_inspect").rmdir()
    model = tmp_path / "m"
    model.mkdir()
    cfg = load_config(None, env={"EDGED_MQTT_BROKER": "mqtt://env:1"},
                      overrides={"model": model, "broker": "mqtt://cli:2", "device": None})
    assert cfg.model.resolved_path() == model and cfg.mqtt.broker == "mqtt://cli:2"
