"""Typed reading and writing of each artifact kind through the store (no Dagster here)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ml_assets.ml.datasets import PARTS, Dataset, Task, write_parquet, write_part
from ml_assets.ml.models import TrainedModel, load_model, save_model
from ml_assets.storage.store import Artifact, ArtifactError, ArtifactStore

DATASET_META: Final = "dataset.json"
TRAINING_META: Final = "training.json"
SELECTION_FILE: Final = "selection.json"
PREDICTIONS_FILE: Final = "predictions.parquet"
VALIDATION_SCORES: Final = "validation_scores.npy"


@dataclass(frozen=True)
class DatasetInfo:
    key: str
    task: Task
    entities: list[str]
    features: list[str]
    rows: dict[str, int]


def write_dataset(
    store: ArtifactStore,
    key: str,
    dataset: Dataset,
    rows: Mapping[str, np.ndarray],
    extra: Mapping[str, Any],
) -> Artifact:
    """Each part (`rows`, from `split_rows`) streamed into its own Parquet file."""

    def _write(directory: Path) -> None:
        for name in PARTS:
            write_part(dataset, rows[name], directory / f"{name}.parquet")
        meta = {
            "task": dataset.task,
            "entities": dataset.entities,
            "features": dataset.features,
            "rows": {name: len(rows[name]) for name in PARTS},
            **extra,
        }
        (directory / DATASET_META).write_text(json.dumps(meta, indent=1, sort_keys=True))

    return store.put("datasets", key, _write)


def dataset_info(artifact: Artifact) -> DatasetInfo:
    meta = json.loads(artifact.file(DATASET_META).read_text())
    return DatasetInfo(artifact.key, meta["task"], meta["entities"], meta["features"], meta["rows"])


def read_dataset_part(
    artifact: Artifact, part: str, columns: Sequence[str] | None = None
) -> Dataset:
    """One split of a verified dataset artifact (optionally only some feature columns)."""
    info = dataset_info(artifact)
    path = artifact.file(f"{part}.parquet")
    wanted = None
    if columns is not None:
        tags = [f"__tag_{i}" for i in range(len(info.entities))]
        wanted = ["__id", *columns, *tags]
    frame = pq.read_table(path, columns=wanted).to_pandas()
    return Dataset.from_frame(frame, info.task, info.entities)


def write_model(
    store: ArtifactStore,
    key: str,
    model: TrainedModel,
    training: Mapping[str, Any],
    validation_scores: np.ndarray,
) -> Artifact:
    """The model, its training record and its per-entity scores on the validation split."""

    def _write(directory: Path) -> None:
        save_model(model, directory)
        np.save(directory / VALIDATION_SCORES, validation_scores.astype(np.float32))
        (directory / TRAINING_META).write_text(
            json.dumps(dict(training), indent=1, sort_keys=True, default=str)
        )

    return store.put("models", key, _write)


def read_validation_scores(artifact: Artifact) -> np.ndarray:
    """A verified model artifact's scores on the validation split (records × entities)."""
    scores: np.ndarray = np.load(artifact.file(VALIDATION_SCORES), allow_pickle=False)
    return scores


def read_training_meta(artifact: Artifact) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(artifact.file(TRAINING_META).read_text())
    return result


def read_model(store: ArtifactStore, key: str, digest: str) -> TrainedModel:
    """Load a model only after its artifact matches the digest recorded at materialization."""
    artifact = store.verify("models", key, digest)
    try:
        return load_model(artifact.path)
    except Exception as error:  # a verified artifact that does not load is still refused
        raise ArtifactError(f"models/{key}: verified but cannot be loaded: {error}") from error


def write_json(store: ArtifactStore, kind: str, key: str, filename: str, body: Any) -> Artifact:
    def _write(directory: Path) -> None:
        (directory / filename).write_text(json.dumps(body, indent=1, sort_keys=True, default=str))

    return store.put(kind, key, _write)


def artifact_json(artifact: Artifact, filename: str) -> Any:
    """A JSON file of an artifact already verified."""
    return json.loads(artifact.file(filename).read_text())


def read_json(store: ArtifactStore, kind: str, key: str, filename: str, digest: str | None) -> Any:
    return artifact_json(store.verify(kind, key, digest), filename)


def write_frame(store: ArtifactStore, kind: str, key: str, frame: pd.DataFrame) -> Artifact:
    return store.put(
        kind, key, lambda directory: write_parquet(frame, directory / PREDICTIONS_FILE)
    )


def artifact_frame(artifact: Artifact) -> pd.DataFrame:
    """The predictions frame of an artifact already verified."""
    return pq.read_table(artifact.file(PREDICTIONS_FILE)).to_pandas()


def read_frame(store: ArtifactStore, kind: str, key: str, digest: str | None) -> pd.DataFrame:
    return artifact_frame(store.verify(kind, key, digest))
