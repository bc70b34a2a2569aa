"""edged configuration: one TOML file, `EDGED_<SECTION>_<KEY>` env overrides, CLI overrides.

Every key has a default so `edged run` works without a file. Everything is
checked at load time so a bad value stops the daemon at start with one line that
names the key (`config: mqtt.keepalive_s: expected a number, got 'abc'`), not
hours later. Values that depend on the machine (hostname, bundled model,
writable state dir) stay empty in the config and are resolved by the
`resolved_*` methods when used.

Precedence: defaults < file < environment < `apply_overrides()` (CLI flags).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from edged.errors import UserError

log = logging.getLogger(__name__)

ENV_PREFIX = "EDGED_"
DATA_DIR_ENV = "EDGED_DATA_DIR"
BUNDLED_MODEL = "regnety_400mf_inspect"
SAMPLE_VIDEO = Path("sample") / "parts.mp4"
POWER_MODES = ("high", "low", "full", "no_bind", "rand_high", "rand_low")
PUBLISH_POLICIES = ("every", "nth", "change", "interval")
MQTT_PROTOCOLS = ("5", "3.1.1")
BROKER_SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}


class ConfigError(UserError):
    """An invalid configuration; the message names the key and the problem."""


def _key(default: Any, doc: str) -> Any:
    """A config key: its default and the one line that docs/configuration.md shows."""
    return field(default=default, metadata={"doc": doc})


# --------------------------------------------------------------------------- paths
def data_dir() -> Path:
    """Where `firmware_models/` lives: $EDGED_DATA_DIR, else the checkout holding edged/."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent


def default_model_dir() -> Path:
    """The model package shipped with edged."""
    return data_dir() / "firmware_models" / BUNDLED_MODEL


def default_source_uri() -> str:
    """The bundled sample video, as a `file:` source URI."""
    return f"file:{data_dir() / 'firmware_models' / SAMPLE_VIDEO}"


# ------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class DeviceConfig:
    id: str = _key("", "device id used in MQTT topics; empty = the hostname")
    state_dir: str = _key("/var/lib/edged", "persistent state; falls back to "
                          "~/.local/state/edged when not writable and not root")

    def resolved_id(self) -> str:
        return self.id or _topic_safe(socket.gethostname().split(".")[0]) or "edged"

    def resolved_state_dir(self) -> Path:
        """The configured dir if usable; unprivileged users fall back to their home."""
        path = Path(self.state_dir).expanduser()
        if _writable_or_creatable(path) or os.geteuid() == 0:
            return path
        return Path.home() / ".local" / "state" / "edged"


@dataclass(frozen=True)
class SourceConfig:
    uri: str = _key("", "v4l2:/dev/video0 | file:PATH[?loop=0&rate=max] | synthetic:WxH@FPS; "
                    "empty = the bundled sample video")
    stall_timeout_s: float = _key(5.0, "no frame for this long = camera stalled, reopen it")
    reopen_backoff_initial_s: float = _key(0.5, "first wait before reopening a failed source")
    reopen_backoff_max_s: float = _key(30.0, "longest wait between reopen attempts")
    width: int = _key(0, "requested capture width; 0 = driver default")
    height: int = _key(0, "requested capture height; 0 = driver default")
    fps: float = _key(0.0, "requested capture frame rate; 0 = driver default")
    fourcc: str = _key("", "requested pixel format such as MJPG or YUYV; empty = the first "
                       "of MJPG, YUYV, others the device offers")
    controls: Dict[str, Any] = field(default_factory=dict, metadata={
        "doc": "camera controls, a [source.controls] table (exposure_mode, exposure, gain, "
               "white_balance, focus, power_line_frequency, or any V4L2 control name); "
               "env: name=value,name=value"})

    def resolved_uri(self) -> str:
        return self.uri or default_source_uri()


