"""Shared fixtures: a project folder with its own config, store and Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, Definitions, instance_for_test

from ml_assets.core.config import load_settings
from ml_assets.definitions import build_definitions
from ml_assets.defs.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.state.partitions import sync_candidate_partitions
from ml_assets.storage.store import ArtifactStore

pytest_plugins = ["ml_assets_tests.services"]  # the real servers some tests need

# Quick candidates for digits: four clear the 0.90 bar, one does not.
FAST_CANDIDATES: list[dict[str, Any]] = [
    {
        "name": "lightgbm_small",
        "model": "lightgbm",
        "params": {"n_estimators": 40, "num_leaves": 15},
    },
    {"name": "logistic_regression", "model": "logistic_regression", "params": {"C": 1.0}},
    {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
    {"name": "extra_trees", "model": "extra_trees", "params": {"n_estimators": 50}},
    {"name": "stump", "model": "decision_tree", "params": {"max_depth": 2}},
]


def write_csv_source(path: Path, rows: int, seed: int = 0) -> Path:
    """A small 3-class CSV (4 separable features, `label`): a source that tests can change."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 3
    frame = pd.DataFrame(rng.normal(size=(rows, 4)) + labels[:, None], columns=list("abcd"))
    frame["label"] = labels
    frame.to_csv(path, index=False)
    return path


@dataclass
class Project:
    """A throw-away project: config file, store root and instance, plus helpers to run jobs."""

    root: Path
    instance: DagsterInstance
    config: dict[str, Any]
    now: float | None = None  # a fixed clock for the time-based rules

    @property
    def config_path(self) -> Path:
        return self.root / "ml_assets.yaml"

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root / "store")

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def resources(self) -> dict[str, object]:
        return {
            "settings": SettingsResource(config_path=str(self.config_path)),
            "store": ArtifactStoreResource(root=str(self.root / "store")),
            "clock": ClockResource(fixed_time=self.now),
        }

    def defs(self) -> Definitions:
        return build_definitions(load_settings(self.config_path), resources=self.resources())

    def run(
        self, job: str, partition: str | None = None, tags: dict[str, str] | None = None
    ) -> Any:
        return (
            self.defs()
            .resolve_job_def(job)
            .execute_in_process(
                instance=self.instance, partition_key=partition, tags=tags, raise_on_error=False
            )
        )

    def sync(self) -> None:
        sync_candidate_partitions(self.instance, [c["name"] for c in self.config["candidates"]])

    def train_all(self) -> dict[str, bool]:
        self.sync()
        return {
            c["name"]: self.run("train_job", c["name"]).success for c in self.config["candidates"]
        }

    def workflow(self) -> Any:
        assert self.run("ingest_job").success
        self.train_all()
        return self.run("serve_job")


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def new_project(
    root: Path, instance: DagsterInstance, candidates: list[dict[str, Any]] | None = None
) -> Project:
    """A project on digits with `candidates` (default: FAST_CANDIDATES), its config written."""
    project = Project(
        root=root,
        instance=instance,
        config={
            "dataset": {"source": "sklearn_digits"},
            # In-process training would otherwise renice the test process for good.
            "training": {"niceness": 0},
            "candidates": list(FAST_CANDIDATES if candidates is None else candidates),
        },
    )
    project.write_config()
    return project


@pytest.fixture
def project(tmp_path: Path, instance: DagsterInstance) -> Project:
    return new_project(tmp_path, instance)
