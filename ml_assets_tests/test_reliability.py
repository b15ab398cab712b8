"""Fault injection: killed processes, damaged artifacts, storage errors, concurrency, changing
sources, failed selections, hostile input, retries and integrity. docs/RELIABILITY.md maps every
fault to the test here (or elsewhere) that proves the behaviour."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

import ml_assets.artifacts
from ml_assets.artifacts import read_model
from ml_assets.cli import build_parser, dev_command
from ml_assets.config import ConfigError, load_settings
from ml_assets.gc import collect
from ml_assets.lineage import Record, latest_record
from ml_assets.memo import fingerprint_source
from ml_assets.planning import plan_training
from ml_assets.runs import PROCESS_TAG, failure_text, process_gone
from ml_assets.store import MANIFEST, ArtifactError, ArtifactStore
from ml_assets_tests.conftest import Project, write_csv_source
from ml_assets_tests.faults import (
    REPO,
    assert_every_visible_artifact_verifies,
    kill_group,
    project_home,
    run_cli,
    start_cli,
    start_run,
    visible_artifacts,
    wait_for,
)

DAY = 86_400.0
FAST: list[dict[str, Any]] = [
    {"name": "lr", "model": "logistic_regression"},
    {"name": "nb", "model": "gaussian_nb"},
    {"name": "knn", "model": "knn", "params": {"n_neighbors": 5}},
]
# Another valid configuration of each fast candidate: a new memo key, so a new model.
CHANGED_PARAMS = {"lr": {"C": 0.5}, "nb": {"var_smoothing": 1e-8}, "knn": {"n_neighbors": 7}}
RECORDED = [
    "ingested_dataset",
    "model_selection",
    "predictions_rank_1",
    "predictions_rank_2",
    "aggregated_predictions",
]


# --- helpers -------------------------------------------------------------------------------


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


def _retries(result: Any) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


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


# --- 1. killed processes -------------------------------------------------------------------


def _training_run_mid_step(instance: DagsterInstance, partition: str) -> tuple[str, int] | None:
    """The id and process of a started `train_job` run for `partition` whose step has begun."""
    for record in instance.get_run_records(
        RunsFilter(
            job_name="train_job",
            tags={"dagster/partition": partition},
            statuses=[DagsterRunStatus.STARTED],
        )
    ):
        run_id = record.dagster_run.run_id
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START):
            if entry.dagster_event is not None and entry.dagster_event.pid is not None:
                return run_id, entry.dagster_event.pid
    return None


@pytest.mark.e2e
def test_sigkill_mid_fit_leaves_no_partial_artifact_and_the_next_run_retrains(
    tmp_path: Path,
) -> None:
    slow = {"name": "slow_trees", "model": "extra_trees", "params": {"n_estimators": 800}}
    fast = [
        {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
        {"name": "lr", "model": "logistic_regression"},
    ]
    body: dict[str, Any] = {
        "dataset": {"source": "sklearn_digits"},
        "retries": {"max_retries": 0, "delay_seconds": 0},
        "candidates": fast,
    }
    home = tmp_path / "home"
    with project_home(home, body) as project:
        instance = project.instance
        assert project.workflow().success
        before = _snapshot(instance)
        served = assert_every_visible_artifact_verifies(project.store)

        project.write_config(candidates=[*fast, slow])
        with (tmp_path / "killed.log").open("w") as log:
            process = start_cli(["run", "--mode", "sync"], home, project.config_path, log)
            try:
                run_id, _ = wait_for(
                    lambda: _training_run_mid_step(instance, "slow_trees"),
                    timeout=120,
                    what="the slow candidate's training step to start",
                )
                # Fitting takes several seconds; meanwhile no reader ever sees a half artifact.
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    assert_every_visible_artifact_verifies(project.store)
                    time.sleep(0.1)
                assert process.poll() is None, (tmp_path / "killed.log").read_text()
            finally:
                kill_group(process)

        assert latest_record(instance, AssetKey("trained_model"), "slow_trees") is None
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.STARTED  # died mid-run
        # SIGKILL is asynchronous: wait (on the condition, not a delay) until the process the run
        # recorded has exited, as the next `ml-assets run` will see it.
        wait_for(
            lambda: True if process_gone(run.tags) else None,
            timeout=60,
            what=f"the killed run's process ({run.tags.get(PROCESS_TAG)}) to exit",
        )
        assert assert_every_visible_artifact_verifies(project.store) == served
        assert _snapshot(instance) == before
        _assert_serving_intact(instance, project.store)

        rerun = run_cli(["run", "--mode", "sync"], home, project.config_path)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        # Its process is gone: the next run marks it failed instead of leaving it "started".
        assert f"marked run {run_id[:8]} failed" in rerun.stdout
        killed = instance.get_run_by_id(run_id)
        assert killed is not None and killed.status == DagsterRunStatus.FAILURE
        retrained = _record(instance, "trained_model", "slow_trees")
        assert retrained["memoized"] is False and retrained["produced_by_run"] != run_id
        project.store.verify("models", retrained["model_key"], retrained["digest"])
        _assert_serving_intact(instance, project.store)
        assert _snapshot(instance)["aggregated_predictions"] != before["aggregated_predictions"]
        assert "| slow_trees | landed |" in _record(instance, "model_selection")["leaderboard"]


@pytest.mark.e2e
def test_sigkill_of_one_training_process_fails_only_that_run_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "ml_assets.yaml"
    candidates = [
        {"name": "slow_trees", "model": "extra_trees", "params": {"n_estimators": 800}},
        {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
        {"name": "lr", "model": "logistic_regression"},
    ]
    _write_config(
        config,
        {
            "dataset": {"source": "sklearn_digits"},
            "retries": {"max_retries": 0, "delay_seconds": 0},
            "candidates": candidates,
        },
    )
    with (tmp_path / "run.log").open("w") as log:
        process = start_cli(["run", "--mode", "sync", "--max-concurrent", "2"], home, config, log)
        try:
            # Open the instance only once the CLI has created its storage (it prints the
            # candidates it added after that): two processes creating one fresh SQLite schema
            # at once can fail ("table alembic_version already exists").
            wait_for(
                lambda: True if "candidates: +" in (tmp_path / "run.log").read_text() else None,
                timeout=120,
                what="the CLI to create the instance",
            )
            instance = DagsterInstance.from_config(str(home / "dagster"))
            with instance:
                run_id, pid = wait_for(
                    lambda: _training_run_mid_step(instance, "slow_trees"),
                    timeout=120,
                    what="the slow candidate's training step to start",
                )
                time.sleep(1.0)
                os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
                assert process.wait(timeout=240) == 0, (tmp_path / "run.log").read_text()
                output = (tmp_path / "run.log").read_text()
                assert "FAILED: the run's process died (killed by SIGKILL)" in output
                assert "Traceback" not in output
                # The killed step's training slot was given back with its run's failure.
                training = instance.event_log_storage.get_concurrency_info("training")
                assert training.claimed_slots == [], training.claimed_slots
                run = instance.get_run_by_id(run_id)
                assert run is not None and run.status == DagsterRunStatus.FAILURE
                assert latest_record(instance, AssetKey("trained_model"), "slow_trees") is None
                aggregated = _record(instance, "aggregated_predictions")
                assert sorted(aggregated["models"]) == ["knn", "lr"]
                selection = _record(instance, "model_selection")
                assert "| slow_trees | failed |" in selection["leaderboard"]
                _assert_serving_intact(instance, ArtifactStore(home / "store"))
                assert_every_visible_artifact_verifies(ArtifactStore(home / "store"))
        finally:
            if process.poll() is None:
                kill_group(process)


_KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from ml_assets.store import ArtifactStore

def write(directory: Path) -> None:
    (directory / "model.joblib").write_bytes(b"x" * 100_000)
    (directory / "half.bin").write_bytes(b"y" * 10)
    os.kill(os.getpid(), signal.SIGKILL)

ArtifactStore(Path(sys.argv[1])).put("models", "victim", write)
"""