@dataclass(frozen=True)
class ModelConfig:
    path: str = _key("", "model package directory; empty = the bundled "
                     f"firmware_models/{BUNDLED_MODEL}")

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_model_dir()


@dataclass(frozen=True)
class EngineConfig:
    threads: int = _key(2, "Paddle Lite inference threads")
    power_mode: str = _key("high", "ARM core binding: " + ", ".join(POWER_MODES))
    hang_factor: float = _key(10.0, "a worker is hung after this multiple of the median "
                              "inference time without an answer")
    hang_min_s: float = _key(5.0, "never declare a hang sooner than this")
    max_restarts_per_minute: int = _key(5, "worker restarts allowed per minute before "
                                        "the daemon gives up")


@dataclass(frozen=True)
class PublishConfig:
    policy: str = _key("every", "which results to publish: every | nth | change | interval")
    every_nth: int = _key(1, "with policy nth: publish every Nth inferred frame")
    min_interval_s: float = _key(0.0, "minimum seconds between published results "
                                 "(policy interval; 0 = no limit)")
    score_threshold: float = _key(0.0, "publish only when the top score is at least this")
    top_k: int = _key(3, "labels per result")


@dataclass(frozen=True)
class MqttConfig:
    broker: str = _key("mqtt://localhost:1883", "broker URL, mqtt://HOST[:1883] or "
                       "mqtts://HOST[:8883] (TLS)")
    protocol: str = _key("5", "MQTT protocol version: \"5\" or \"3.1.1\"")
    prefix: str = _key("edged", "first topic level: <prefix>/<device>/...")
    client_id: str = _key("", "MQTT client id; empty = edged-<device>")
    keepalive_s: int = _key(30, "MQTT keepalive in seconds")
    username: str = _key("", "username; empty = anonymous")
    password_file: str = _key("", "file whose first line is the password")
    password_env: str = _key("", "name of an environment variable holding the password")
    ca_file: str = _key("", "CA bundle to verify the broker (mqtts); empty = system CAs")
    cert_file: str = _key("", "client certificate (PEM) for mutual TLS")
    key_file: str = _key("", "client private key (PEM) for mutual TLS")
    tls_insecure: bool = _key(False, "skip broker hostname verification (testing only)")
    qos: int = _key(1, "QoS of results and telemetry (status is always QoS 1)")
    reconnect_min_s: float = _key(1.0, "first reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = _key(60.0, "longest reconnect delay")

    def endpoint(self) -> Tuple[str, int, bool]:
        """(host, port, tls) from `broker`; the URL was checked at load."""
        parts = urlsplit(self.broker)
        port, tls = BROKER_SCHEMES[parts.scheme]
        return parts.hostname or "", parts.port or port, tls

    def resolved_client_id(self, device_id: str) -> str:
        return self.client_id or f"edged-{device_id}"

    def password(self, env: Mapping[str, str] = os.environ) -> Optional[str]:
        """Read the password at connect time, so it never sits in the config or a log."""
        if self.password_file:
            try:
                text = Path(self.password_file).expanduser().read_text()
            except OSError as exc:
                raise ConfigError(f"config: mqtt.password_file: cannot read "
                                  f"{self.password_file}: {exc.strerror}") from None
            return text.splitlines()[0] if text else ""
        if self.password_env:
            return env.get(self.password_env)
        return None


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = _key(10.0, "seconds between telemetry messages")


@dataclass(frozen=True)
class OutboxConfig:
    max_messages: int = _key(100000, "results kept on disk while the broker is unreachable")
    when_full: str = _key("drop_oldest", "at the bound: drop_oldest | drop_newest (drops are counted)")
    drain_rate: float = _key(0.0, "a backlog left by an outage is sent at most this many per second "
                             "while new results go out at once; 0 = no limit, all strictly in seq order")
    drain_timeout_s: float = _key(5.0, "on shutdown, wait this long for the broker to acknowledge the backlog")


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)

    @property
    def device_id(self) -> str:
        return self.device.resolved_id()


