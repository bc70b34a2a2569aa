"""Inbound commands: every message gets one schema-valid reply; bad ones change nothing.

The handler is driven here with a small set of commands over a plain dict of state;
the daemon's own commands are exercised against a real daemon in
tests/test_fault_injection.py. Hypothesis throws arbitrary bytes, arbitrary JSON and
near-valid commands at it; tests/fuzz_corpus/commands holds the malformed messages
that also go to the real daemon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.schemas import load_schema
from edged.service.commands import MAX_COMMAND_BYTES, CommandError, CommandHandler, CommandSpec

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus" / "commands"
REPLY = jsonschema.Draft202012Validator(load_schema("reply"))


def make_handler():
    state: Dict[str, Any] = {"every_nth": 1, "changes": 0}

    def set_nth(args: Dict[str, Any]) -> Dict[str, Any]:
        if args.get("every_nth", 1) < 1:
            raise CommandError("every_nth: must be at least 1")
        state.update(args, changes=state["changes"] + 1)
        return {"every_nth": state["every_nth"]}

    specs = {"ping": CommandSpec(lambda args: {"pong": True}),
             "set_nth": CommandSpec(set_nth, {"every_nth": int}, changes_state=True)}
    return CommandHandler(specs, lambda: {"device": "cam1", "boot_id": "b1"}), state


def send(handler: CommandHandler, message: Any) -> Dict[str, Any]:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    reply = handler.handle(raw)
    REPLY.validate(reply)
    json.dumps(reply, allow_nan=False)  # what goes on the wire is strict JSON
    return reply


def test_a_valid_command_is_answered_with_its_id_and_result():
    handler, _ = make_handler()
    reply = send(handler, {"schema": 1, "id": "a1", "cmd": "ping"})
    assert reply["ok"] and reply["id"] == "a1" and reply["cmd"] == "ping"
    assert reply["result"] == {"pong": True} and reply["error"] is None


@pytest.mark.parametrize("message, error", [
    (b"x" * (MAX_COMMAND_BYTES + 1), "over the 16384-byte limit"),
    (b'{"schema": 1, "id": "a', "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ([1, 2], "must be a JSON object, not an array"),
    ({"schema": 1, "id": "a", "cmd": "ping", "x": 1}, "unknown field(s) 'x'"),
    ({"schema": 1, "cmd": "ping"}, "field 'id' is missing"),
    ({"schema": 1, "id": "a b", "cmd": "ping"}, "id must be 1-64 characters"),
    ({"schema": True, "id": "a", "cmd": "ping"}, "field 'schema' must be an integer, not true/false"),
    ({"schema": 2, "id": "a", "cmd": "ping"}, "schema 2 is not supported"),
    ({"schema": 1, "id": "a", "cmd": "format_disk"}, "unknown command 'format_disk'"),
    ({"schema": 1, "id": "a", "cmd": "set_nth", "args": {"every_nth": 2}}, "needs 'rev'"),
    ({"schema": 1, "id": "a", "cmd": "set_nth", "rev": 1, "args": {"every_nth": "2"}},
     "field 'args.every_nth' must be an integer, not a string"),
    ({"schema": 1, "id": "a", "cmd": "set_nth", "rev": 1, "args": {"n": 2}}, "unknown argument(s) 'n'"),
    ({"schema": 1, "id": "a", "cmd": "set_nth", "rev": 1, "args": {"every_nth": 0}}, "at least 1"),
    (b'{"schema": 1, "id": "a", "cmd": "set_nth", "rev": 1, "args": {"every_nth": NaN}}', "NaN"),
])
def test_bad_messages_get_a_clear_error_and_change_nothing(message, error):
    handler, state = make_handler()
    reply = send(handler, message)
    assert not reply["ok"] and error in reply["error"], reply["error"]
    assert state == {"every_nth": 1, "changes": 0}


def test_refused_message_still_names_its_id_when_it_has_a_usable_one():
    handler, _ = make_handler()
    assert send(handler, {"schema": 1, "id": "x9", "cmd": "nope"})["id"] == "x9"
    assert send(handler, b"garbage")["id"] is None


def test_a_replayed_id_is_refused_and_not_run_twice():
    handler, state = make_handler()
    command = {"schema": 1, "id": "c1", "cmd": "set_nth", "rev": 1, "args": {"every_nth": 3}}
    assert send(handler, command)["ok"]
    again = send(handler, command)
    assert not again["ok"] and "already handled (replay)" in again["error"]
    assert state["changes"] == 1


def test_an_older_rev_is_refused_as_out_of_order():
    handler, state = make_handler()
    assert send(handler, {"schema": 1, "id": "c2", "cmd": "set_nth", "rev": 5, "args": {"every_nth": 5}})["ok"]
    late = send(handler, {"schema": 1, "id": "c1", "cmd": "set_nth", "rev": 4, "args": {"every_nth": 4}})
    assert not late["ok"] and "rev 4 is not newer than the applied rev 5" in late["error"]
    assert state["every_nth"] == 5 and state["changes"] == 1


def test_a_failing_action_is_an_error_reply_not_an_exception():
    def broken(args):
        raise KeyError("bug")
    handler = CommandHandler({"boom": CommandSpec(broken)}, lambda: {"device": "d", "boot_id": "b"})
    reply = handler.handle(b'{"schema": 1, "id": "z", "cmd": "boom"}')
    assert not reply["ok"] and reply["error"] == "internal error: KeyError"


def test_every_corpus_message_is_refused_with_a_reason():
    handler, state = make_handler()
    files = sorted(CORPUS.iterdir())
    assert len(files) >= 20
    for path in files:
        reply = send(handler, path.read_bytes())
        assert not reply["ok"] and reply["error"], path.name
    assert state["changes"] == 0


# ------------------------------------------------------------------ property tests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
envelope_fields = st.fixed_dictionaries({}, optional={
    "schema": st.sampled_from([1, 2, "1", None, True]),
    "id": st.sampled_from(["a", "b", "", "x" * 65, 3]) | st.text(max_size=5),
    "cmd": st.sampled_from(["ping", "set_nth", "nope", 1]),
    "rev": st.integers(-2, 5) | st.text(max_size=2) | st.none(),
    "args": st.dictionaries(st.sampled_from(["every_nth", "x"]), json_values, max_size=2) | json_values,
    "extra": json_values})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_and_always_get_a_valid_reply(raw):
    handler, state = make_handler()
    reply = send(handler, raw)
    assert reply["ok"] is False or state["changes"] <= 1


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values | envelope_fields, min_size=1, max_size=6))
def test_any_sequence_of_json_messages_changes_state_only_through_accepted_commands(messages):
    handler, state = make_handler()
    accepted_changes, last_rev = 0, 0
    for message in messages:
        reply = send(handler, message)
        if reply["ok"] and reply["cmd"] == "set_nth":
            accepted_changes += 1
            assert message["rev"] > last_rev  # never applied out of order
            last_rev = message["rev"]
    assert state["changes"] == accepted_changes
