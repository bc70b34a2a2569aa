"""`edged run`: the daemon. Works without a config file: bundled model, bundled
sample video, broker on localhost. Flags override the file and the environment."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser = sub.add_parser("run", help="run the daemon (camera -> model -> MQTT)",
                            description=__doc__)
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config (default: built-in defaults + EDGED_* env vars)")
    parser.add_argument("--source", metavar="URI",
                        help="v4l2:/dev/video0 | file:PATH[?loop=0&rate=max] | synthetic:WxH@FPS")
    parser.add_argument("--broker", metavar="URL", help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    parser.add_argument("--device", metavar="ID", help="device id in MQTT topics")
    parser.add_argument("--model", metavar="DIR", help="model package directory")
    parser.add_argument("--max-frames", type=int, metavar="N",
                        help="stop cleanly after N frames have been inferred")
    parser.set_defaults(func=run)


def load(args: argparse.Namespace, extra: Optional[Dict[str, Any]] = None) -> Any:
    """The validated Config for these arguments (ConfigError names the bad key).

    `extra` maps "<section>_<key>" to values that override everything (for `edged bench`)."""
    from edged.config import load_config
    overrides: Dict[str, Any] = {"source": args.source, "broker": args.broker,
                                 "device": args.device, "model": args.model}
    overrides.update(extra or {})
    return load_config(args.config, os.environ, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    from edged.capture import parse_uri
    from edged.cli.main import UsageError
    from edged.service.daemon import Daemon

    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError("--max-frames must be at least 1")
    cfg = load(args)
    parse_uri(cfg.source.resolved_uri())  # a bad URI is a start-up error, not a retry loop
    daemon = Daemon(cfg, max_frames=args.max_frames)
    log.info("edged %s: device %s, boot %s, source %s, model %s", _version(), daemon.device_id,
             daemon.boot_id, daemon.source_uri, daemon.package.root)
    return daemon.run()


def _version() -> str:
    from edged import __version__
    return __version__
