"""Candidate models: building, training, scoring, saving and loading (no Dagster here).

Every model returns a score per entity for every record, shape (records, entities), for both
multi-class and multi-label data. Preprocessing a model needs (imputing NaNs, scaling) is part of
its pipeline. LightGBM models are stored in LightGBM's own text format, scikit-learn ones with
joblib (a pickle: load only artifacts whose hash you recorded).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pandas as pd

from ml_assets.errors import UserError
from ml_assets.ml.datasets import Dataset, Task

if TYPE_CHECKING:
    import lightgbm as lgb
    from sklearn.base import BaseEstimator

# scikit-learn and LightGBM are imported where a model is built, fitted or loaded, never at
# module import: every Dagster run process and sensor evaluation loads this module, and most of
# them (planning, ingestion, selection) never touch an estimator. That saves ~1.8 s per process.

MODEL_META: Final = "model.json"
SKLEARN_FILE: Final = "model.joblib"


class CandidateError(UserError):
    """One candidate cannot be trained; the message names the candidate."""


@dataclass(frozen=True)
class ModelType:
    """How to build one kind of estimator and what it needs around it."""

    path: str  # "module:Class", imported on first use
    scale: bool = False
    impute: bool = True
    native_multilabel: bool = False
    threaded: bool = True  # pass `n_jobs` (threads per model) to the estimator
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def estimator(self) -> Callable[..., Any]:
        module, name = self.path.split(":")
        factory: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return factory


MODEL_TYPES: Final[Mapping[str, ModelType]] = {
    "lightgbm": ModelType("lightgbm:LGBMClassifier", impute=False, defaults={"verbose": -1}),
    "logistic_regression": ModelType(
        "sklearn.linear_model:LogisticRegression",
        scale=True,
        threaded=False,
        defaults={"max_iter": 2000},
    ),
    "random_forest": ModelType("sklearn.ensemble:RandomForestClassifier", native_multilabel=True),
    "extra_trees": ModelType("sklearn.ensemble:ExtraTreesClassifier", native_multilabel=True),
    "knn": ModelType("sklearn.neighbors:KNeighborsClassifier", scale=True, native_multilabel=True),
    "gaussian_nb": ModelType("sklearn.naive_bayes:GaussianNB"),
    "decision_tree": ModelType("sklearn.tree:DecisionTreeClassifier", native_multilabel=True),
}


def library_versions() -> dict[str, str]:
    """Versions that change what a trained model is; part of the training memo key.

    Read from the installed distributions' metadata, so computing a memo key imports neither.
    """
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    return (("lightgbm", version("lightgbm")), ("scikit-learn", version("scikit-learn")))


@dataclass
class TrainedModel:
    """A fitted candidate with what is needed to score new records."""

    model_type: str
    task: Task
    entities: list[str]
    features: list[str]
    # scikit-learn: one fitted estimator. LightGBM: one booster per output column group.
    estimator: Any = None
    boosters: list[lgb.Booster | None] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    constants: list[float] = field(default_factory=list)

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """Per-entity scores in [0, 1], shape (records, entities)."""
        missing = [c for c in self.features if c not in X.columns]
        if missing:
            raise ValueError(f"records lack the model's feature columns {missing[:8]}")
        data = X[self.features]
        if self.model_type == "lightgbm":
            return self._lightgbm_scores(data)
        return _sklearn_scores(self.estimator, data, self.task, len(self.entities))

    def _lightgbm_scores(self, data: pd.DataFrame) -> np.ndarray:
        n, width = len(data), len(self.entities)
        scores = np.zeros((n, width), dtype=np.float64)
        values = data.to_numpy(dtype=np.float64)
        if self.task == "multiclass":
            booster = self.boosters[0]
            assert booster is not None
            raw = np.asarray(booster.predict(values))
            if raw.ndim == 1:  # two classes: LightGBM returns P(class 1)
                raw = np.column_stack([1.0 - raw, raw])
            scores[:, self.classes] = raw
            return scores
        for j, booster in enumerate(self.boosters):
            scores[:, j] = self.constants[j] if booster is None else booster.predict(values)
        return scores


def _sklearn_scores(estimator: Any, data: pd.DataFrame, task: Task, width: int) -> np.ndarray:
    scores = np.zeros((len(data), width), dtype=np.float64)
    proba = estimator.predict_proba(data)
    if task == "multiclass":
        scores[:, np.asarray(estimator.classes_, dtype=int)] = proba
        return scores
    if isinstance(proba, list):  # native multi-output: one (n, classes_j) array per entity
        for j, (column, classes) in enumerate(zip(proba, estimator.classes_, strict=True)):
            positive = np.flatnonzero(np.asarray(classes) == 1)
            scores[:, j] = column[:, positive[0]] if len(positive) else 0.0
        return scores
    return np.asarray(proba, dtype=np.float64)


def select_features(
    candidate: str, available: Sequence[str], globs: Sequence[str] | None
) -> list[str]:
    """The feature columns a candidate learns from (all, or those matching its globs)."""
    if globs is None:
        return list(available)
    chosen = [c for c in available if any(fnmatch.fnmatchcase(c, g) for g in globs)]
    if not chosen:
        raise CandidateError(
            f"candidate {candidate!r}: features {list(globs)} match no column of the dataset "
            f"(columns look like {list(available[:5])})"
        )
    return chosen


def _estimator_params(
    candidate: str, model: str, params: Mapping[str, Any], *, seed: int, threads: int
) -> tuple[ModelType, dict[str, Any]]:
    if model not in MODEL_TYPES:
        raise CandidateError(
            f"candidate {candidate!r}: unknown model type {model!r}; "
            f"expected one of {sorted(MODEL_TYPES)}"
        )
    spec = MODEL_TYPES[model]
    accepted = spec.estimator().get_params()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        hints = {name: difflib.get_close_matches(name, list(accepted), n=1) for name in unknown}
        detail = ", ".join(
            f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            for name, hint in hints.items()
        )
        raise CandidateError(f"candidate {candidate!r}: {model} has no hyperparameter {detail}")
    merged = {**spec.defaults, **params}
    if "random_state" in accepted and "random_state" not in params:
        merged["random_state"] = seed
    if spec.threaded and "n_jobs" in accepted and "n_jobs" not in params:
        merged["n_jobs"] = threads
    return spec, merged


def validate_candidate(candidate: str, model: str, params: Mapping[str, Any]) -> None:
    """Raise `CandidateError` for an unknown model type or hyperparameter name."""
    _estimator_params(candidate, model, params, seed=0, threads=1)


def build_estimator(
    candidate: str,
    model: str,
    params: Mapping[str, Any],
    task: Task,
    *,
    seed: int = 0,
    threads: int = 1,
) -> BaseEstimator:
    """The unfitted pipeline for a candidate; unknown types and parameters name the candidate."""
    from sklearn.impute import SimpleImputer
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec, merged = _estimator_params(candidate, model, params, seed=seed, threads=threads)
    estimator = spec.estimator(**merged)
    steps: list[Any] = []
    if spec.impute:
        # The mean, not the median: identical when there is no NaN, and ~40× cheaper to fit on
        # wide data (scikit-learn's median imputer takes 1.7 s on 12,000 × 1,152).
        steps.append(SimpleImputer(strategy="mean", keep_empty_features=True))
    if spec.scale:
        steps.append(StandardScaler())
    core: Any = estimator
    if task == "multilabel" and not spec.native_multilabel:
        core = OneVsRestClassifier(estimator)
    pipeline: Pipeline = make_pipeline(*steps, core)
    return pipeline


@dataclass(frozen=True)
class TrainingResult:
    model: TrainedModel
    seconds: float
    rows: int
    params: dict[str, Any]


def train_candidate(
    candidate: str,
    model: str,
    params: Mapping[str, Any],
    features: Sequence[str] | None,
    train: Dataset,
    *,
    seed: int = 0,
    threads: int = 1,
) -> TrainingResult:
    """Fit one candidate on the training split."""
    from threadpoolctl import threadpool_limits

    columns = select_features(candidate, train.features, features)
    X = train.X[columns]
    # Validate and build (importing the model's library) first: `seconds` is the fit alone.
    _, effective = _estimator_params(candidate, model, params, seed=seed, threads=threads)
    pipeline = (
        None
        if model == "lightgbm"
        else build_estimator(candidate, model, params, train.task, seed=seed, threads=threads)
    )
    started = time.perf_counter()
    # BLAS/OpenMP pools default to every core; with several candidates training at once that
    # oversubscribes the machine, so each fit gets exactly `threads`. threadpoolctl caps only
    # the libraries already loaded: the model's library was imported just above.
    with threadpool_limits(limits=threads):
        if pipeline is None:
            trained = _train_lightgbm(
                candidate, params, train, X, columns, seed=seed, threads=threads
            )
        else:
            target = train.Y.argmax(axis=1) if train.task == "multiclass" else train.Y
            _fit(candidate, pipeline, X, target)
            trained = TrainedModel(model, train.task, train.entities, columns, estimator=pipeline)
    seconds = time.perf_counter() - started
    return TrainingResult(trained, seconds, len(train), effective)


def _fit(candidate: str, estimator: Any, X: pd.DataFrame | np.ndarray, y: np.ndarray) -> None:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]abel.*not present.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="sklearn.multiclass")
            estimator.fit(X, y)
    except (ValueError, TypeError) as error:
        raise CandidateError(f"candidate {candidate!r}: training failed: {error}") from error


def _train_lightgbm(
    candidate: str,
    params: Mapping[str, Any],
    train: Dataset,
    X: pd.DataFrame,
    columns: list[str],
    *,
    seed: int,
    threads: int,
) -> TrainedModel:
    spec, merged = _estimator_params(candidate, "lightgbm", params, seed=seed, threads=threads)
    result = TrainedModel("lightgbm", train.task, train.entities, columns)
    values = X.to_numpy(dtype=np.float64)
    if train.task == "multiclass":
        classifier = spec.estimator(**merged)
        _fit(candidate, classifier, values, train.Y.argmax(axis=1))
        result.boosters = [classifier.booster_]
        result.classes = [int(c) for c in classifier.classes_]
        return result
    for j in range(len(train.entities)):
        column = train.Y[:, j]
        if column.min() == column.max():  # an entity never (or always) present in training
            result.boosters.append(None)
            result.constants.append(float(column[0]))
            continue
        classifier = spec.estimator(**merged)
        _fit(candidate, classifier, values, column)
        result.boosters.append(classifier.booster_)
        result.constants.append(0.0)
    return result


# --- persistence -----------------------------------------------------------------------------

ArtifactKind = Literal["lightgbm", "sklearn"]


def save_model(model: TrainedModel, directory: Path) -> list[str]:
    """Write the model's files into `directory`; returns the file names written."""
    import joblib

    meta: dict[str, Any] = {
        "model_type": model.model_type,
        "task": model.task,
        "entities": model.entities,
        "features": model.features,
        "library_versions": library_versions(),
    }
    files = [MODEL_META]
    if model.model_type == "lightgbm":
        meta |= {"format": "lightgbm-text", "classes": model.classes, "constants": model.constants}
        meta["boosters"] = []
        for j, booster in enumerate(model.boosters):
            if booster is None:
                meta["boosters"].append(None)
                continue
            name = f"lightgbm_{j}.txt"
            booster.save_model(str(directory / name))
            meta["boosters"].append(name)
            files.append(name)
    else:
        meta["format"] = "joblib"
        joblib.dump(model.estimator, directory / SKLEARN_FILE)
        files.append(SKLEARN_FILE)
    (directory / MODEL_META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return files


def load_model(directory: Path) -> TrainedModel:
    """Load a model written by `save_model`. Verify the artifact's hash before calling this."""
    meta = json.loads((directory / MODEL_META).read_text())
    model = TrainedModel(meta["model_type"], meta["task"], meta["entities"], meta["features"])
    if meta["format"] == "lightgbm-text":
        model.classes = [int(c) for c in meta["classes"]]
        model.constants = [float(c) for c in meta["constants"]]
        import lightgbm as lgb

        model.boosters = [
            None if name is None else lgb.Booster(model_file=str(directory / name))
            for name in meta["boosters"]
        ]
    else:
        import joblib

        model.estimator = joblib.load(directory / SKLEARN_FILE)
    return model
