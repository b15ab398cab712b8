"""YouTube-8M ranking metrics (`ml_assets/ml/metrics.py`): hand cases and a brute-force check."""

from __future__ import annotations

import numpy as np
import pytest

from ml_assets.ml.metrics import (
    METRICS,
    all_metrics,
    canonical_metric,
    entities_covered,
    gap_at_k,
    mean_average_precision,
    perr,
)

# 2 records x 4 entities; entity 3 has no positive anywhere.
TRUTH = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=np.uint8)
SCORES = np.array([[0.9, 0.8, 0.1, 0.05], [0.3, 0.7, 0.2, 0.0]])


# --- brute force, straight from the definitions ------------------------------------------


def _top(row: list[float], k: int) -> list[int]:
    """Entities by score descending (ties: lower entity first), cut at k."""
    return sorted(range(len(row)), key=lambda e: -row[e])[:k]


def _ap(pairs: list[tuple[float, int]], n_positives: int) -> float:
    ranked = sorted(pairs, key=lambda p: -p[0])  # stable: ties keep their pooled order
    total, seen = 0.0, 0
    for i, (_, positive) in enumerate(ranked, start=1):
        if positive:
            seen += 1
            total += seen / i
    return total / n_positives


def ref_gap(truth: np.ndarray, scores: np.ndarray, k: int) -> float:
    t, s = truth.tolist(), scores.tolist()
    pairs = [(s[r][e], t[r][e]) for r in range(len(t)) for e in _top(s[r], k)]
    n_positives = sum(sum(row) for row in t)
    return _ap(pairs, n_positives) if n_positives else 0.0


def ref_perr(truth: np.ndarray, scores: np.ndarray) -> float:
    t, s = truth.tolist(), scores.tolist()
    precisions = []
    for r in range(len(t)):
        n = sum(t[r])
        if n:
            top = _top(s[r], n)
            precisions.append(sum(1 for e in top if t[r][e] and s[r][e] > 0) / n)
    return sum(precisions) / len(precisions)


def ref_map(truth: np.ndarray, scores: np.ndarray, k: int) -> float:
    t, s = truth.tolist(), scores.tolist()
    tops = [set(_top(row, k)) for row in s]
    aps = []
    for e in range(len(t[0])):
        n_positives = sum(row[e] for row in t)
        if n_positives:
            pairs = [(s[r][e], t[r][e]) for r in range(len(t)) if e in tops[r]]
            aps.append(_ap(pairs, n_positives))
    return sum(aps) / len(aps) if aps else 0.0


# --- hand-computed cases -----------------------------------------------------------------


def test_gap_hand_case() -> None:
    # k=2 pools r0: 0.9+ 0.8-, r1: 0.7+ 0.3-  ->  0.9+ 0.8- 0.7+ 0.3-; N = 3 (r0/e2 is missed)
    assert gap_at_k(TRUTH, SCORES, k=2) == pytest.approx((1 / 1 + 2 / 3) / 3)
    # k=4 adds 0.2- 0.1+ 0.05- 0.0-  ->  + at positions 1, 3, 6
    assert gap_at_k(TRUTH, SCORES, k=4) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)


def test_gap_penalizes_a_label_outside_the_top_k() -> None:
    truth = np.array([[1, 1, 0]], dtype=np.uint8)
    scores = np.array([[0.9, 0.5, 0.1]])
    assert gap_at_k(truth, scores, k=1) == pytest.approx(1 / 2)  # (1/1) / 2: e1 cut off
    assert gap_at_k(truth, scores, k=3) == pytest.approx(1.0)  # (1/1 + 2/2) / 2
    assert gap_at_k(truth, scores, k=1) < gap_at_k(truth, scores, k=3)


def test_gap_breaks_ties_by_record_then_entity() -> None:
    # all scores tie: pooled order r0e0- r0e1+ r1e0- r1e1+  ->  (1/2 + 2/4) / 2
    # (reversed, r1e1+ r1e0- r0e1+ r0e0-, it would be (1/1 + 2/3) / 2)
    truth = np.array([[0, 1], [0, 1]], dtype=np.uint8)
    assert gap_at_k(truth, np.full((2, 2), 0.5)) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_gap_without_positives_is_zero() -> None:
    assert gap_at_k(np.zeros((2, 3), dtype=np.uint8), np.ones((2, 3))) == 0.0


def test_perr_hand_case() -> None:
    # r0: 2 labels, top 2 = e0+ e1- -> 1/2; r1: 1 label, top 1 = e1+ -> 1; r2 has no label
    truth = np.vstack([TRUTH, np.zeros((1, 4), dtype=np.uint8)])
    scores = np.vstack([SCORES, np.full((1, 4), 0.5)])
    assert perr(truth, scores) == pytest.approx((1 / 2 + 1) / 2)


