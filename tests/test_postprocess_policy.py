"""Postprocess (softmax, top-k, NaN detection) and the publish policy."""

from __future__ import annotations

import numpy as np
import pytest

from edged.engine.postprocess import NonFiniteOutput, softmax, top_k
from edged.service.publish_policy import PublishPolicy

LABELS = ["ok", "scratch", "spot", "crack"]


def test_top_k_orders_by_probability_with_labels_and_indices():
    top = top_k(np.array([[1.0, 3.0, 2.0, 0.0]], dtype=np.float32), LABELS, k=3)
    assert [t["label"] for t in top] == ["scratch", "spot", "ok"]
    assert [t["index"] for t in top] == [1, 2, 0]
    expected = softmax(np.array([1.0, 3.0, 2.0, 0.0]))
    assert top[0]["score"] == pytest.approx(expected[1], abs=1e-6)


def test_top_k_keeps_probabilities_when_the_model_ends_in_softmax():
    top = top_k(np.array([0.1, 0.2, 0.6, 0.1]), LABELS, k=1)
    assert top == [{"label": "spot", "index": 2, "score": pytest.approx(0.6)}]


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([1000.0, 1001.0, 999.0]))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_output_is_an_error_not_a_result(bad):
    with pytest.raises(NonFiniteOutput):
        top_k(np.array([0.0, bad, 1.0, 2.0]), LABELS)


def test_top_k_checks_label_count():
    with pytest.raises(ValueError, match="4 labels"):
        top_k(np.zeros(5), LABELS)


def decide_all(policy: PublishPolicy, results):
    return [policy.decide(label, score, now) for label, score, now in results]


def test_policy_every_publishes_all():
    assert decide_all(PublishPolicy("every"), [("a", 0.9, t) for t in range(4)]) == [True] * 4


def test_policy_nth_publishes_first_and_every_nth():
    got = decide_all(PublishPolicy("nth", every_nth=3), [("a", 0.9, t) for t in range(7)])
    assert got == [True, False, False, True, False, False, True]


def test_policy_change_publishes_on_label_change_only():
    seq = [("ok", 0.9, 0), ("ok", 0.9, 1), ("crack", 0.8, 2), ("crack", 0.9, 3), ("ok", 0.9, 4)]
    assert decide_all(PublishPolicy("change"), seq) == [True, False, True, False, True]


def test_policy_interval_limits_rate():
    seq = [("a", 0.9, t) for t in (0.0, 0.4, 0.99, 1.0, 1.5, 2.1)]
    assert decide_all(PublishPolicy("interval", min_interval_s=1.0), seq) == [
        True, False, False, True, False, True]


def test_score_threshold_applies_to_every_policy_and_to_change_memory():
    policy = PublishPolicy("change", score_threshold=0.5)
    seq = [("ok", 0.9, 0), ("crack", 0.3, 1), ("ok", 0.9, 2), ("crack", 0.6, 3)]
    assert decide_all(policy, seq) == [True, False, False, True]
