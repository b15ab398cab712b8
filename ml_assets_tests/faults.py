"""Helpers for the fault-injection tests (`test_faults_*.py`): real `ml-assets` processes,
store invariants, and the small project, records and failures several of them share."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from dagster import AssetKey, DagsterInstance

from ml_assets.state.records import Record, latest_record
from ml_assets.state.runs import failure_text
from ml_assets.storage.store import KINDS, ArtifactStore
from ml_assets_tests.conftest import Project, write_csv_source

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def cli_env(home: Path, config: Path) -> dict[str, str]:
    """The environment of an `ml-assets` process with its own home, config and instance."""
    env = {
        **os.environ,
        "ML_ASSETS_HOME": str(home),
        "ML_ASSETS_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
    }
    env.pop("DAGSTER_HOME", None)
    return env


def start_cli(args: list[str], home: Path, config: Path, log: IO[str]) -> subprocess.Popen[str]:
    """`python -m ml_assets.cli ARGS` in its own session (so its whole group can be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=REPO,
        env=cli_env(home, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_cli(args: list[str], home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=REPO,
        env=cli_env(home, config),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None (or fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process and every process of its session (its run workers)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def visible_artifacts(store: ArtifactStore, kinds: Iterable[str] = KINDS) -> set[tuple[str, str]]:
    """Every (kind, key) a reader can see: directories other than staging and trash."""
    found = set()
    for kind in kinds:
        base = store.root / kind
        if base.is_dir():
            found |= {
                (kind, p.name) for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
            }
    return found


def assert_every_visible_artifact_verifies(store: ArtifactStore) -> set[tuple[str, str]]:
    """No half-written artifact is visible: every artifact directory matches its manifest."""
    visible = visible_artifacts(store)
    for kind, key in visible:
        store.verify(kind, key)  # raises ArtifactError naming the artifact
    return visible


_RUN_JOB = """
import json, sys
from ml_assets.cli.local import prepare_home, run_job
prepare_home()
outcome = run_job(sys.argv[1], sys.argv[2] or None)
print("OUTCOME " + json.dumps({"success": outcome.success, "error": outcome.error}))
"""


def start_run(
    job: str, partition: str | None, home: Path, config: Path, log: IO[str]
) -> subprocess.Popen[str]:
    """One job run in its own process, as `ml-assets run` starts them (`runner.run_job`)."""
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_JOB, job, partition or ""],
        cwd=REPO,
        env=cli_env(home, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@contextmanager
def project_home(home: Path, config: dict[str, Any]) -> Iterator[Project]:
    """A project whose home is laid out as `ml-assets` expects (`home/store`, `home/dagster`
    with the project's dagster.yaml, `home/ml_assets.yaml`), so real processes share it."""
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        project = Project(root=home, instance=instance, config=config)
        project.write_config()
        yield project


# --- the small project, its records and failures (shared by the test_faults_* modules) ----

DAY = 86_400.0
FAST: list[dict[str, Any]] = [
    {"name": "lr", "model": "logistic_regression"},
    {"name": "nb", "model": "gaussian_nb"},
    {"name": "knn", "model": "knn", "params": {"n_neighbors": 5}},
]
RECORDED = [
    "ingested_dataset",
    "model_selection",
    "predictions_rank_1",
    "predictions_rank_2",
    "aggregated_predictions",
]


def _small(project: Project, *, retries: int = 0, **changes: Any) -> Path:
    """Three quick candidates on a 300-row CSV (bar 0.5, top 2); retries without delay."""
    source = write_csv_source(project.root / "data.csv", 300)
    project.write_config(
        dataset={"source": "data.csv"},
        selection={"top_k": 2, "min_score": 0.5},
        retries={"max_retries": retries, "delay_seconds": 0},
        candidates=[dict(c) for c in FAST],
        **changes,
    )
    return source


def _record(instance: DagsterInstance, key: str, partition: str | None = None) -> Record:
    record = latest_record(instance, AssetKey(key), partition)
    assert record is not None, f"{key}[{partition}] was never materialized"
    return record


def _message(result: Any) -> str:
    """The failure as `ml-assets run` prints it (the retried error first, not Dagster's note)."""
    return "\n".join(
        failure_text(e.step_failure_data.error)
        for e in result.get_step_failure_events()
        if e.step_failure_data.error
    )


def _snapshot(instance: DagsterInstance) -> dict[str, tuple[str, Any]]:
    """Which run produced each served asset's latest record, and the artifact digest."""
    return {
        key: (record.run_id, record.get("digest"))
        for key in RECORDED
        if (record := latest_record(instance, AssetKey(key))) is not None
    }


_ARTIFACT_OF = {
    "ingested_dataset": ("datasets", "dataset_key"),
    "model_selection": ("selections", "selection_key"),
    "predictions_rank_1": ("predictions", "predictions_key"),
    "predictions_rank_2": ("predictions", "predictions_key"),
    "aggregated_predictions": ("aggregated", "aggregated_key"),
}


def _served(instance: DagsterInstance) -> list[Record]:
    return [_record(instance, key) for key in RECORDED]


def _assert_artifacts_verify(store: ArtifactStore, records: list[Record]) -> None:
    """Each recorded artifact (dataset, selection, predictions, aggregation) matches its digest."""
    for key, record in zip(RECORDED, records, strict=True):
        kind, field = _ARTIFACT_OF[key]
        if field in record.metadata:  # a rank the selection left empty has no artifact
            store.verify(kind, record[field], record["digest"])


def _assert_serving_intact(instance: DagsterInstance, store: ArtifactStore) -> None:
    """The latest records all verify, and the aggregation comes from the latest selection."""
    _assert_artifacts_verify(store, _served(instance))
    aggregated = _record(instance, "aggregated_predictions")
    assert aggregated["selection_key"] == _record(instance, "model_selection")["selection_key"]


def _write_config(path: Path, body: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(body))


def _model_file(path: Path) -> Path:
    return path / "model.joblib"