def test_perr_ignores_true_labels_scored_zero() -> None:
    # top 2 = e0 (0.9, true) and e1 (0.0, true, but scored 0)  ->  1/2
    truth = np.array([[1, 1, 0]], dtype=np.uint8)
    assert perr(truth, np.array([[0.9, 0.0, 0.0]])) == pytest.approx(1 / 2)


def test_perr_without_labels_is_an_error() -> None:
    with pytest.raises(ValueError, match="no record has a label"):
        perr(np.zeros((2, 3), dtype=np.uint8), np.ones((2, 3)))


def test_map_hand_case() -> None:
    # k=2. e0: r0 0.9+, r1 0.3- -> 1/1 / 1; e1: r0 0.8-, r1 0.7+ -> (1/2) / 1;
    # e2: never in a top 2 -> 0 / 1; e3 has no positive -> left out.
    assert mean_average_precision(TRUTH, SCORES, k=2) == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_map_without_positives_is_zero() -> None:
    assert mean_average_precision(np.zeros((2, 3), dtype=np.uint8), np.ones((2, 3))) == 0.0


# --- vectorized == brute force -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((60, 9)) < 0.3).astype(np.uint8)
    scores = rng.random((60, 9))
    if seed % 2:
        scores = np.round(scores, 1)  # many ties, and some zeros
    k = 3
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    assert (truth.astype(bool) & (ranks >= k)).any()  # positives outside the top k exist
    assert gap_at_k(truth, scores, k=k) == pytest.approx(ref_gap(truth, scores, k))
    assert perr(truth, scores) == pytest.approx(ref_perr(truth, scores))
    assert mean_average_precision(truth, scores, k=k) == pytest.approx(ref_map(truth, scores, k))
    assert gap_at_k(truth, scores) == pytest.approx(ref_gap(truth, scores, 20))  # k > entities


def test_perfect_predictions_score_one() -> None:
    rng = np.random.default_rng(7)
    truth = (rng.random((50, 10)) < 0.3).astype(np.uint8)
    truth[:, 0] |= truth.sum(axis=1) == 0  # every record has a label
    scores = truth * 0.5 + rng.random(truth.shape) * 0.4  # every true label outranks the rest
    assert gap_at_k(truth, scores) == pytest.approx(1.0)
    assert perr(truth, scores) == pytest.approx(1.0)
    assert mean_average_precision(truth, scores) == pytest.approx(1.0)


# --- registry, names and checks ----------------------------------------------------------


def test_all_metrics_covers_the_registry() -> None:
    assert set(METRICS) == {"hit@1", "gap@20", "perr", "map"}
    values = all_metrics(TRUTH, SCORES)
    assert values["hit@1"] == pytest.approx(1.0)  # top entities e0 and e1 are both true
    assert values["gap@20"] == pytest.approx(gap_at_k(TRUTH, SCORES, k=20))
    assert values["map"] == pytest.approx(mean_average_precision(TRUTH, SCORES, k=20))
    assert values["perr"] == pytest.approx(perr(TRUTH, SCORES))


def test_alias_and_unknown_metric() -> None:
    assert canonical_metric("accuracy") == "hit@1"
    assert canonical_metric("gap@20") == "gap@20"
    with pytest.raises(ValueError, match=r"unknown metric 'f2'.*hit@1.*gap@20.*perr.*map"):
        canonical_metric("f2")


@pytest.mark.parametrize("metric", [*METRICS.values(), gap_at_k, perr, mean_average_precision])
def test_shape_mismatch_and_empty_input_are_errors(metric: object) -> None:
    assert callable(metric)
    with pytest.raises(ValueError, match=r"\(2, 4\) and \(2, 3\)"):
        metric(TRUTH, SCORES[:, :3])
    with pytest.raises(ValueError, match="empty"):
        metric(np.zeros((0, 4), dtype=np.uint8), np.zeros((0, 4)))


def test_k_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        gap_at_k(TRUTH, SCORES, k=0)


def test_entities_covered_names_correct_tags_in_order() -> None:
    tags = np.array([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=np.uint8)  # e2, e1 right; e3 wrong
    assert entities_covered(tags, TRUTH, ["a", "b", "c", "d"]) == ["b", "c"]


def test_config_accepts_exactly_the_registered_metrics() -> None:
    from typing import get_args

    from ml_assets.core.config import METRIC_ALIASES as CONFIG_ALIASES
    from ml_assets.core.config import Metric
    from ml_assets.ml.metrics import METRIC_ALIASES, METRICS, metric_label

    assert list(get_args(Metric)) == list(METRICS)
    assert dict(CONFIG_ALIASES) == dict(METRIC_ALIASES)
    assert [metric_label(m) for m in METRICS] == ["hit_at_1", "gap_at_20", "perr", "map"]