def test_sigkill_mid_write_leaves_only_a_staging_directory_that_gc_removes(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path / "store")
    store.put("models", "neighbour", lambda d: (d / "model.joblib").write_bytes(b"ok"))
    result = subprocess.run(
        [sys.executable, "-c", _KILL_MID_WRITE, str(store.root)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -9, result.stderr
    assert visible_artifacts(store) == {("models", "neighbour")}
    assert store.find("models", "victim") == (None, store.find("models", "victim")[1])
    staging = list((store.root / "models").glob(".tmp-victim-*"))
    assert len(staging) == 1, "the killed writer's staging directory should be left behind"
    store.verify("models", "neighbour")
    # The next writer of the same key succeeds; GC removes the orphaned staging once stale.
    store.put("models", "victim", lambda d: (d / "model.joblib").write_bytes(b"retrained"))
    assert store.verify("models", "victim").file("model.joblib").read_bytes() == b"retrained"
    old = time.time() - 40 * DAY
    os.utime(staging[0], (old, old))
    store.collect_garbage(30 * DAY, protected={("models", "victim"), ("models", "neighbour")})
    assert not staging[0].exists()


# --- 2. damaged model artifacts ------------------------------------------------------------


def _model_file(path: Path) -> Path:
    return path / "model.joblib"


def _truncate(path: Path) -> None:
    data = _model_file(path).read_bytes()
    _model_file(path).write_bytes(data[: len(data) // 2])


def _delete_artifact(path: Path) -> None:
    shutil.rmtree(path)


def _garble_manifest(path: Path) -> None:
    (path / MANIFEST).write_text("{not json")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "fails its SHA-256 check"),
        (_delete_artifact, "artifact missing or incomplete"),
        (_garble_manifest, "does not match the recorded"),
    ],
)
def test_damaged_model_is_never_served_selection_states_why_and_training_replaces_it(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    victim_record = _record(project.instance, "trained_model", victim)
    damage(Path(victim_record["path"]))

    loaded: list[Path] = []
    real_load = ml_assets.artifacts.load_model

    def spy(directory: Path) -> Any:
        loaded.append(directory)
        return real_load(directory)

    monkeypatch.setattr(ml_assets.artifacts, "load_model", spy)
    result = project.run("serve_job")
    assert result.success, _message(result)
    assert Path(victim_record["path"]) not in loaded
    selection = _record(project.instance, "model_selection")
    assert victim not in selection["selected"] and selection["candidates_broken"] == 1
    row = next(line for line in selection["leaderboard"].splitlines() if f"| {victim} |" in line)
    assert "| broken |" in row and "passed over" in row and reason in row
    assert _record(project.instance, "aggregated_predictions")["models"] == selection["selected"]

    plan = plan_training(project.instance, load_settings(project.config_path), project.store)
    assert [c.name for c in plan.to_train] == [victim]
    assert project.run("train_job", victim).success
    retrained = _record(project.instance, "trained_model", victim)
    assert retrained["memoized"] is False
    project.store.verify("models", retrained["model_key"], retrained["digest"])


# --- 3. storage errors ---------------------------------------------------------------------


def _fail_writes(monkeypatch: pytest.MonkeyPatch, kind: str, code: int) -> None:
    """Writes of `kind` fail with `code` after the payload landed in the staging directory."""
    real_put = ArtifactStore.put

    def put(self: ArtifactStore, put_kind: str, key: str, write: Callable[[Path], object]) -> Any:
        if put_kind != kind:
            return real_put(self, put_kind, key, write)

        def failing(directory: Path) -> None:
            write(directory)
            raise OSError(code, os.strerror(code), str(directory / "next.bin"))

        return real_put(self, put_kind, key, failing)

    monkeypatch.setattr(ArtifactStore, "put", put)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("datasets", errno.ENOSPC),
        ("models", errno.EACCES),
        ("predictions", errno.ENOSPC),
        ("aggregated", errno.EACCES),
    ],
)
def test_storage_error_is_named_and_previous_artifacts_stay(
    project: Project, monkeypatch: pytest.MonkeyPatch, kind: str, code: int
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    if kind in {"predictions", "aggregated"}:
        # A new model for a selected candidate: serving has new predictions to write.
        changed = [
            {**c, "params": CHANGED_PARAMS[c["name"]]} if c["name"] == victim else c
            for c in project.config["candidates"]
        ]
        project.write_config(candidates=changed)
        assert project.run("train_job", victim).success
    model_before = _record(project.instance, "trained_model", victim)
    before = _snapshot(project.instance)
    served = _served(project.instance)
    visible = visible_artifacts(project.store)

    _fail_writes(monkeypatch, kind, code)
    force = {"ml_assets/force": "all"}
    if kind == "datasets":
        result = project.run("ingest_job", tags=force)
    elif kind == "models":
        result = project.run("train_job", victim, tags=force)
    else:
        result = project.run("serve_job")
    assert not result.success
    headline = _message(result).splitlines()[0]
    assert f"ArtifactError: {kind}/" in headline and str(project.store.root) in headline
    assert os.strerror(code) in headline and "previous artifacts are untouched" in headline

    if kind in {"datasets", "models"}:
        assert _snapshot(project.instance) == before
        _assert_serving_intact(project.instance, project.store)
    else:  # selection ran, serving stopped: what is served is still the previous aggregation
        after = _snapshot(project.instance)
        assert after["aggregated_predictions"] == before["aggregated_predictions"]
    _assert_artifacts_verify(project.store, served)
    assert _record(project.instance, "trained_model", victim).run_id == model_before.run_id
    project.store.verify("models", model_before["model_key"], model_before["digest"])
    new = visible_artifacts(project.store) - visible
    assert all(k != kind for k, _ in new), f"a failed {kind} write became visible: {new}"
    assert not list((project.store.root / kind).glob(".tmp-*")), "staging left behind"


# --- 4. concurrency ------------------------------------------------------------------------


def _outcome(log: Path) -> dict[str, Any]:
    text = log.read_text()
    assert "database is locked" not in text.lower(), text
    (line,) = [x for x in text.splitlines() if x.startswith("OUTCOME ")]
    outcome: dict[str, Any] = json.loads(line.removeprefix("OUTCOME "))
    return outcome


@pytest.mark.e2e
def test_two_serving_runs_training_and_gc_at_once_stay_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with project_home(home, {}) as project:
        _small(project)
        assert project.workflow().success
        project.write_config(
            candidates=[
                *project.config["candidates"],
                {"name": "trees", "model": "extra_trees", "params": {"n_estimators": 60}},
            ]
        )
        project.sync()
        settings = load_settings(project.config_path)
        orphan = ArtifactStore(project.store.root, clock=lambda: time.time() - 100 * DAY)
        orphan.put("models", "orphan", lambda d: (d / "model.joblib").write_bytes(b"unused"))
        # GC as if 400 days had passed: everything is old, so only its protections keep anything.
        gc_store = ArtifactStore(project.store.root, clock=lambda: time.time() + 400 * DAY)
        reports: list[Any] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def gc_loop() -> None:
            try:
                while not done.is_set():
                    reports.append(collect(project.instance, settings, gc_store, dry_run=False))
                    time.sleep(0.05)
            except BaseException as error:  # re-raised in the test below
                errors.append(error)

        collector = threading.Thread(target=gc_loop)
        collector.start()
        runs = {"serve_a": ("serve_job", None), "train": ("train_job", "trees")}
        runs["serve_b"] = ("serve_job", None)
        processes = []
        try:
            for name, (job, partition) in runs.items():
                with (tmp_path / f"{name}.log").open("w") as log:
                    processes.append(start_run(job, partition, home, project.config_path, log))
                time.sleep(0.5)
            for process in processes:
                process.wait(timeout=240)
        finally:
            for process in processes:
                if process.poll() is None:
                    kill_group(process)
            done.set()
            collector.join(timeout=60)
        assert not errors, errors
        outcomes = {name: _outcome(tmp_path / f"{name}.log") for name in runs}
        assert outcomes["train"]["success"], outcomes["train"]["error"]
        assert any(("models", "orphan") in report.deleted for report in reports)
        for name in ("serve_a", "serve_b"):
            # Refusing to mix two selections is allowed; losing an artifact in use is not.
            if not outcomes[name]["success"]:
                error = outcomes[name]["error"]
                assert "re-run serving" in error, f"{name} failed otherwise:\n{error}"

        assert project.run("serve_job").success  # catches up with every landed model
        _assert_one_selection_per_aggregation(project)


def _assert_one_selection_per_aggregation(project: Project) -> None:
    """Every aggregation lists its selection's models; the latest is exactly the mean of the
    predictions its selection served."""
    instance = project.instance
    selections = {
        m.metadata["selection_key"].value: m.metadata["selected"].value
        for r in instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("model_selection")), limit=100
        ).records
        if (m := r.asset_materialization) is not None
    }
    aggregations = [
        m
        for r in instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("aggregated_predictions")), limit=100
        ).records
        if (m := r.asset_materialization) is not None
    ]
    assert len(aggregations) >= 2
    for materialization in aggregations:
        selected = selections[materialization.metadata["selection_key"].value]
        assert materialization.metadata["models"].value == selected

    _assert_serving_intact(instance, project.store)
    aggregated = _record(instance, "aggregated_predictions")
    frames = []
    for rank, name in enumerate(_record(instance, "model_selection")["selected"], start=1):
        served = _record(instance, f"predictions_rank_{rank}")
        assert served["selection_key"] == aggregated["selection_key"]
        assert served["candidate"] == name
        frames.append(pd.read_parquet(Path(served["path"]) / "predictions.parquet"))
    mean = np.mean([f.filter(like="score:").to_numpy() for f in frames], axis=0)
    entities = [c.removeprefix("score:") for c in frames[0].filter(like="score:").columns]
    output = pd.read_parquet(aggregated["path"])
    assert list(output["top_entity"]) == [entities[i] for i in mean.argmax(axis=1)]


