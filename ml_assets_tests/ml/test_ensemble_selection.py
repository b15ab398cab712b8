"""Unit tests for greedy ensemble selection (`ml_assets/ml/ensemble.py`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from ml_assets.ml.ensemble import combine, select_ensemble


def hit1(truth: np.ndarray, scores: np.ndarray) -> float:
    """Share of records whose top-scored entity is true."""
    return float(truth[np.arange(len(truth)), scores.argmax(axis=1)].mean())


def prec2(truth: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-record precision of the two top-scored entities."""
    top2 = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    return float(np.take_along_axis(truth, top2, axis=1).mean())


def neg_mse(truth: np.ndarray, scores: np.ndarray) -> float:
    return -float(((scores - truth) ** 2).mean())


# 8 records, 3 entities; record i is of class i % 3.
TRUTH = np.eye(3)[np.arange(8) % 3]


def model(right: Iterable[int], sure_when_wrong: bool = False) -> np.ndarray:
    """Confidently right on the `right` records; wrong elsewhere (weakly, unless told)."""
    scores = np.empty((8, 3))
    for i in range(8):
        true, wrong = i % 3, (i + 1) % 3
        if i in set(right):
            scores[i] = 0.05
            scores[i, true] = 0.9
        elif sure_when_wrong:
            scores[i] = 0.03
            scores[i, wrong] = 0.94
        else:
            scores[i] = 0.3
            scores[i, wrong] = 0.4
    return scores


def test_greedy_picks_the_complementary_pair_over_the_two_best_singles() -> None:
    scores = {
        "a": model(range(5)),  # 0.625
        "b": model(range(5)),  # 0.625, the same records as a
        "c": model(range(4, 8)),  # 0.5, right where a and b are wrong
    }
    choice = select_ensemble(
        scores, TRUTH, hit1, k=2, eligible=["a", "b", "c"], metric_name="hit@1"
    )
    assert choice.strategy_used == "ensemble"
    assert choice.members == ["a", "c"]
    assert choice.weights == [0.5, 0.5]
    assert choice.score == 1.0
    assert choice.top_k_members == ["a", "b"]
    assert choice.top_k_score == 0.625
    assert [p.name for p in choice.picks] == ["a", "c"]
    assert choice.picks[0].gain == choice.picks[0].score_after == 0.625
    assert choice.picks[1].gain == pytest.approx(0.375)
    assert "best single model (hit@1 0.6250)" in choice.picks[0].reason
    assert "+0.3750 hit@1: adds what the members so far miss" in choice.picks[1].reason
    assert "beats the top-2 ensemble (0.6250)" in choice.reason


def test_a_tie_keeps_top_k_unless_greedy_needs_fewer_members() -> None:
    # a and b are copies: greedy stops at [a] with the same score as top-2; as good on
    # validation with one model fewer to serve, so greedy's [a] is served.
    scores = {"a": model(range(5)), "b": model(range(5)), "c": model(range(3))}
    choice = select_ensemble(scores, TRUTH, hit1, k=2, eligible=["a", "b", "c"])
    assert choice.strategy_used == "ensemble"
    assert (choice.members, choice.weights) == (["a"], [1.0])
    assert choice.score == choice.top_k_score == 0.625
    assert "ties with fewer members the top-2 ensemble" in choice.reason
    # With k=1 both are [a] alone: the tie keeps the seed's rule.
    single = select_ensemble(scores, TRUTH, hit1, k=1, eligible=["a", "b", "c"])
    assert (single.strategy_used, single.members, single.picks) == ("top_k", ["a"], [])
    assert "did not beat the top-1 ensemble" in single.reason

    # Ranked by another split, top-2 is the complementary pair; greedy starts from `a`
    # (its confidently wrong records sink every pair) and stays below top-2.
    scores = {"a": model(range(6), True), "b": model(range(4)), "c": model(range(4, 8))}
    choice = select_ensemble(scores, TRUTH, hit1, k=2, eligible=["b", "c", "a"])
    assert (choice.strategy_used, choice.members, choice.score) == ("top_k", ["b", "c"], 1.0)
    assert "greedy selection (score 0.7500) did not beat" in choice.reason


