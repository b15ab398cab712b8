"""Unit tests for metrics, aggregation and top-k selection (`ml_assets/ml/`)."""

from __future__ import annotations

import numpy as np
import pytest

from ml_assets.ml.aggregate import aggregate, ensemble_tags, mean_scores, score_matrix, scores_frame
from ml_assets.ml.metrics import entity_coverage, evaluate, hit_at_1, predicted_tags
from ml_assets.ml.ranking import (
    LeaderboardEntry,
    NoQualifyingModelError,
    leaderboard_markdown,
    rank,
    select_top_k,
)

# --- metrics -----------------------------------------------------------------------------

TRUTH_MC = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=np.uint8)
SCORES_MC = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]]
)  # right, right, wrong (says 0), right


def test_hit_at_1_multiclass() -> None:
    assert hit_at_1(TRUTH_MC, SCORES_MC) == pytest.approx(0.75)


def test_hit_at_1_multilabel_counts_any_true_label() -> None:
    truth = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=np.uint8)
    scores = np.array([[0.1, 0.9, 0.0], [0.9, 0.0, 0.8], [0.0, 0.2, 0.3]])
    assert hit_at_1(truth, scores) == pytest.approx(2 / 3)


def test_hit_at_1_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="zero records"):
        hit_at_1(np.zeros((0, 3)), np.zeros((0, 3)))


def test_evaluate_multiclass_macro_f1() -> None:
    result = evaluate(TRUTH_MC, SCORES_MC, "multiclass", 0.5)
    assert result.f1_kind == "macro_f1"
    assert result.hit_at_1 == pytest.approx(0.75)
    # per class F1: class 0: p=1/2 r=1 → 2/3; class 1: 1; class 2: 0 → mean 5/9
    assert result.f1 == pytest.approx(5 / 9)
    assert result.as_metadata() == {"score": 0.75, "hit_at_1": 0.75, "macro_f1": result.f1}


def test_evaluate_multilabel_micro_f1() -> None:
    truth = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.uint8)
    scores = np.array([[0.9, 0.4, 0.6], [0.2, 0.1, 0.7]])
    result = evaluate(truth, scores, "multilabel", 0.5)
    # predicted: [1,0,1], [0,0,1] → tp=2, fp=1, fn=1 → micro F1 = 2·2 / (2·2 + 1 + 1)
    assert result.f1_kind == "micro_f1"
    assert result.f1 == pytest.approx(4 / 6)
    assert result.hit_at_1 == pytest.approx(1.0)


def test_predicted_tags_threshold_is_inclusive() -> None:
    scores = np.array([[0.5, 0.49, 0.9]])
    np.testing.assert_array_equal(predicted_tags(scores, "multilabel", 0.5), [[1, 0, 1]])
    np.testing.assert_array_equal(predicted_tags(scores, "multiclass", 0.5), [[0, 0, 1]])


def test_entity_coverage() -> None:
    tags = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.uint8)
    truth = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=np.uint8)
    assert entity_coverage(tags) == 2
    assert entity_coverage(tags, truth) == 1


# --- aggregation -------------------------------------------------------------------------


def test_mean_scores() -> None:
    a = np.array([[0.2, 0.8], [1.0, 0.0]])
    b = np.array([[0.4, 0.6], [0.0, 1.0]])
    np.testing.assert_allclose(mean_scores([a, b]), [[0.3, 0.7], [0.5, 0.5]])


def test_mean_scores_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError, match="nothing to aggregate"):
        mean_scores([])
    with pytest.raises(ValueError, match="disagree in shape"):
        mean_scores([np.zeros((2, 3)), np.zeros((2, 4))])


