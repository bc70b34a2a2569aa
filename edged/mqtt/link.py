"""MqttLink: the daemon's only connection to the broker (the only paho user).

The rest of edged calls `set_status`, `publish_result`, `publish_telemetry` and
never sees paho, a socket or a topic string. The link never blocks or raises
because the broker is away: paho's network thread connects in the background,
queues QoS 1 messages (bounded) while offline and delivers them after reconnect.

The retained status is the device's truth for dashboards, so "latest wins":
it is sent only while connected and republished after every (re)connect. It is
published with QoS 0 on purpose: paho re-sends unacknowledged QoS 1 messages
*after* on_connect runs, so a QoS 1 status sent just before a connection drop
could overwrite the newer status republished on reconnect. The Last Will is QoS 1.

Locking: `_lock` guards state and is never held while calling into paho (paho
calls our callbacks with its own locks held); `_status_send` serialises status
snapshots with their publication so an older one can never go out last.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from edged import __version__
from edged.config import ConfigError, MqttConfig
from edged.mqtt.topics import DeviceTopics

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATES = ("online", "degraded", "offline")
MAX_QUEUED = 10000          # QoS>0 messages kept while offline (~10 MB of results)
WILL_QOS = 1
PRUNE_MIN = 1024
MAX_REJECTIONS_KEPT = 10_000  # refused acks not yet collected (bounded in case nobody asks)
STOP_SLICE_S = 0.05   # shutdown re-checks acks at least this often

MessageHandler = Callable[[str, bytes], None]


def _acked(info: paho.MQTTMessageInfo) -> bool:
    """True once the broker acknowledged the message.

    A message queued while offline keeps rc=NO_CONN even after paho delivers it
    on reconnect, and is_published() raises for it; its flag is still set, so
    read that (paho is pinned < 3 in pyproject).
    """
    if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN):
        return info.is_published()
    return bool(getattr(info, "_published", False))


def _jittered(value: float, low: float, high: float) -> float:
    """Spread reconnect delays so a fleet does not reconnect in lock step."""
    return value * random.uniform(low, high)


class MqttLink:
    """A self-healing MQTT connection for one device.

    Attributes read by telemetry: `connected` (true only after a successful
    CONNACK), `reconnects` (successful connects after the first), `refused`
    (CONNACKs with an error), `dropped` (messages refused because the offline
    queue was full).
    """

    def __init__(self, cfg: MqttConfig, device_id: str, boot_id: str) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.boot_id = boot_id
        self.topics = DeviceTopics(cfg.prefix, device_id)
        self.connected = False
        self.reconnects = 0
        self.dropped = 0
        self._connects = 0
        self._lock = threading.Condition()
        self._status: Optional[Dict[str, Any]] = None
        self._status_send = threading.Lock()
        self._pending: List[paho.MQTTMessageInfo] = []
        self._prune_at = PRUNE_MIN
        self.refused = 0
        self._rejected: "OrderedDict[int, str]" = OrderedDict()  # mid -> why the broker refused it
        self._subscriptions: Dict[str, MessageHandler] = {}
        self._started = False
        self._client = self._make_client()

    # ------------------------------------------------------------------ setup
    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                             client_id=cfg.resolved_client_id(self.device_id),
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                             clean_session=None if v5 else True)
        client.enable_logger(logging.getLogger("edged.mqtt.paho"))
        client.max_queued_messages_set(MAX_QUEUED)
        self._set_backoff(client)
        self._configure_tls(client)
        if cfg.username:
            password = cfg.password()
            if password is None and cfg.password_env:
                log.warning("mqtt: %s is not set; connecting without a password",
                            cfg.password_env)
            client.username_pw_set(cfg.username, password)
        will = self._status_payload("offline", "connection lost", {}, time.time())
        client.will_set(self.topics.status, json.dumps(will), qos=WILL_QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _set_backoff(self, client: paho.Client) -> None:
        """Exponential backoff (paho doubles the delay); jitter the bounds each outage."""
        low = _jittered(self.cfg.reconnect_min_s, 0.5, 1.5)
        high = max(low, _jittered(self.cfg.reconnect_max_s, 0.75, 1.0))
        client.reconnect_delay_set(min_delay=low, max_delay=high)  # type: ignore[arg-type]

    def _configure_tls(self, client: paho.Client) -> None:
        _, _, tls = self.cfg.endpoint()
        if not tls:
            return
        cfg = self.cfg
        try:
            client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                           keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError) as exc:
            key = "mqtt.cert_file" if cfg.cert_file else "mqtt.ca_file"
            raise ConfigError(f"config: {key}: cannot load TLS files: {exc}") from None
        client.tls_insecure_set(cfg.tls_insecure)

    # ------------------------------------------------------------- public API
    def start(self) -> None:
        """Connect in the background; returns at once even if the broker is down."""
        if self._started:
            return
        self._started = True
        host, port, tls = self.cfg.endpoint()
        log.info("mqtt: connecting to %s:%s (tls=%s, protocol %s) as %s",
                 host, port, tls, self.cfg.protocol, self.device_id)
        self._client.connect_async(host, port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float, connected: bool = True) -> bool:
        """Block until `connected` has the wanted value; False on timeout."""
        return self.wait_until(lambda: self.connected == connected, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until predicate() over the link's counters holds (re-checked on events)."""
        with self._lock:
            return self._lock.wait_for(predicate, timeout)

    def set_status(self, state: str, reason: Optional[str] = None, **fields: Any) -> None:
        """Set the retained status; kept and republished after every reconnect."""
        if state not in STATES:
            raise ValueError(f"invalid status state {state!r}")
        with self._status_send:
            with self._lock:
                old = self._status
                changed = old is None or (old["state"], old["reason"]) != (state, reason)
                since = time.time() if changed else old["since"]  # type: ignore[index]
                self._status = self._status_payload(state, reason, fields, since)
                payload, connected = dict(self._status), self.connected
            if connected:
                self._publish(self.topics.status, payload, 0, retain=True)

    @property
    def status(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            return dict(self._status) if self._status else None

    def publish_result(self, payload: Dict[str, Any]) -> bool:
        """Publish on <prefix>/<device>/result; False if the offline queue is full."""
        return self._publish(self.topics.result, payload, self.cfg.qos) is not None

    def publish_telemetry(self, payload: Dict[str, Any]) -> bool:
        """Publish on <prefix>/<device>/telemetry; False if the offline queue is full."""
        return self._publish(self.topics.telemetry, payload, self.cfg.qos) is not None

    def publish_reply(self, payload: Dict[str, Any]) -> bool:
        """Publish on <prefix>/<device>/reply (QoS 1, not retained): the answer to a command."""
        return self._publish(self.topics.reply, payload, 1) is not None

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Call handler(topic, payload) for matching messages; resubscribed on reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = handler
            connected = self.connected
        if connected:
            self._client.subscribe(topic_filter, qos=qos)

    def pending(self) -> int:
        """QoS>0 messages not yet acknowledged by the broker."""
        with self._lock:
            self._prune_locked()
            return len(self._pending)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish status offline, wait up to `timeout` for pending acks, disconnect."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        status = self.status or {}
        extra = {k: v for k, v in status.items() if k not in self._base_keys()}
        self.set_status("offline", "shutdown", **extra)
        left = self._wait_acked(deadline)
        if left:
            log.warning("mqtt: %d message(s) not acknowledged before shutdown", left)
        self._started = False  # before disconnect: a clean stop is not a connection loss
        self._client.disconnect()
        self._client.loop_stop()

    # --------------------------------------------------------------- helpers
    def _wait_acked(self, deadline: float) -> int:
        """Wait for pending QoS>0 acks until deadline; return how many are left.

        paho marks a message published just *after* on_publish notifies us, so
        the wait is sliced rather than trusting one notification.
        """
        with self._lock:
            while self._prune_locked() and time.monotonic() < deadline:
                self._lock.wait(min(STOP_SLICE_S, max(0.0, deadline - time.monotonic())))
            return len(self._pending)

    @staticmethod
    def _base_keys() -> tuple:
        return ("schema", "state", "reason", "device", "boot_id", "version", "since")

    def _status_payload(self, state: str, reason: Optional[str], fields: Dict[str, Any],
                        since: float) -> Dict[str, Any]:
        payload: Dict[str, Any] = {"schema": SCHEMA_VERSION, "state": state, "reason": reason,
                                   "device": self.device_id, "boot_id": self.boot_id,
                                   "version": __version__, "since": since}
        payload.update({k: v for k, v in fields.items() if k not in payload})
        return payload

    def _properties(self) -> Optional[Properties]:
        if self.cfg.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        return props

    def take_rejection(self, mid: int) -> Optional[str]:
        """Why the broker refused the acknowledged message `mid` (MQTT 5), or None if it took it."""
        with self._lock:
            return self._rejected.pop(mid, None)

    def publish_bytes(self, topic: str, data: bytes, qos: int) -> Optional[paho.MQTTMessageInfo]:
        """Publish an already serialised payload; the returned info's `is_published()`
        turns true on PUBACK (None when paho's offline queue is full). The caller owns
        the acknowledgement (DurableResults keeps the result until it): the link does
        not track it, and `stop()` does not wait for it."""
        return self._send(topic, data, qos, track=False)

    def _publish(self, topic: str, payload: Dict[str, Any], qos: int,
                 retain: bool = False) -> Optional[paho.MQTTMessageInfo]:
        return self._send(topic, json.dumps(payload, separators=(",", ":")), qos, retain)

    def _send(self, topic: str, data: Any, qos: int, retain: bool = False,
              track: bool = True) -> Optional[paho.MQTTMessageInfo]:
        info = self._client.publish(topic, data, qos=qos, retain=retain,
                                    properties=self._properties())
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            log.warning("mqtt: offline queue full, dropped a message on %s", topic)
            return None
        if qos > 0 and track:
            with self._lock:
                self._pending.append(info)
                if len(self._pending) >= self._prune_at:   # amortised, keeps memory bounded
                    self._prune_at = max(PRUNE_MIN, 2 * self._prune_locked())
        return info

    def _prune_locked(self) -> int:
        self._pending = [i for i in self._pending if not _acked(i)]
        return len(self._pending)

    # ------------------------------------------------------ paho callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: broker refused the connection: %s", reason_code)
            with self._lock:
                self.refused += 1
                self._lock.notify_all()
            return
        with self._status_send:
            with self._lock:
                self.connected = True
                self._connects += 1
                self.reconnects = self._connects - 1
                status = dict(self._status) if self._status else None
                filters = list(self._subscriptions)
                self._lock.notify_all()
            if status is not None:
                self._publish(self.topics.status, status, 0, retain=True)
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=1)
        self._set_backoff(client)
        log.info("mqtt: connected (%s)", "first" if self._connects == 1
                 else f"reconnect {self.reconnects}")

    def _on_connect_fail(self, client, userdata) -> None:
        log.debug("mqtt: connection attempt failed; retrying with backoff")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was = self.connected
            self.connected = False
            self._lock.notify_all()
        if was and self._started:
            log.warning("mqtt: disconnected (%s); reconnecting", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties=None) -> None:
        with self._lock:
            if getattr(reason_code, "is_failure", False):  # MQTT 5: e.g. "Not authorized", "Quota exceeded"
                self._rejected[mid] = str(reason_code)
                while len(self._rejected) > MAX_REJECTIONS_KEPT:
                    self._rejected.popitem(last=False)
            self._lock.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            handlers = [h for f, h in self._subscriptions.items()
                        if paho.topic_matches_sub(f, message.topic)]
        for handler in handlers:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:  # a handler bug must not kill the network thread
                log.exception("mqtt: handler for %s failed", message.topic)

    def __repr__(self) -> str:
        host, port, tls = self.cfg.endpoint()
        return (f"MqttLink({host}:{port}, tls={tls}, device={self.device_id!r}, "
                f"connected={self.connected})")
