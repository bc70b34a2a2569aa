"""JSON Schemas (draft 2020-12) of the MQTT payloads, shipped with the package.

Dashboards and tests validate against these files; docs/mqtt.md describes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

SCHEMA_DIR = Path(__file__).resolve().parent
NAMES = ("status", "result", "telemetry", "reply")


def schema_path(name: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r} (known: {', '.join(NAMES)})")
    return SCHEMA_DIR / f"{name}.json"


def load_schema(name: str) -> Dict[str, Any]:
    with open(schema_path(name), encoding="utf-8") as fh:
        return json.load(fh)
