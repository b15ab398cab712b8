"""Scores of per-entity predictions against a 0/1 truth matrix (no Dagster here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Final

import numpy as np

from ml_assets.ml.datasets import Task


def hit_at_1(truth: np.ndarray, scores: np.ndarray) -> float:
    """Share of records whose top-scored entity is a true label (= accuracy for multi-class)."""
    if len(truth) == 0:
        raise ValueError("hit@1 of zero records is undefined")
    top = scores.argmax(axis=1)
    return float(truth[np.arange(len(truth)), top].mean())


def predicted_tags(scores: np.ndarray, task: Task, threshold: float) -> np.ndarray:
    """0/1 tags: the top entity (multi-class) or every entity scored ≥ threshold (multi-label)."""
    tags = np.zeros(scores.shape, dtype=np.uint8)
    if task == "multiclass":
        tags[np.arange(len(scores)), scores.argmax(axis=1)] = 1
    else:
        tags[scores >= threshold] = 1
    return tags


@dataclass(frozen=True)
class Scores:
    """hit@1 and the F1 that fits the task (every ranking metric: `all_metrics`)."""

    hit_at_1: float
    f1: float
    f1_kind: str  # "macro_f1" (multi-class) or "micro_f1" (multi-label)

    def as_metadata(self) -> dict[str, float]:
        return {"score": self.hit_at_1, "hit_at_1": self.hit_at_1, self.f1_kind: self.f1}


def evaluate(truth: np.ndarray, scores: np.ndarray, task: Task, threshold: float) -> Scores:
    from sklearn.metrics import f1_score  # imported here: see ml_assets/ml/models.py

    tags = predicted_tags(scores, task, threshold)
    if task == "multiclass":
        f1 = f1_score(truth.argmax(axis=1), tags.argmax(axis=1), average="macro", zero_division=0)
        return Scores(hit_at_1(truth, scores), float(f1), "macro_f1")
    f1 = f1_score(truth, tags, average="micro", zero_division=0)
    return Scores(hit_at_1(truth, scores), float(f1), "micro_f1")


def entity_coverage(tags: np.ndarray, truth: np.ndarray | None = None) -> int:
    """Distinct entities tagged at least once (correctly, when `truth` is given)."""
    hits = tags if truth is None else tags & truth
    return int((hits.sum(axis=0) > 0).sum())


# --- YouTube-8M ranking metrics ----------------------------------------------------------
# Written from the definitions of the YouTube-8M starter code's eval_util. Ties are broken
# deterministically (higher score first, then lower record index, then lower entity index);
# the starter code instead shuffles with a fixed seed before sorting, so on tied scores the
# numbers can differ slightly from it.


def _checked(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth as bool, scores as float64) after checking shape, emptiness and values."""
    truth, scores = np.asarray(truth), np.asarray(scores)
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise ValueError(
            f"truth and scores must be 2-D of the same shape, got {truth.shape} and {scores.shape}"
        )
    if truth.size == 0:
        raise ValueError(f"metrics of an empty matrix ({truth.shape}) are undefined")
    if truth.dtype != bool and not ((truth == 0) | (truth == 1)).all():
        raise ValueError("truth must hold only 0 and 1")
    scores = scores.astype(np.float64, copy=False)
    if np.isnan(scores).any():
        raise ValueError("scores must not contain NaN")
    return truth.astype(bool, copy=False), scores


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of each record's top min(k, entities) entities (ties: lower entity first)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_entities = scores.shape[1]
    if k >= n_entities:
        return np.ones(scores.shape, dtype=bool)
    kth = np.partition(scores, n_entities - k, axis=1)[:, n_entities - k, None]  # k-th largest
    mask = scores >= kth
    crowded = np.flatnonzero(mask.sum(axis=1) > k)  # ties at the k-th score: keep the first
    if len(crowded):
        at = scores[crowded] == kth[crowded]
        room = k - (scores[crowded] > kth[crowded]).sum(axis=1, keepdims=True)
        mask[crowded] &= ~at | (np.cumsum(at, axis=1) <= room)
    return mask


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices that sort 1-D `values` high to low, ties in index order (= a stable sort)."""
    order = np.argsort(-values)  # the fast unstable sort, then ties put back in index order
    ranked = values[order]
    tied = ranked[1:] == ranked[:-1]
    if not tied.any():
        return order
    run = np.concatenate(([0], np.cumsum(~tied)))
    return np.sort(run * len(values) + order) % len(values)


def _precision_sum(positive: np.ndarray) -> float:
    """Σ over positive positions i (1-based) of positives-so-far / i, for one ranked list."""
    hits = np.cumsum(positive)
    ranks = np.arange(1, len(positive) + 1)
    return float((hits[positive] / ranks[positive]).sum())


def gap_at_k(truth: np.ndarray, scores: np.ndarray, k: int = 20) -> float:
    """Global average precision of every record's top-k entities pooled into one ranking.

    Divided by all positives in `truth`, so labels outside a record's top k count as missed;
    0.0 when `truth` has no positive.
    """
    truth, scores = _checked(truth, scores)
    n_positives = int(truth.sum())
    if n_positives == 0:
        return 0.0
    kept = np.flatnonzero(_top_k_mask(scores, k))  # row-major: record, then entity
    order = _descending(scores.ravel()[kept])
    return _precision_sum(truth.ravel()[kept][order]) / n_positives


def perr(truth: np.ndarray, scores: np.ndarray) -> float:
    """Precision at equal recall rate, averaged over records with at least one label.

    A record with n labels scores the share of its top n entities that are true and scored
    above 0. Label-less records are left out (the starter code averages them in as 0).
    """
    truth, scores = _checked(truth, scores)
    n_labels = truth.sum(axis=1)
    labelled = n_labels > 0
    if not labelled.any():
        raise ValueError("PERR is undefined when no record has a label")
    truth, scores, n_labels = truth[labelled], scores[labelled], n_labels[labelled]
    most = int(n_labels.max())
    mask = _top_k_mask(scores, most)  # exactly `most` entities per record, in entity order
    top_scores = scores[mask].reshape(-1, most)
    top_truth = truth[mask].reshape(-1, most)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    ranked_scores = np.take_along_axis(top_scores, order, axis=1)
    ranked_truth = np.take_along_axis(top_truth, order, axis=1)
    within = np.arange(most) < n_labels[:, None]
    hits = (ranked_truth & (ranked_scores > 0) & within).sum(axis=1)
    return float((hits / n_labels).mean())


def mean_average_precision(truth: np.ndarray, scores: np.ndarray, k: int = 20) -> float:
    """Mean over entities of the AP of the records that have the entity in their top k.

    Each entity's AP is divided by all its positives in `truth`. Entities with no positive
    are left out of the mean (the starter code counts them as 0); 0.0 if none has one.
    """
    truth, scores = _checked(truth, scores)
    n_entities = scores.shape[1]
    per_entity = truth.sum(axis=0)
    present = per_entity > 0
    if not present.any():
        return 0.0
    kept = np.flatnonzero(_top_k_mask(scores, k))
    by_score = kept[_descending(scores.ravel()[kept])]
    entity = by_score % n_entities
    n_kept = len(by_score)  # stable regroup by entity: sort (entity, position) packed in one int
    by_entity = by_score[np.sort(entity * n_kept + np.arange(n_kept)) % n_kept]
    entity, positive = by_entity % n_entities, truth.ravel()[by_entity]
    group = np.bincount(entity, minlength=n_entities)
    starts = np.repeat(np.cumsum(group) - group, group)  # where each pair's entity run begins
    hits = np.cumsum(positive)
    hits_before = np.concatenate(([0], hits))[starts]
    ranks = np.arange(len(entity)) - starts + 1
    precision = np.where(positive, (hits - hits_before) / ranks, 0.0)
    sums = np.bincount(entity, weights=precision, minlength=n_entities)
    return float((sums[present] / per_entity[present]).mean())


def _hit_at_1_checked(truth: np.ndarray, scores: np.ndarray) -> float:
    return hit_at_1(*_checked(truth, scores))


METRICS: Final[Mapping[str, Callable[[np.ndarray, np.ndarray], float]]] = MappingProxyType(
    {
        "hit@1": _hit_at_1_checked,
        "gap@20": partial(gap_at_k, k=20),
        "perr": perr,
        "map": partial(mean_average_precision, k=20),
    }
)
METRIC_ALIASES: Final[Mapping[str, str]] = MappingProxyType({"accuracy": "hit@1"})


def all_metrics(truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Every metric of `METRICS`, by name."""
    truth, scores = _checked(truth, scores)  # once: the metrics' own checks are then no-ops
    return {name: metric(truth, scores) for name, metric in METRICS.items()}


def canonical_metric(name: str) -> str:
    """The `METRICS` key for `name` or its alias; ValueError naming the known ones otherwise."""
    canonical = METRIC_ALIASES.get(name, name)
    if canonical not in METRICS:
        known = ", ".join([*METRICS, *METRIC_ALIASES])
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}")
    return canonical


def entities_covered(tags: np.ndarray, truth: np.ndarray, entities: Sequence[str]) -> list[str]:
    """Names of the entities tagged correctly at least once, in entity order."""
    tags, truth = np.asarray(tags), np.asarray(truth)
    if tags.ndim != 2 or tags.shape != truth.shape:
        raise ValueError(
            f"tags and truth must be 2-D of the same shape, got {tags.shape} and {truth.shape}"
        )
    if len(entities) != tags.shape[1]:
        raise ValueError(f"{len(entities)} entity names for {tags.shape[1]} entity columns")
    hit = (tags & truth).sum(axis=0) > 0
    return [name for name, covered in zip(entities, hit, strict=True) if covered]


def metric_label(name: str) -> str:
    """A metric's name as a metadata key: `gap@20` → `gap_at_20`, `hit@1` → `hit_at_1`."""
    return name.replace("@", "_at_")