# Section name -> its dataclass (each Config field's default_factory is the class).
SECTIONS: Dict[str, type] = {f.name: f.default_factory  # type: ignore[misc]
                             for f in dataclasses.fields(Config)}

# CLI flag names accepted by apply_overrides() besides "<section>_<key>".
CLI_ALIASES = {"source": ("source", "uri"), "broker": ("mqtt", "broker"),
               "device": ("device", "id"), "model": ("model", "path")}


# ------------------------------------------------------------------------- loading
def load_config(path: Optional[Path] = None, env: Mapping[str, str] = os.environ,
                overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Defaults, the TOML file (if any), `EDGED_<SECTION>_<KEY>`, then `overrides`.

    `overrides` are CLI values as for apply_overrides(); they are applied
    before validation, so e.g. `--model DIR` works when the bundled model is absent.
    """
    raw = _read_toml(Path(path)) if path is not None else {}
    values = _from_mapping(raw)
    for (section, key), text in _from_env(env).items():
        values.setdefault(section, {})[key] = text
    _merge_overrides(values, overrides or {})
    return _build(values)


def apply_overrides(cfg: Config, **overrides: Any) -> Config:
    """A copy of `cfg` with CLI values applied (None = not given), validated again.

    Names are `source`, `broker`, `device`, `model` or `<section>_<key>`.
    """
    values = {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}
    _merge_overrides(values, overrides)
    return _build(values)


def _merge_overrides(values: Dict[str, Dict[str, Any]], overrides: Mapping[str, Any]) -> None:
    for name, value in overrides.items():
        if value is None:
            continue
        section, key = CLI_ALIASES.get(name) or _split_env_name(name.lower())
        if section not in SECTIONS or key not in _field_names(section):
            raise ConfigError(f"config: unknown override {name!r}")
        values.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value


def _read_toml(path: Path) -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config: {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from None


def _from_mapping(raw: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Check the file's shape: known sections holding tables of known keys."""
    values: Dict[str, Dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"config: unknown section [{section}] "
                              f"(known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config: {section}: expected a table [{section}]")
        known = _field_names(section)
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"config: {section}.{key}: unknown key")
        values[section] = dict(table)
    return values


def _from_env(env: Mapping[str, str]) -> Dict[Tuple[str, str], str]:
    found: Dict[Tuple[str, str], str] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == DATA_DIR_ENV:
            continue
        section, key = _split_env_name(name[len(ENV_PREFIX):].lower())
        if section not in SECTIONS:
            continue
        if key not in _field_names(section):
            log.warning("ignoring %s: no config key %s.%s", name, section, key)
            continue
        found[(section, key)] = text
    return found


def _split_env_name(name: str) -> Tuple[str, str]:
    section, _, key = name.partition("_")
    return section, key


def _field_names(section: str) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _default(f: dataclasses.Field) -> Any:
    """A key's default, also for keys whose default is a factory (tables)."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _build(values: Mapping[str, Mapping[str, Any]]) -> Config:
    from edged.config_check import coerce, validate

    sections = {}
    for section, cls in SECTIONS.items():
        fields = _field_names(section)
        given = values.get(section, {})
        kwargs = {key: coerce(f"{section}.{key}", value, _default(fields[key]))
                  for key, value in given.items()}
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------- utilities
def _topic_safe(text: str) -> str:
    return "".join(c for c in text if c not in "/+#\0" and not c.isspace())


def _writable_or_creatable(path: Path) -> bool:
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def describe_keys() -> Dict[str, Dict[str, Tuple[Any, str]]]:
    """{section: {key: (default, doc)}} for documentation and `--print-config`."""
    return {section: {f.name: (_default(f), f.metadata.get("doc", ""))
                      for f in dataclasses.fields(cls)}
            for section, cls in SECTIONS.items()}


def env_var(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
