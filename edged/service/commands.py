"""Commands from `<prefix>/<device>/cmd`, answered on `<prefix>/<device>/reply`.

Anyone who can publish to the broker can send bytes here, so nothing is trusted:
every message gets exactly one reply, and a message that is oversized, not UTF-8
JSON, of the wrong shape or types, has unknown fields, repeats an `id` already
handled, or carries a `rev` not newer than the last change applied, gets
`ok: false` with a one-line `error` and changes nothing. The handler never raises.

    {"schema": 1, "id": "a1", "cmd": "set_publish", "rev": 7,
     "args": {"policy": "nth", "every_nth": 5}}
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

log = logging.getLogger(__name__)

COMMAND_SCHEMA = 1
REPLY_SCHEMA = 1
MAX_COMMAND_BYTES = 16 * 1024
REMEMBERED_IDS = 1024  # ids of this many recent commands are kept to refuse replays
ENVELOPE = {"schema": int, "id": str, "cmd": str, "args": dict, "rev": int}
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")

ArgTypes = Dict[str, Union[Type, Tuple[Type, ...]]]


class CommandError(Exception):
    """Why a command was refused (one line, sent back in the reply)."""


@dataclass(frozen=True)
class CommandSpec:
    """One command: what runs it, which arguments it takes, whether it changes state."""

    run: Callable[[Dict[str, Any]], Dict[str, Any]]
    args: ArgTypes = field(default_factory=dict)
    changes_state: bool = False  # such commands need a `rev` newer than the last one applied


@dataclass(frozen=True)
class Command:
    id: str
    name: str
    args: Dict[str, Any]
    rev: Optional[int]


class CommandHandler:
    def __init__(self, specs: Dict[str, CommandSpec], reply_fields: Callable[[], Dict[str, Any]]):
        self.specs = specs
        self.reply_fields = reply_fields  # device, boot_id: who answers
        self.applied_rev = 0
        self.handled = 0
        self.refused = 0
        self._seen: "OrderedDict[str, None]" = OrderedDict()

    def handle(self, raw: bytes) -> Dict[str, Any]:
        """The reply to one inbound message (never raises)."""
        command: Optional[Command] = None
        try:
            command = self._parse(raw)
            self._check_fresh(command)
            result = self.specs[command.name].run(command.args)
            self._remember(command)
            self.handled += 1
            return self._reply(command, result=result)
        except CommandError as exc:
            self.refused += 1
            log.warning("command refused: %s", exc)
            return self._reply(command, error=str(exc), raw=raw)
        except Exception as exc:  # a bug in an action must not reach the network thread
            self.refused += 1
            log.exception("command failed")
            return self._reply(command, error=f"internal error: {type(exc).__name__}", raw=raw)

    # ------------------------------------------------------------------ parsing
    def _parse(self, raw: bytes) -> Command:
        if len(raw) > MAX_COMMAND_BYTES:
            raise CommandError(f"message of {len(raw)} bytes is over the {MAX_COMMAND_BYTES}-byte limit")
        try:
            message = _loads(raw)
        except UnicodeDecodeError:
            raise CommandError("message is not UTF-8 text") from None
        except RecursionError:
            raise CommandError("message is nested too deeply") from None
        except ValueError as exc:
            raise CommandError(f"message is not JSON ({exc})") from None
        if not isinstance(message, dict):
            raise CommandError(f"message must be a JSON object, not {_json_type(message)}")
        unknown = sorted(set(message) - set(ENVELOPE))
        if unknown:
            raise CommandError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"allowed: {', '.join(ENVELOPE)}")
        for name in ("schema", "id", "cmd"):
            if name not in message:
                raise CommandError(f"field '{name}' is missing")
        for name, value in message.items():
            _check_type(name, value, ENVELOPE[name])
        if message["schema"] != COMMAND_SCHEMA:
            raise CommandError(f"schema {message['schema']} is not supported (this device speaks {COMMAND_SCHEMA})")
        if not ID_PATTERN.fullmatch(message["id"]):
            raise CommandError("id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        spec = self.specs.get(message["cmd"])
        if spec is None:
            raise CommandError(f"unknown command {message['cmd']!r}; known: {', '.join(sorted(self.specs))}")
        args = message.get("args", {})
        unknown = sorted(set(args) - set(spec.args))
        if unknown:
            raise CommandError(f"{message['cmd']}: unknown argument(s) {', '.join(map(repr, unknown))}"
                               + (f"; allowed: {', '.join(spec.args)}" if spec.args else "; it takes none"))
        for name, value in args.items():
            _check_type(f"args.{name}", value, spec.args[name])
        rev = message.get("rev")
        if spec.changes_state and rev is None:
            raise CommandError(f"{message['cmd']} changes the device: it needs 'rev' (an integer newer "
                               f"than {self.applied_rev})")
        return Command(message["id"], message["cmd"], args, rev)

    def _check_fresh(self, command: Command) -> None:
        if command.id in self._seen:
            raise CommandError(f"command id {command.id!r} was already handled (replay)")
        if self.specs[command.name].changes_state:
            assert command.rev is not None
            if command.rev <= self.applied_rev:
                raise CommandError(f"rev {command.rev} is not newer than the applied rev "
                                   f"{self.applied_rev} (out of order or replayed)")

    def _remember(self, command: Command) -> None:
        self._seen[command.id] = None
        while len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)
        if self.specs[command.name].changes_state and command.rev is not None:
            self.applied_rev = command.rev

    def _reply(self, command: Optional[Command], result: Optional[Dict[str, Any]] = None,
               error: Optional[str] = None, raw: bytes = b"") -> Dict[str, Any]:
        reply = {"schema": REPLY_SCHEMA, **self.reply_fields(),
                 "id": command.id if command else _salvage_id(raw),
                 "cmd": command.name if command else None,
                 "ok": error is None, "error": error, "result": result, "at": round(time.time(), 3)}
        return reply


def _loads(raw: bytes) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to them are refused."""
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _check_type(name: str, value: Any, expected: Union[Type, Tuple[Type, ...]]) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in kinds:  # JSON true is not a number here
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise CommandError(f"field '{name}' must be {wanted}, not {_json_type(value)}")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object",
               bool: "true or false", list: "an array"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {int: "an integer", float: "a number", str: "a string", dict: "an object",
            list: "an array"}.get(type(value), type(value).__name__)


def _salvage_id(raw: bytes) -> Optional[str]:
    """The id of a refused message, if it has a usable one, so the sender can match the reply."""
    try:
        value = _loads(raw).get("id") if len(raw) <= MAX_COMMAND_BYTES else None
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and ID_PATTERN.fullmatch(value) else None
