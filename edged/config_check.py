"""Type conversion and validation for edged.config (kept apart to keep both short).

`coerce()` turns a TOML value or an environment string into the key's type;
`validate()` checks ranges, choices, URLs and paths. Both raise ConfigError
with `config: <section>.<key>: <problem>`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List
from urllib.parse import urlsplit

from edged.config import (
    BROKER_SCHEMES,
    MQTT_PROTOCOLS,
    POWER_MODES,
    PUBLISH_POLICIES,
    Config,
    ConfigError,
    PublishConfig,
)

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"config: {key}: {problem}")


def coerce(key: str, value: Any, default: Any) -> Any:
    """Convert `value` to the type of `default`; strings (from env/CLI) are parsed."""
    if isinstance(default, dict):
        return _to_table(key, value)
    if isinstance(default, bool):
        return _to_bool(key, value)
    if isinstance(default, int):
        return _to_int(key, value)
    if isinstance(default, float):
        return _to_float(key, value)
    if key == "mqtt.protocol" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `protocol = 5` in TOML means "5"
    if not isinstance(value, str):
        raise _fail(key, f"expected a string, got {value!r}")
    return value


def _to_table(key: str, value: Any) -> Dict[str, Any]:
    """A TOML table as is; from env/CLI, `name=value,name=value`."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        from edged.capture.controls import ControlValueError, parse_text
        try:
            return dict(parse_text(value))
        except ControlValueError as exc:
            raise _fail(key, str(exc)) from None
    raise _fail(key, f"expected a table, got {value!r}")


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise _fail(key, f"expected true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(key, f"expected a number, got {value!r}")


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _fail(key, f"expected a number, got {value!r}") from None
    else:
        raise _fail(key, f"expected a number, got {value!r}")
    if not math.isfinite(number):
        raise _fail(key, f"expected a finite number, got {value!r}")
    return number


# ---------------------------------------------------------------------- validation
def validate(cfg: Config) -> None:
    """Raise ConfigError for the first invalid value, in file order."""
    for check in CHECKS:
        check(cfg)


def _at_least(key: str, value: float, low: float, inclusive: bool = True) -> None:
    if value < low or (not inclusive and value == low):
        relation = "at least" if inclusive else "greater than"
        raise _fail(key, f"must be {relation} {low:g}, got {value:g}")


def _one_of(key: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise _fail(key, f"must be one of {', '.join(choices)}, got {value!r}")


def _topic_level(key: str, value: str, allow_empty: bool) -> None:
    if not value and allow_empty:
        return
    bad = [c for c in "/+#\0" if c in value]
    if not value or bad or value != value.strip():
        raise _fail(key, f"must be a non-empty MQTT topic level without / + # or "
                         f"spaces, got {value!r}")


def _check_device(cfg: Config) -> None:
    _topic_level("device.id", cfg.device.id, allow_empty=True)
    if not cfg.device.state_dir:
        raise _fail("device.state_dir", "must not be empty")


def _check_source(cfg: Config) -> None:
    src = cfg.source
    _at_least("source.stall_timeout_s", src.stall_timeout_s, 0, inclusive=False)
    _at_least("source.reopen_backoff_initial_s", src.reopen_backoff_initial_s, 0,
              inclusive=False)
    _at_least("source.reopen_backoff_max_s", src.reopen_backoff_max_s,
              src.reopen_backoff_initial_s)
    for name in ("width", "height", "fps"):
        _at_least(f"source.{name}", getattr(src, name), 0)
    if src.fourcc and len(src.fourcc) != 4:
        raise _fail("source.fourcc", f"must be 4 characters such as MJPG, got {src.fourcc!r}")
    _check_controls(src.controls)
    if src.uri and ":" not in src.uri:
        raise _fail("source.uri", f"expected v4l2:DEVICE, file:PATH or synthetic:WxH@FPS, "
                                  f"got {src.uri!r}")


def _check_controls(controls: Dict[str, Any]) -> None:
    from edged.capture.controls import ControlValueError, plan
    for name, value in controls.items():
        if isinstance(value, float) or not isinstance(value, (int, bool, str)):
            raise _fail(f"source.controls.{name}", f"expected an integer, true/false or a word, "
                                                   f"got {value!r}")
        try:
            plan({name: value})
        except ControlValueError as exc:
            raise _fail("source.controls." + str(exc).split(": ", 1)[0], str(exc).split(": ", 1)[-1]) from None


def _check_model(cfg: Config) -> None:
    path = cfg.model.resolved_path()
    if not path.is_dir():
        what = "model directory" if cfg.model.path else "bundled model directory"
        raise _fail("model.path", f"{what} {path} does not exist")


def _check_engine(cfg: Config) -> None:
    eng = cfg.engine
    _at_least("engine.threads", eng.threads, 1)
    _one_of("engine.power_mode", eng.power_mode, POWER_MODES)
    _at_least("engine.hang_factor", eng.hang_factor, 1, inclusive=False)
    _at_least("engine.hang_min_s", eng.hang_min_s, 0, inclusive=False)
    _at_least("engine.max_restarts_per_minute", eng.max_restarts_per_minute, 0)


def _check_publish(cfg: Config) -> None:
    check_publish(cfg.publish)


def check_publish(pub: PublishConfig) -> None:
    """The [publish] rules, also for changes that arrive as MQTT commands."""
    _one_of("publish.policy", pub.policy, PUBLISH_POLICIES)
    _at_least("publish.every_nth", pub.every_nth, 1)
    _at_least("publish.min_interval_s", pub.min_interval_s, 0)
    if not 0.0 <= pub.score_threshold <= 1.0:
        raise _fail("publish.score_threshold", f"must be between 0 and 1, got "
                                               f"{pub.score_threshold:g}")
    _at_least("publish.top_k", pub.top_k, 1)


def check_broker_url(url: str, key: str = "mqtt.broker") -> None:
    """mqtt://host[:port] or mqtts://host[:port], nothing else (no credentials, no path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _fail(key, f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in BROKER_SCHEMES:
        raise _fail(key, f"scheme must be mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise _fail(key, f"missing host in {url!r}")
    if parts.username or parts.password:
        raise _fail(key, "credentials do not belong in the URL; use mqtt.username "
                         "and mqtt.password_file or mqtt.password_env")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _fail(key, f"unexpected path or query in {url!r}")
    if port is not None and not 0 < port < 65536:
        raise _fail(key, f"port out of range in {url!r}")


def _check_file(key: str, value: str) -> None:
    if value and not Path(value).expanduser().is_file():
        raise _fail(key, f"file {value} does not exist")


def _check_mqtt(cfg: Config) -> None:
    m = cfg.mqtt
    check_broker_url(m.broker)
    _one_of("mqtt.protocol", m.protocol, MQTT_PROTOCOLS)
    for level in m.prefix.split("/"):
        _topic_level("mqtt.prefix", level, allow_empty=False)
    if any(c in m.client_id for c in "\0"):
        raise _fail("mqtt.client_id", "must not contain NUL")
    _at_least("mqtt.keepalive_s", m.keepalive_s, 1)
    _one_of("mqtt.qos", str(m.qos), ("0", "1", "2"))
    _at_least("mqtt.reconnect_min_s", m.reconnect_min_s, 0, inclusive=False)
    _at_least("mqtt.reconnect_max_s", m.reconnect_max_s, m.reconnect_min_s)
    if m.password_file and m.password_env:
        raise _fail("mqtt.password_file", "set either password_file or password_env, not both")
    for name in ("password_file", "ca_file", "cert_file", "key_file"):
        _check_file(f"mqtt.{name}", getattr(m, name))
    if m.key_file and not m.cert_file:
        raise _fail("mqtt.key_file", "needs mqtt.cert_file as well")
    if m.cert_file and not m.broker.startswith("mqtts:"):
        raise _fail("mqtt.cert_file", "client certificates need an mqtts:// broker")


def _check_telemetry(cfg: Config) -> None:
    _at_least("telemetry.interval_s", cfg.telemetry.interval_s, 0, inclusive=False)


def _check_outbox(cfg: Config) -> None:
    box = cfg.outbox
    _at_least("outbox.max_messages", box.max_messages, 1)
    _one_of("outbox.when_full", box.when_full, ("drop_oldest", "drop_newest"))
    _at_least("outbox.drain_rate", box.drain_rate, 0)
    _at_least("outbox.drain_timeout_s", box.drain_timeout_s, 0)


CHECKS: List[Callable[[Config], None]] = [
    _check_device, _check_source, _check_model, _check_engine, _check_publish,
    _check_mqtt, _check_telemetry, _check_outbox,
]
