"""Fault family: concurrency. Serving runs, training and GC in separate processes at once,
and training runs at the configured concurrency against one SQLite instance
(docs/RELIABILITY.md, rows 4a and 4b)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.core.config import load_settings
from ml_assets.state.records import latest_record
from ml_assets.state.retention import collect
from ml_assets.storage.store import ArtifactStore
from ml_assets_tests.conftest import Project, write_csv_source
from ml_assets_tests.faults import (
    DAY,
    FAST,
    _assert_serving_intact,
    _record,
    _small,
    _write_config,
    kill_group,
    project_home,
    run_cli,
    start_run,
)

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
