"""Scores of per-entity predictions against a 0/1 truth matrix (no Dagster here)."""

from __future__ import annotations

from dataclasses import dataclass

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
    """The selection score (hit@1) and the F1 that fits the task."""

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
