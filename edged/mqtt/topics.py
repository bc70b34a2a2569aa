"""MQTT topic names: the one place that formats and parses them.

Layout: `<prefix>/<device>/<kind>` with kind one of status, result, telemetry,
and cmd (inbound) / reply for commands
(OTA topics will join as `<prefix>/<device>/ota/...`). Dashboards subscribe to
`<prefix>/+/<kind>`; shared subscriptions prepend `$share/<group>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

STATUS = "status"
RESULT = "result"
TELEMETRY = "telemetry"
KINDS = (STATUS, RESULT, TELEMETRY)  # what devices publish (dashboards subscribe to these)
COMMAND = "cmd"  # commands to one device (docs/mqtt.md, "Commands")
REPLY = "reply"  # the device's answer to each command


def topic(prefix: str, device: str, kind: str, *rest: str) -> str:
    """`<prefix>/<device>/<kind>[/rest...]`; device and levels must not hold / + #."""
    for level in (device, kind) + rest:
        if not level or any(c in level for c in "/+#"):
            raise ValueError(f"invalid MQTT topic level {level!r}")
    return "/".join((prefix.strip("/"), device, kind) + rest)


def status_topic(prefix: str, device: str) -> str:
    return topic(prefix, device, STATUS)


def result_topic(prefix: str, device: str) -> str:
    return topic(prefix, device, RESULT)


def telemetry_topic(prefix: str, device: str) -> str:
    return topic(prefix, device, TELEMETRY)


def all_devices(prefix: str, kind: str) -> str:
    """Subscription filter for one kind of message from every device."""
    return f"{prefix.strip('/')}/+/{kind}"


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription (MQTT 5) so several dashboard instances split the load."""
    return f"$share/{group}/{topic_filter}"


def parse(prefix: str, name: str) -> Optional[Tuple[str, str]]:
    """(device, kind) for `<prefix>/<device>/<kind>`, or None for anything else."""
    head = prefix.strip("/") + "/"
    if not name.startswith(head):
        return None
    parts = name[len(head):].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in KINDS:
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class DeviceTopics:
    """The topics of one device, bound once so callers never format strings."""

    prefix: str
    device: str

    @property
    def status(self) -> str:
        return status_topic(self.prefix, self.device)

    @property
    def result(self) -> str:
        return result_topic(self.prefix, self.device)

    @property
    def telemetry(self) -> str:
        return telemetry_topic(self.prefix, self.device)

    @property
    def command(self) -> str:
        return topic(self.prefix, self.device, COMMAND)

    @property
    def reply(self) -> str:
        return topic(self.prefix, self.device, REPLY)
