"""Run an MqttLink in its own process so a test can `kill -9` it.

Usage: python link_child.py BROKER_URL DEVICE
Prints "connected" once the link has a CONNACK and its online status is out,
then idles until killed.
"""

from __future__ import annotations

import sys
import threading

from edged.config import MqttConfig
from edged.mqtt.link import MqttLink


def main() -> None:
    url, device = sys.argv[1], sys.argv[2]
    cfg = MqttConfig(broker=url, keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.5)
    link = MqttLink(cfg, device, boot_id="child-boot")
    link.set_status("online", None, model="test-model")
    link.start()
    if not link.wait_connected(20):
        print("not connected", flush=True)
        sys.exit(1)
    print("connected", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
