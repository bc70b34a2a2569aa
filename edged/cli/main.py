"""`edged` command line: one sub-command per module in edged/cli/.

Each module exposes `register(subparsers)` which adds its parser and sets
`func`. A user mistake raises a `UserError` and becomes one line on stderr with
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from edged import __version__
from edged.errors import UserError

# Sub-command modules, in the order `edged --help` lists them.
COMMAND_MODULES = ("run", "demo", "bench", "soak", "monitor", "model", "camera")


class UsageError(UserError):
    """A mistake on the command line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged",
        description="On-device runtime daemon: camera -> Paddle Lite RegNet -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"edged.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edged.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"edged {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
