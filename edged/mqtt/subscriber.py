"""A read-only MQTT subscriber for tools (monitor, tests, dashboards in Python).

Keeps paho inside edged/mqtt: callers get `handler(device, kind, payload)` with
the JSON already decoded and the topic already parsed.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import uuid
from typing import Any, Callable, Optional, Sequence

import paho.mqtt.client as paho

from edged.config import MqttConfig
from edged.mqtt import topics

log = logging.getLogger(__name__)

Handler = Callable[[str, str, Any], None]


class FleetSubscriber:
    """Subscribes to `<prefix>/+/<kind>` for the given kinds; resubscribes on reconnect."""

    def __init__(self, cfg: MqttConfig, handler: Handler,
                 kinds: Sequence[str] = topics.KINDS) -> None:
        self.cfg = cfg
        self.handler = handler
        self.filters = [topics.all_devices(cfg.prefix, kind) for kind in kinds]
        self.connected = threading.Event()
        v5 = cfg.protocol == "5"
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"edged-monitor-{uuid.uuid4().hex[:8]}",
                                   protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        self._client.reconnect_delay_set(min_delay=cfg.reconnect_min_s,  # type: ignore[arg-type]
                                         max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
        host, self._port, tls = cfg.endpoint()
        self._host = host
        if tls:
            self._client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                                 keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            self._client.tls_insecure_set(cfg.tls_insecure)
        if cfg.username:
            self._client.username_pw_set(cfg.username, cfg.password())
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; never blocks on an absent broker."""
        self._client.connect_async(self._host, self._port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: Optional[float]) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: broker refused the connection: %s", reason_code)
            return
        for topic_filter in self.filters:
            client.subscribe(topic_filter, qos=1)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self.connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        parsed = topics.parse(self.cfg.prefix, message.topic)
        if parsed is None:
            return
        try:
            payload = json.loads(message.payload.decode("utf-8")) if message.payload else None
        except (UnicodeDecodeError, ValueError):
            log.debug("ignoring non-JSON message on %s", message.topic)
            return
        try:
            self.handler(parsed[0], parsed[1], payload)
        except Exception:  # a display bug must not kill the network thread
            log.exception("handler failed for %s", message.topic)
