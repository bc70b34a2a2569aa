"""The Paddle Lite wrapper: the only module that imports `paddlelite`.

Import it only inside the worker process, after `configure_threads()`: the x86
wheel's `MobileConfig` has no `set_threads`, its thread count follows
`OMP_NUM_THREADS`/`MKL_NUM_THREADS` read when the library loads (PLATFORM.md).
Never import it in a process that imports `paddle`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

POWER_MODES = {"high": "LITE_POWER_HIGH", "low": "LITE_POWER_LOW", "full": "LITE_POWER_FULL",
               "no_bind": "LITE_POWER_NO_BIND", "rand_high": "LITE_POWER_RAND_HIGH",
               "rand_low": "LITE_POWER_RAND_LOW"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def configure_threads(threads: int) -> None:
    """Set the thread env vars; must run before `paddlelite` is first imported."""
    if "paddlelite.lite" in sys.modules:
        log.warning("paddlelite already loaded: thread count %s may not apply", threads)
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


class LitePredictor:
    """One loaded `.nb`: `run(chw)` -> a copy of output 0 as float32."""

    def __init__(self, model_path: str, threads: int = 1, power_mode: str = "high") -> None:
        from paddlelite.lite import MobileConfig, PowerMode, create_paddle_predictor

        config = MobileConfig()
        config.set_model_from_file(str(model_path))
        self.applied: Dict[str, Any] = {"backend": "paddle-lite", "threads": threads,
                                        "power_mode": power_mode}
        if hasattr(config, "set_threads"):  # ARM builds only
            config.set_threads(int(threads))
        else:
            self.applied["threads_via"] = "env"
        if hasattr(config, "set_power_mode"):
            config.set_power_mode(getattr(PowerMode, POWER_MODES[power_mode]))
        else:
            self.applied["power_mode"] = "n/a"
        self._predictor = create_paddle_predictor(config)
        self._input = self._predictor.get_input(0)
        self.applied["version"] = self._safe_version()

    def _safe_version(self) -> str:
        try:
            return str(self._predictor.get_version())
        except Exception:  # older builds lack it; only informational
            return "unknown"

    def run(self, chw: np.ndarray) -> np.ndarray:
        """Infer one (3, H, W) or (1, 3, H, W) float32 input; returns a fresh array."""
        batch = chw.reshape((1,) + chw.shape[-3:])
        self._input.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        self._predictor.run()
        # Tensor.numpy() is a view into Paddle Lite's buffer: copy it out.
        return np.array(self._predictor.get_output(0).numpy(), dtype=np.float32, copy=True)

    def output_shape(self) -> Tuple[int, ...]:
        return tuple(self._predictor.get_output(0).shape())
