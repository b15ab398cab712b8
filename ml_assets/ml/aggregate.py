"""Merging the selected models' per-entity scores into one answer per request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ml_assets.ml.datasets import Task
from ml_assets.ml.ensemble import combine
from ml_assets.ml.metrics import predicted_tags

SCORE_PREFIX = "score:"


def scores_frame(ids: np.ndarray, entities: Sequence[str], scores: np.ndarray) -> pd.DataFrame:
    """One serving step's output: `request_id` and one `score:<entity>` column per entity."""
    frame = pd.DataFrame(scores, columns=[f"{SCORE_PREFIX}{e}" for e in entities])
    frame.insert(0, "request_id", np.asarray(ids, dtype=object))
    return frame


def score_matrix(frame: pd.DataFrame, entities: Sequence[str]) -> np.ndarray:
    return frame[[f"{SCORE_PREFIX}{e}" for e in entities]].to_numpy(dtype=np.float64)


def mean_scores(
    matrices: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """The ensemble score: the (weighted) mean of the selected models' per-entity scores, as
    ensemble selection scored it on the validation split (`ml.ensemble.combine`)."""
    if not matrices:
        raise ValueError("nothing to aggregate: no model predictions")
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"model predictions disagree in shape: {sorted(shapes)}")
    return combine(matrices, weights)


def ensemble_tags(
    matrices: Sequence[np.ndarray],
    task: Task,
    threshold: float,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean scores and tags: the top entity (multi-class) or the union of every model's tags."""
    mean = mean_scores(matrices, weights)
    if task == "multiclass":
        return mean, predicted_tags(mean, task, threshold)
    union = np.zeros(mean.shape, dtype=np.uint8)
    for matrix in matrices:
        union |= predicted_tags(matrix, task, threshold)
    return mean, union


def ranked_tags(
    entities: Sequence[str], mean: np.ndarray, tags: np.ndarray
) -> tuple[list[list[str]], list[str]]:
    """Each record's tags, best-scored first, and its top-scored entity."""
    names = [str(e) for e in entities]
    ranked = []
    for row, tagged in zip(mean, tags, strict=True):
        chosen = np.flatnonzero(tagged)
        order = chosen[np.argsort(-row[chosen], kind="stable")]
        ranked.append([names[j] for j in order])
    top = [names[j] for j in np.argmax(mean, axis=1)]
    return ranked, top


def answer(
    entities: Sequence[str],
    matrices: Sequence[np.ndarray],
    task: Task,
    threshold: float,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[list[str]], list[str]]:
    """The ensemble's answer without a frame (what the HTTP server returns): mean scores, 0/1
    tags, ranked tag names and the top entity of every record."""
    mean, tags = ensemble_tags(matrices, task, threshold, weights)
    ranked, top = ranked_tags(entities, mean, tags)
    return mean, tags, ranked, top


def aggregate(
    ids: np.ndarray,
    entities: Sequence[str],
    matrices: Sequence[np.ndarray],
    task: Task,
    threshold: float,
    weights: Sequence[float] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The user-facing frame (`request_id`, ranked `tags`, `top_entity`, scores) and arrays."""
    mean, tags, ranked, top = answer(entities, matrices, task, threshold, weights)
    frame = scores_frame(ids, entities, mean)
    frame.insert(1, "tags", ranked)
    frame.insert(2, "top_entity", top)
    return frame, mean, tags