@pytest.mark.e2e
def test_training_runs_at_the_configured_concurrency_never_lock_the_database(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "ml_assets.yaml"
    write_csv_source(tmp_path / "data.csv", 300)
    candidates = [
        *FAST,
        {"name": "nb_smooth", "model": "gaussian_nb", "params": {"var_smoothing": 1e-6}},
        {"name": "tree", "model": "decision_tree", "params": {"max_depth": 6}},
        {"name": "lr_strong", "model": "logistic_regression", "params": {"C": 0.1}},
    ]
    _write_config(
        config,
        {
            "dataset": {"source": "data.csv"},
            "selection": {"min_score": 0.5},
            "training": {"max_concurrent": 3},
            "retries": {"max_retries": 0, "delay_seconds": 0},
            "candidates": candidates,
        },
    )
    result = run_cli(["run", "--mode", "sync"], home, config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "at most 3 at a time" in output
    assert "database is locked" not in output.lower()
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_run_records(RunsFilter(job_name="train_job"))
        assert len(runs) == len(candidates)
        assert {r.dagster_run.status for r in runs} == {DagsterRunStatus.SUCCESS}
        starts = sorted((r.start_time or 0.0, r.end_time or 0.0) for r in runs)
        overlapping = max(sum(s <= t < e for s, e in starts) for t, _ in starts)
        assert overlapping >= 2, "the training runs did not run at the same time"
        for candidate in candidates:
            assert latest_record(instance, AssetKey("trained_model"), candidate["name"])


# --- 5. a source that changes during ingestion ---------------------------------------------


def _change_source_during_first_read(monkeypatch: pytest.MonkeyPatch, source: Path) -> list[int]:
    """The first read of the source is followed by a writer replacing it (330 rows)."""
    import ml_assets.assets.ingestion as ingestion

    real_read = ingestion.read_source
    reads: list[int] = []

    def read(*args: Any, **kwargs: Any) -> pd.DataFrame:
        frame = real_read(*args, **kwargs)
        reads.append(len(frame))
        if len(reads) == 1:
            write_csv_source(source, 330, seed=1)
        return frame

    monkeypatch.setattr(ingestion, "read_source", read)
    return reads


def test_source_changed_during_ingestion_fails_clearly_and_keeps_the_previous_dataset(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _small(project, retries=0)
    assert project.run("ingest_job").success
    before = _record(project.instance, "ingested_dataset")
    write_csv_source(source, 300, seed=2)  # a real change, so ingestion runs again
    reads = _change_source_during_first_read(monkeypatch, source)
    result = project.run("ingest_job")
    assert not result.success and reads == [300]
    assert "'data.csv' changed while it was being ingested" in _message(result)
    after = _record(project.instance, "ingested_dataset")
    assert after.run_id == before.run_id
    project.store.verify("datasets", after["dataset_key"], after["digest"])


def test_source_changed_during_ingestion_is_retried_and_the_result_is_consistent(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _small(project, retries=1)
    reads = _change_source_during_first_read(monkeypatch, source)
    result = project.run("ingest_job")
    assert result.success, _message(result)
    assert reads == [300, 330] and _retries(result) == 1
    record = _record(project.instance, "ingested_dataset")
    settled = fingerprint_source("data.csv", project.root, full_hash=True)
    assert record["records"] == record["state_records"] == settled.records == 330
    assert record["state_content_hash"] == settled.content_hash
    assert record["state_cheap_key"] == settled.cheap_key


# --- 6. no candidate succeeds, or none meets the bar ---------------------------------------


@pytest.mark.parametrize("failure", ["below_bar", "every_training_fails"])
def test_failed_selection_keeps_previous_serving_and_is_visible(
    project: Project, failure: str
) -> None:
    _small(project)
    assert project.workflow().success
    before = _snapshot(project.instance)
    if failure == "below_bar":
        project.write_config(selection={"top_k": 2, "min_score": 0.9999})
    else:
        project.write_config(
            candidates=[{**c, "params": {"no_such_param": 1}} for c in FAST],
        )
        assert project.train_all() == {c["name"]: False for c in FAST}
    result = project.run("serve_job")
    assert not result.success
    message = _message(result)
    assert "no candidate reaches the bar" in message
    for candidate in FAST:
        assert candidate["name"] in message
    if failure == "every_training_fails":
        assert "config changed since training" in message
    run = project.instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    check = AssetCheckKey(AssetKey("model_selection"), "selected_models_meet_bar")
    latest = project.instance.get_latest_asset_check_evaluation_record(check)
    assert latest is not None and latest.run_id == result.run_id
    assert latest.status.value == "FAILED"
    assert latest.event is not None and "no candidate reaches the bar" in latest.event.message
    assert _snapshot(project.instance) == before
    _assert_serving_intact(project.instance, project.store)


# --- 7. hostile names and paths ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../escape", "a/b", "/etc", "..", ".", "a\\b", "modèle", "名前", "a" * 300, "x\x00y", "x\n"],
)
def test_hostile_candidate_names_are_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / "ml_assets.yaml"
    _write_config(path, {"candidates": [{"name": name, "model": "knn"}]})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and "candidates.0.name" in message
    assert "partition key and a path segment" in message


def test_partition_outside_the_config_writes_nothing(project: Project) -> None:
    _small(project)
    assert project.run("ingest_job").success
    project.instance.add_dynamic_partitions("candidates", ["../../escape"])
    before = sorted(str(p) for p in project.root.rglob("*"))
    result = project.run("train_job", "../../escape")
    assert not result.success
    assert "candidate '../../escape' is not in the config" in _message(result)
    assert _retries(result) == 0
    assert sorted(str(p) for p in project.root.rglob("*")) == before


def _directory(root: Path) -> str:
    (root / "data").mkdir()
    return "data"


def _dir_matched_by_glob(root: Path) -> str:
    (root / "parts").mkdir()
    write_csv_source(root / "parts" / "a.csv", 30)
    (root / "parts" / "b.csv").mkdir()
    return "parts/*.csv"


def _device(root: Path) -> str:
    return "/dev/null"


def _symlink_to_device(root: Path) -> str:
    (root / "zero.csv").symlink_to("/dev/zero")  # reading it would never end
    return "zero.csv"


def _fifo(root: Path) -> str:
    os.mkfifo(root / "pipe.csv")  # opening it would block until a writer comes
    return "pipe.csv"


@pytest.mark.parametrize(
    ("make_source", "expected"),
    [
        (_directory, "is a directory"),
        (_dir_matched_by_glob, "is a directory"),
        (_device, "is not a regular file"),
        (_symlink_to_device, "is not a regular file"),
        (_fifo, "is not a regular file"),
    ],
)
def test_source_that_is_not_a_regular_file_is_rejected_without_retry(
    project: Project, make_source: Callable[[Path], str], expected: str
) -> None:
    _small(project, retries=2)
    source = make_source(project.root)
    project.write_config(dataset={"source": source})
    result = project.run("ingest_job")
    assert not result.success
    message = _message(result)
    assert f"dataset.source {source!r}" in message and expected in message
    assert _retries(result) == 0
    assert latest_record(project.instance, AssetKey("ingested_dataset")) is None


# --- 8. retries ----------------------------------------------------------------------------


def _io_errors(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """The first `failures` reads of a dataset split raise EIO; returns the call log."""
    import ml_assets.assets.training as training

    real = training.read_dataset_part
    calls: list[int] = []

    def read(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(errno.EIO, os.strerror(errno.EIO), "train.parquet")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "read_dataset_part", read)
    return calls


def test_transient_io_error_is_retried_by_the_configured_policy(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(project, retries=2)
    assert project.run("ingest_job").success
    project.sync()
    _io_errors(monkeypatch, failures=1)
    result = project.run("train_job", "lr")
    assert result.success, _message(result)
    assert _retries(result) == 1
    assert _record(project.instance, "trained_model", "lr")["memoized"] is False


def test_retries_stop_at_max_retries_from_the_config(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(project, retries=1)
    assert project.run("ingest_job").success
    project.sync()
    _io_errors(monkeypatch, failures=100)
    result = project.run("train_job", "lr")
    assert not result.success
    assert _retries(result) == 1  # one retry, then the second failure is final
    assert os.strerror(errno.EIO) in _message(result)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"candidates": [{"name": "lr", "model": "logistic_regression", "params": {"Cee": 1}}]},
            "has no hyperparameter 'Cee'",
        ),
        ({"candidates": [{"name": "lr", "model": "xgboost"}]}, "unknown model type 'xgboost'"),
    ],
)
def test_deterministic_errors_are_not_retried(
    project: Project, change: dict[str, Any], expected: str
) -> None:
    _small(project, retries=3)
    assert project.run("ingest_job").success
    project.write_config(**change)
    project.sync()
    result = project.run("train_job", "lr")
    assert not result.success
    assert expected in _message(result) and _retries(result) == 0


def test_bad_data_is_not_retried(project: Project) -> None:
    _small(project, retries=3)
    project.write_config(dataset={"source": "data.csv", "label": "no_such_column"})
    result = project.run("ingest_job")
    assert not result.success
    assert "label column 'no_such_column'" in _message(result) and _retries(result) == 0


# --- 9. security ---------------------------------------------------------------------------


class _Planted:
    """A pickle that creates a file when loaded: what an attacker with store access plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _rewrite_manifest(path: Path) -> None:
    """Make the artifact self-consistent again, as an attacker who can write the store would."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST).write_bytes(json.dumps(manifest, sort_keys=True).encode())


def test_planted_pickle_is_never_loaded_because_its_digest_differs_from_the_record(
    project: Project, tmp_path: Path
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    record = _record(project.instance, "trained_model", victim)
    marker = tmp_path / "pwned"
    artifact = Path(record["path"])
    _model_file(artifact).write_bytes(pickle.dumps(_Planted(marker)))
    _rewrite_manifest(artifact)
    project.store.verify("models", record["model_key"])  # intact by its own manifest...

    with pytest.raises(ArtifactError, match="does not match the recorded"):
        read_model(project.store, record["model_key"], record["digest"])  # ...not by the record
    result = project.run("serve_job")
    assert result.success, _message(result)
    assert victim not in _record(project.instance, "model_selection")["selected"]
    assert not marker.exists(), "the planted pickle ran"

    import joblib  # the control: the planted file really is a payload that runs on load

    joblib.load(_model_file(artifact))
    assert marker.exists()


def test_readme_says_models_are_pickles_and_the_store_must_be_trusted() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "joblib pickles" in readme
    assert "only after the SHA-256" in readme
    assert "the store itself must be trusted" in readme


def _make_dev(*args: str) -> str:
    result = subprocess.run(
        ["make", "-n", "dev", "VENV=/nonexistent-venv", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "ml-assets dev" in x]
    return line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_ui_binds_localhost_unless_told_otherwise() -> None:
    assert " --host 127.0.0.1 " in _make_dev()
    assert " --host 0.0.0.0 " in _make_dev("DEV_HOST=0.0.0.0")
    args = build_parser().parse_args(["dev"])
    command = dev_command("dagster", args.host, args.port, Path("workspace.yaml"))
    assert command[command.index("-h") + 1] == "127.0.0.1"
