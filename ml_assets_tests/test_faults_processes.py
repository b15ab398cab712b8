"""Fault family: killed processes. `ml-assets run`, one training process or an artifact
writer is SIGKILLed mid-step; nothing half-written becomes visible, the dead run is marked
failed and the next run retrains (docs/RELIABILITY.md, rows 1a-1c)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_gone
from ml_assets.state.records import latest_record
from ml_assets.storage.store import ArtifactStore
from ml_assets_tests.faults import (
    DAY,
    REPO,
    _assert_serving_intact,
    _record,
    _snapshot,
    _write_config,
    assert_every_visible_artifact_verifies,
    kill_group,
    project_home,
    run_cli,
    start_cli,
    visible_artifacts,
    wait_for,
)

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
from ml_assets.storage.store import ArtifactStore

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
