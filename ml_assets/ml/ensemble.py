"""Ensemble selection: greedy forward selection on a validation split (Caruana et al., 2004).

Pure NumPy, no Dagster. The caller has already applied the quality bar: only the names in
`eligible` may be chosen. The result never scores below the top-k ensemble on validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]
"""(truth 0/1 matrix, scores matrix) -> score; higher is better."""


@dataclass(frozen=True)
class Pick:
    """One greedy step: the model added and what it did to the validation score."""

    name: str
    score_after: float  # the ensemble's validation score once this member was added
    gain: float  # score_after minus the score before (for the first pick: its own score)
    reason: str  # one line


@dataclass(frozen=True)
class EnsembleChoice:
    """The chosen members and weights, with the greedy steps and the top-k comparison."""

    members: list[str]  # distinct names, in pick order
    weights: list[float]  # one per member, sums to 1.0 (equal unless weighted)
    score: float  # metric(truth, combine(members' matrices, weights))
    picks: list[Pick]  # the greedy steps (empty when the top-k fallback was kept)
    top_k_members: list[str]  # the seed's rule: the first k of `eligible`
    top_k_score: float  # validation score of the top-k ensemble (equal-weight mean)
    strategy_used: Literal["ensemble", "top_k"]
    reason: str  # why this set (one line)
    # What greedy selection found, kept or not (equal to members when it was kept).
    greedy_members: list[str] = field(default_factory=list)
    greedy_weights: list[float] = field(default_factory=list)
    greedy_score: float = float("nan")


def combine(matrices: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The weighted mean of per-model score matrices (equal weights by default), as served."""
    if not matrices:
        raise ValueError("nothing to combine: no score matrices")
    shapes = {np.shape(m) for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"score matrices disagree in shape: {sorted(shapes)}")
    if weights is None:
        w = np.ones(len(matrices), dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(matrices),):
            raise ValueError(f"{len(w)} weights for {len(matrices)} score matrices")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0: {w.tolist()}")
    out = np.zeros(shapes.pop(), dtype=np.float64)
    for matrix, weight in zip(matrices, w, strict=True):
        out += weight * np.asarray(matrix, dtype=np.float64)
    out /= w.sum()
    return out


def _score(metric: Metric, truth: np.ndarray, scores: np.ndarray, what: str) -> float:
    value = float(metric(truth, scores))
    if math.isnan(value):
        raise ValueError(f"the metric returned NaN for {what}")
    return value


def _validate(
    validation_scores: Mapping[str, np.ndarray],
    truth: np.ndarray,
    k: int,
    eligible: Sequence[str],
    max_rounds: int,
) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    if not eligible:
        raise ValueError("no eligible candidate: nothing to select from")
    seen: set[str] = set()
    for name in eligible:
        if name in seen:
            raise ValueError(f"eligible names {name!r} twice")
        if name not in validation_scores:
            raise ValueError(f"eligible candidate {name!r} has no validation scores")
        seen.add(name)
    for name, matrix in validation_scores.items():
        if np.shape(matrix) != truth.shape:
            raise ValueError(
                f"candidate {name!r}: validation scores have shape {np.shape(matrix)}, "
                f"truth has shape {truth.shape}"
            )