def _library(seed: int, multilabel: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    records, entities = 40, 5
    if multilabel:
        truth = (rng.random((records, entities)) < 0.35).astype(np.uint8)
    else:
        truth = np.eye(entities, dtype=np.uint8)[rng.integers(0, entities, records)]
    # Random models with a random amount of signal, so some are good and some are noise.
    scores = {f"m{j}": rng.random((records, entities)) + rng.random() * truth for j in range(6)}
    return scores, truth


@pytest.mark.parametrize("multilabel", [False, True])
def test_random_libraries_respect_the_guarantees(multilabel: bool) -> None:
    metric = prec2 if multilabel else hit1
    strategies = set()
    for seed in range(30):
        scores, truth = _library(seed, multilabel)
        ranked = sorted(scores, key=lambda n: -metric(truth, scores[n]))
        eligible = ranked[: 6 - seed % 3]  # the caller's bar drops up to two
        k = 1 + seed % 4
        weighted = seed % 2 == 1
        choice = select_ensemble(scores, truth, metric, k=k, eligible=eligible, weighted=weighted)
        again = select_ensemble(scores, truth, metric, k=k, eligible=eligible, weighted=weighted)
        assert choice == again
        assert choice.score >= choice.top_k_score
        assert choice.top_k_members == eligible[:k]
        assert set(choice.members) <= set(eligible)
        assert len(set(choice.members)) == len(choice.members) <= k
        assert sum(choice.weights) == pytest.approx(1.0)
        mean = combine([scores[m] for m in choice.members], choice.weights)
        assert metric(truth, mean) == choice.score
        if choice.strategy_used == "ensemble":
            assert choice.score > choice.top_k_score or (
                choice.score == choice.top_k_score and len(choice.members) < k
            )
            assert len(choice.picks) <= (20 if weighted else k)
            assert all(p.gain > 0 for p in choice.picks)
        strategies.add(choice.strategy_used)
    assert strategies == {"ensemble", "top_k"}  # both branches were exercised


def test_weighted_selection_repeats_a_model_and_weights_by_count() -> None:
    truth = np.ones((4, 2))
    # The best mix is 2 parts a (0.8) to 1 part b (1.4): mean 1.0 exactly.
    scores = {"a": np.full((4, 2), 0.8), "b": np.full((4, 2), 1.4), "c": np.full((4, 2), 5.0)}
    choice = select_ensemble(
        scores, truth, neg_mse, k=2, eligible=["a", "b", "c"], weighted=True, metric_name="-mse"
    )
    assert choice.strategy_used == "ensemble"
    assert [p.name for p in choice.picks] == ["a", "b", "a"]
    assert choice.members == ["a", "b"]
    assert choice.weights == pytest.approx([2 / 3, 1 / 3])
    assert choice.score == pytest.approx(0.0)
    assert choice.top_k_score == pytest.approx(-0.01)
    assert "another copy of a" in choice.picks[2].reason
    # max_rounds bounds the picks; k=1 leaves only copies of the first, which change nothing.
    capped = select_ensemble(
        scores, truth, neg_mse, k=2, eligible=["a", "c", "b"], weighted=True, max_rounds=2
    )
    assert [p.name for p in capped.picks] == ["a", "b"]
    assert "max_rounds=2" in capped.reason
    single = select_ensemble(scores, truth, neg_mse, k=1, eligible=["a", "b"], weighted=True)
    assert (single.members, single.weights, single.strategy_used) == (["a"], [1.0], "top_k")


@pytest.mark.parametrize("weighted", [False, True])
def test_ineligible_candidates_are_never_chosen(weighted: bool) -> None:
    # c would complete a perfect pair with a, but the caller's bar left it out.
    scores = {"a": model(range(5)), "b": model(range(5)), "c": model(range(4, 8))}
    choice = select_ensemble(scores, TRUTH, hit1, k=3, eligible=["a", "b"], weighted=weighted)
    assert "c" not in choice.members
    assert choice.members == ["a"]  # b, a copy of a, adds nothing: one model serves as well
    assert choice.score == 0.625


def test_invalid_inputs_are_refused() -> None:
    scores = {"a": model(range(5)), "bad": np.zeros((8, 4))}
    with pytest.raises(ValueError, match=r"'bad'.*\(8, 4\).*\(8, 3\)"):
        select_ensemble(scores, TRUTH, hit1, k=1, eligible=["a"])
    scores = {"a": model(range(5))}
    with pytest.raises(ValueError, match="'zz' has no validation scores"):
        select_ensemble(scores, TRUTH, hit1, k=1, eligible=["a", "zz"])
    with pytest.raises(ValueError, match="no eligible candidate"):
        select_ensemble(scores, TRUTH, hit1, k=1, eligible=[])
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_ensemble(scores, TRUTH, hit1, k=0, eligible=["a"])
    with pytest.raises(ValueError, match="disagree in shape"):
        combine([np.zeros((2, 2)), np.zeros((2, 3))])
    assert combine([np.zeros((1, 2)), np.ones((1, 2))], [1, 3]).tolist() == [[0.75, 0.75]]
