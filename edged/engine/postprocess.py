"""Network output -> top-k labels with probabilities.

A NaN or Inf in the output is not a result: it means the worker's state is broken
(PLATFORM.md lists ways Paddle Lite produces NaN), so it raises and the supervisor
treats it as a worker failure.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Union

import numpy as np


class NonFiniteOutput(ValueError):
    """The network produced NaN or Inf."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D vector (float64 for the sums)."""
    z = logits.astype(np.float64).reshape(-1)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def check_finite(output: np.ndarray) -> None:
    if not np.isfinite(output).all():
        bad = int(np.count_nonzero(~np.isfinite(output)))
        raise NonFiniteOutput(f"network output has {bad} NaN/Inf value(s) of {output.size}")


def looks_like_probabilities(values: np.ndarray) -> bool:
    """True when the model already ends in a softmax (non-negative, sums to 1)."""
    return bool(values.min() >= 0.0 and abs(float(values.sum()) - 1.0) < 1e-3)


def top_k(output: np.ndarray, labels: Sequence[str], k: int = 5) -> List[Dict[str, Union[str, int, float]]]:
    """[{label, index, score}] best first; softmax applied unless already probabilities."""
    check_finite(output)
    flat = np.asarray(output).reshape(-1)
    if len(labels) != flat.size:
        raise ValueError(f"model has {flat.size} outputs but {len(labels)} labels")
    probs = flat.astype(np.float64) if looks_like_probabilities(flat) else softmax(flat)
    k = max(1, min(k, flat.size))
    best = np.argpartition(-probs, k - 1)[:k]
    best = best[np.argsort(-probs[best], kind="stable")]
    return [{"label": labels[i], "index": int(i), "score": round(float(probs[i]), 6)} for i in best]