def _greedy(
    mats: Mapping[str, np.ndarray],
    truth: np.ndarray,
    metric: Metric,
    k: int,
    eligible: Sequence[str],
    weighted: bool,
    max_rounds: int,
    metric_name: str,
) -> tuple[dict[str, int], list[Pick], str]:
    """Pick counts (in pick order), the steps, and why the selection stopped."""
    singles = {name: _score(metric, truth, mats[name], name) for name in eligible}
    first = eligible[0]
    for name in eligible[1:]:  # strict: ties keep the earlier name in `eligible`
        if singles[name] > singles[first]:
            first = name
    current = singles[first]
    counts = {first: 1}
    picks = [Pick(first, current, current, f"best single model ({metric_name} {current:.4f})")]
    total = np.array(mats[first], dtype=np.float64)  # the running sum of the picks' matrices
    buffer = np.empty_like(total)
    n = 1
    while True:
        if not weighted and len(counts) >= k:
            return counts, picks, f"stopped at k={k} members"
        if weighted and n >= max_rounds:
            return counts, picks, f"stopped after max_rounds={max_rounds} picks"
        if weighted:
            pool = [e for e in eligible if len(counts) < k or e in counts]
        else:
            pool = [e for e in eligible if e not in counts]
        if not pool:
            return counts, picks, "stopped: every eligible model is in"
        best: str | None = None
        best_score = current
        for name in pool:  # strict: only an improvement counts, ties keep the earlier name
            np.add(total, mats[name], out=buffer)
            buffer /= n + 1
            value = _score(metric, truth, buffer, f"the ensemble plus {name!r}")
            if value > best_score:
                best, best_score = name, value
        if best is None:
            return (
                counts,
                picks,
                f"stopped at {len(counts)} member(s): no eligible addition improves "
                f"{metric_name} ({current:.4f})",
            )
        gain = best_score - current
        if best in counts:
            why = f"another copy of {best} shifts weight to it ({counts[best] + 1}/{n + 1})"
        else:
            why = "adds what the members so far miss"
        picks.append(Pick(best, best_score, gain, f"+{gain:.4f} {metric_name}: {why}"))
        counts[best] = counts.get(best, 0) + 1
        total += mats[best]
        current = best_score
        n += 1


def select_ensemble(
    validation_scores: Mapping[str, np.ndarray],
    truth: np.ndarray,
    metric: Metric,
    *,
    k: int,
    eligible: Sequence[str],
    weighted: bool = False,
    max_rounds: int = 20,
    metric_name: str = "score",
) -> EnsembleChoice:
    """Greedy forward selection among `eligible`, kept only if it beats the top-k ensemble.

    `eligible` is ranked best first and already cleared the bar. Unweighted: up to k distinct
    members, equal weights. Weighted: selection with replacement, at most `max_rounds` picks
    (the first included) and k distinct members, weights = pick counts / picks. Ties with the
    top-k ensemble keep top-k.
    """
    truth = np.asarray(truth)
    _validate(validation_scores, truth, k, eligible, max_rounds)
    mats = {name: np.asarray(validation_scores[name]) for name in eligible}

    counts, picks, stop = _greedy(
        mats, truth, metric, k, eligible, weighted, max_rounds, metric_name
    )
    members = list(counts)
    picked = sum(counts.values())
    weights = [counts[name] / picked for name in members]
    score = _score(metric, truth, combine([mats[m] for m in members], weights), "the ensemble")

    top_k = list(eligible[:k])
    top_k_weights = [1.0 / len(top_k)] * len(top_k)
    top_k_score = _score(
        metric, truth, combine([mats[m] for m in top_k], top_k_weights), "the top-k ensemble"
    )
    # A tie keeps the seed's top-k, unless greedy reached the same score with fewer members:
    # as good on validation and cheaper to serve (on 359 digits, one model ties the top pair).
    fewer = len(members) < len(top_k)
    if top_k_score > score or (top_k_score == score and not fewer):
        return EnsembleChoice(
            members=top_k,
            weights=top_k_weights,
            score=top_k_score,
            picks=[],
            top_k_members=top_k,
            top_k_score=top_k_score,
            strategy_used="top_k",
            reason=(
                f"greedy selection ({metric_name} {score:.4f}) did not beat the "
                f"top-{len(top_k)} ensemble ({top_k_score:.4f}); keeping top-{len(top_k)}"
            ),
            greedy_members=members,
            greedy_weights=weights,
            greedy_score=score,
        )
    return EnsembleChoice(
        members=members,
        weights=weights,
        score=score,
        picks=picks,
        top_k_members=top_k,
        top_k_score=top_k_score,
        strategy_used="ensemble",
        reason=(
            f"greedy ensemble of {len(members)} ({metric_name} {score:.4f}) "
            f"{'beats' if score > top_k_score else 'ties with fewer members'} the "
            f"top-{len(top_k)} ensemble ({top_k_score:.4f}); {stop}"
        ),
        greedy_members=members,
        greedy_weights=weights,
        greedy_score=score,
    )
