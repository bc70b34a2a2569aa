"""Which inferred frames become published results.

    every      every frame
    nth        every Nth inferred frame (1st, N+1th, ...)
    change     when the top label differs from the last published one
    interval   at most one result per `min_interval_s`

`score_threshold` applies to every policy: a top score below it is not published
(and does not count as "the last label" for `change`).
"""

from __future__ import annotations

from typing import Optional


class PublishPolicy:
    def __init__(self, policy: str = "every", every_nth: int = 1, min_interval_s: float = 0.0,
                 score_threshold: float = 0.0) -> None:
        if policy not in ("every", "nth", "change", "interval"):
            raise ValueError(f"unknown publish policy {policy!r}")
        self.policy = policy
        self.every_nth = max(1, int(every_nth))
        self.min_interval_s = float(min_interval_s)
        self.score_threshold = float(score_threshold)
        self._seen = 0
        self._last_label: Optional[str] = None
        self._last_time: Optional[float] = None

    def decide(self, label: str, score: float, now: float) -> bool:
        """True if this result should be published; records it as published if so."""
        index = self._seen
        self._seen += 1
        if score < self.score_threshold:
            return False
        if self.policy == "nth" and index % self.every_nth:
            return False
        if self.policy == "change" and label == self._last_label:
            return False
        if (self.policy == "interval" and self._last_time is not None
                and now - self._last_time < self.min_interval_s):
            return False
        self._last_label = label
        self._last_time = now
        return True