def test_aggregate_multiclass_top_entity() -> None:
    a = np.array([[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    b = np.array([[0.0, 0.9, 0.1], [0.2, 0.2, 0.6]])
    frame, mean, tags = aggregate(
        np.array(["q1", "q2"]), ["cat", "dog", "eel"], [a, b], "multiclass", 0.5
    )
    np.testing.assert_allclose(mean, [[0.3, 0.65, 0.05], [0.15, 0.15, 0.7]])
    assert frame["request_id"].tolist() == ["q1", "q2"]
    assert frame["top_entity"].tolist() == ["dog", "eel"]
    assert frame["tags"].tolist() == [["dog"], ["eel"]]
    np.testing.assert_array_equal(tags, [[0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(score_matrix(frame, ["cat", "dog", "eel"]), mean)


def test_aggregate_multilabel_union_ranked_by_mean() -> None:
    entities = ["a", "b", "c", "d"]
    one = np.array([[0.9, 0.1, 0.55, 0.0]])  # tags a, c
    two = np.array([[0.3, 0.2, 0.4, 0.97]])  # tags d
    frame, mean, tags = aggregate(np.array(["r"]), entities, [one, two], "multilabel", 0.5)
    np.testing.assert_array_equal(tags, [[1, 0, 1, 1]])
    # Mean scores: a 0.6, b 0.15, c 0.475, d 0.485; b is tagged by neither model.
    assert frame["tags"].tolist() == [["a", "d", "c"]]
    assert frame["top_entity"].tolist() == ["a"]
    np.testing.assert_allclose(mean, [[0.6, 0.15, 0.475, 0.485]])


def test_aggregate_multilabel_ranking_follows_mean_not_model_order() -> None:
    one = np.array([[0.6, 0.0]])
    two = np.array([[0.0, 1.0]])
    frame, _, _ = aggregate(np.array(["r"]), ["x", "y"], [one, two], "multilabel", 0.5)
    assert frame["tags"].tolist() == [["y", "x"]]  # y: 0.5 mean > x: 0.3


def test_ensemble_covers_more_entities_than_either_model() -> None:
    # Model A knows entities 0 and 1, model B knows 2 and 3 (two "perspectives").
    truth = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]], dtype=np.uint8)
    model_a = np.where(truth[:, :2] == 1, 0.9, 0.1)
    model_a = np.hstack([model_a, np.full((3, 2), 0.05)])
    model_b = np.where(truth[:, 2:] == 1, 0.8, 0.2)
    model_b = np.hstack([np.full((3, 2), 0.05), model_b])
    cover_a = entity_coverage(predicted_tags(model_a, "multilabel", 0.5), truth)
    cover_b = entity_coverage(predicted_tags(model_b, "multilabel", 0.5), truth)
    _, union = ensemble_tags([model_a, model_b], "multilabel", 0.5)
    cover_ensemble = entity_coverage(union, truth)
    assert (cover_a, cover_b) == (2, 2)
    assert cover_ensemble == 4
    np.testing.assert_array_equal(union, truth)


def test_scores_frame_columns() -> None:
    frame = scores_frame(np.array(["a", "b"]), ["x", "y"], np.array([[0.1, 0.9], [0.4, 0.6]]))
    assert list(frame.columns) == ["request_id", "score:x", "score:y"]
    assert frame["score:y"].tolist() == [0.9, 0.6]


# --- selection ---------------------------------------------------------------------------


def _landed(name: str, score: float, f1: float = 0.5) -> LeaderboardEntry:
    return LeaderboardEntry(name=name, status="landed", score=score, f1=f1)


def test_select_top_k_above_bar() -> None:
    entries = [_landed("a", 0.91), _landed("b", 0.97), _landed("c", 0.95), _landed("d", 0.89)]
    assert [e.name for e in select_top_k(entries, 2, 0.90)] == ["b", "c"]
    assert [e.name for e in select_top_k(entries, 5, 0.90)] == ["b", "c", "a"]
    assert [e.name for e in select_top_k(entries, 1, 0.96)] == ["b"]


def test_select_top_k_bar_is_inclusive() -> None:
    assert [e.name for e in select_top_k([_landed("a", 0.9)], 2, 0.9)] == ["a"]


def test_select_top_k_ties_deterministic() -> None:
    entries = [
        _landed("zeta", 0.95, f1=0.9),
        _landed("beta", 0.95, f1=0.8),
        _landed("alpha", 0.95, f1=0.8),
        _landed("omega", 0.96, f1=0.1),
    ]
    expected = ["omega", "zeta", "alpha", "beta"]
    assert [e.name for e in select_top_k(entries, 4, 0.9)] == expected
    assert [e.name for e in select_top_k(list(reversed(entries)), 4, 0.9)] == expected


def test_select_top_k_ignores_entries_not_landed() -> None:
    entries = [
        LeaderboardEntry("failed-best", "failed", score=0.99, f1=0.99),
        LeaderboardEntry("running", "running"),
        LeaderboardEntry("stale", "stale", score=0.98),
        _landed("ok", 0.92),
    ]
    assert [e.name for e in select_top_k(entries, 2, 0.9)] == ["ok"]


def test_no_qualifying_model_lists_every_candidate_and_bar() -> None:
    entries = [
        _landed("weak", 0.81),
        LeaderboardEntry("broken", "failed", note="OOM"),
        LeaderboardEntry("slow", "running"),
    ]
    with pytest.raises(NoQualifyingModelError) as info:
        select_top_k(entries, 2, 0.9)
    message = str(info.value)
    assert "score >= 0.900" in message
    assert "weak: 0.8100 (below bar)" in message
    assert "broken: — (failed; OOM)" in message
    assert "slow: — (running)" in message


def test_rank_puts_landed_first() -> None:
    entries = [LeaderboardEntry("a-missing", "missing"), _landed("z", 0.5), _landed("y", 0.7)]
    assert [e.name for e in rank(entries)] == ["y", "z", "a-missing"]


def test_leaderboard_markdown_rows() -> None:
    entries = [
        _landed("good", 0.95, f1=0.94),
        _landed("weak", 0.80, f1=0.70),
        LeaderboardEntry("broken", "failed", note="boom"),
    ]
    table = leaderboard_markdown(entries, ["good"], 0.9).splitlines()
    assert table[0].startswith("| rank | candidate | status | score |")
    assert len(table) == 2 + 3
    assert table[2] == "| 1 | good | landed | 0.9500 | 0.9400 | yes |  |"
    assert table[3] == "| 2 | weak | landed | 0.8000 | 0.7000 | below bar |  |"
    assert table[4] == "|  | broken | failed |  |  |  | boom |"
