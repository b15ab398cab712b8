"""Concurrency pools: the limits on the project's instance, and that every launch obeys them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.core.names import (
    BATCHES_GROUP,
    INGESTION_POOL,
    POOLS,
    SERVING_POOL,
    TRAINING_POOL,
)
from ml_assets.definitions import build_definitions
from ml_assets.defs.pools import apply_pool_limits
from ml_assets_tests.faults import REPO, cli_env, project_home, wait_for

_STEP_EVENTS = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
}
_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
_STAGE_TAG = "ml_assets/stage"


@pytest.fixture
def project_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """An instance configured by the project's own dagster.yaml."""
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_every_materializable_asset_is_in_the_pool_of_its_stage() -> None:
    graph = build_definitions().resolve_asset_graph()
    pools = {
        key.to_user_string(): (graph.get(key).group_name, graph.get(key).pools)
        for key in graph.get_all_asset_keys()
        if graph.get(key).is_materializable
    }
    assert pools, "no materializable assets"
    # Scoring request batches is serving work: its own group in the UI, the serving pool.
    stage = {BATCHES_GROUP: SERVING_POOL}
    for name, (group, asset_pools) in pools.items():
        pool = stage.get(group, group)
        assert asset_pools == {pool}, f"{name} (group {group}) is in pools {asset_pools}"
        assert pool in POOLS, f"{name}: no pool constant for stage {group}"
    assert pools["trained_model"][1] == {TRAINING_POOL}
    assert pools["batch_aggregated_predictions"][1] == {SERVING_POOL}


def test_training_pool_follows_max_concurrent_and_the_others_get_one_slot(
    project_instance: DagsterInstance,
) -> None:
    storage = project_instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    pool_config = project_instance.get_concurrency_config().pool_config
    assert pool_config.default_pool_limit == 1
    assert pool_config.pool_granularity is not None
    assert pool_config.pool_granularity.value == "op"

    apply_pool_limits(project_instance, 2)
    training = storage.get_concurrency_info(TRAINING_POOL)
    assert (training.limit, training.slot_count, training.using_default_limit) == (2, 2, False)
    for pool in (SERVING_POOL, INGESTION_POOL):
        info = storage.get_concurrency_info(pool)
        assert (info.limit, info.using_default_limit) == (1, True), (pool, info)

    apply_pool_limits(project_instance, 2)  # idempotent
    assert storage.get_concurrency_info(TRAINING_POOL).slot_count == 2
    apply_pool_limits(project_instance, 3)  # follows a changed training.max_concurrent
    training = storage.get_concurrency_info(TRAINING_POOL)
    assert (training.limit, training.slot_count) == (3, 3)
    assert storage.get_concurrency_info(SERVING_POOL).limit == 1


def test_tag_limits_keep_serving_runs_whole_and_leave_training_to_the_pool(
    project_instance: DagsterInstance,
) -> None:
    queue = project_instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert queue.max_concurrent_runs == 3
    stage_limits = {
        limit["value"]: limit["limit"]
        for limit in queue.tag_concurrency_limits
        if limit["key"] == _STAGE_TAG
    }
    assert stage_limits == {"serving": 1}


def _step_events(instance: DagsterInstance, run_id: str) -> dict[DagsterEventType, float]:
    """When `trained_model`'s step started and ended in `run_id` (by event type)."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=_STEP_EVENTS):
        if entry.dagster_event is not None and entry.step_key == "trained_model":
            found[entry.dagster_event.event_type] = entry.timestamp
    return found


def _is_executing(steps: dict[DagsterEventType, float]) -> bool:
    return DagsterEventType.STEP_START in steps and not (
        DagsterEventType.STEP_SUCCESS in steps or DagsterEventType.STEP_FAILURE in steps
    )


def test_in_process_training_waits_for_a_free_training_slot(tmp_path: Path) -> None:
    config = {
        "dataset": {"source": "sklearn_digits"},
        "training": {"niceness": 0},  # training in this process must not renice the tests
        "candidates": [{"name": "knn", "model": "knn", "params": {"n_neighbors": 3}}],
    }
    with project_home(tmp_path / "home", config) as project:
        assert project.run("ingest_job").success
        project.sync()
        apply_pool_limits(project.instance, 1)
        storage = project.instance.event_log_storage
        # Another process's training step holds the only slot.
        holder = storage.claim_concurrency_slot(TRAINING_POOL, "other-run", "trained_model")
        assert holder.is_claimed
        outcome: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: outcome.update(result=project.run("train_job", "knn"))
        )
        worker.start()
        try:
            waiting = wait_for(
                lambda: next(
                    (
                        step
                        for step in storage.get_concurrency_info(TRAINING_POOL).pending_steps
                        if step.run_id != "other-run" and step.assigned_timestamp is None
                    ),
                    None,
                ),
                timeout=120,
                what="the in-process training step to wait for a training slot",
            )
            assert DagsterEventType.STEP_START not in _step_events(
                project.instance, waiting.run_id
            ), "the step started while the pool was full"
            freed_at = time.time()
        finally:
            storage.free_concurrency_slot_for_step("other-run", "trained_model")
        worker.join(timeout=240)
        assert not worker.is_alive(), "the training run never finished"
        assert outcome["result"].success
        steps = _step_events(project.instance, waiting.run_id)
        assert steps[DagsterEventType.STEP_START] >= freed_at
        assert storage.get_concurrency_info(TRAINING_POOL).claimed_slots == []


def _dagster(args: Sequence[str], env: dict[str, str]) -> None:
    """One `dagster` CLI command (it loads the project's code location itself)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"dagster {' '.join(args)}:\n{result.stdout}{result.stderr}"


@contextmanager
def _daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` over the test's instance, in its own session (with its run workers)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-daemon"),
                "run",
                "-m",
                "ml_assets.definitions",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.mark.e2e
def test_ui_launched_training_runs_wait_for_the_training_pool(tmp_path: Path) -> None:
    """`__ASSET_JOB` runs (what the UI's "Materialize" launches: no `ml_assets/stage` tag) of
    three training partitions go through the queue and a real daemon with one training slot."""
    names = ["trees_a", "trees_b", "trees_c"]
    config = {
        "dataset": {"source": "sklearn_digits"},
        # A fit of a few seconds: long enough that unlimited runs would overlap.
        "candidates": [
            {"name": name, "model": "extra_trees", "params": {"n_estimators": 150 + i}}
            for i, name in enumerate(names)
        ],
    }
    home = tmp_path / "home"
    with project_home(home, config) as project:
        instance = project.instance
        assert project.run("ingest_job").success
        project.sync()
        apply_pool_limits(instance, 1)
        env = {**cli_env(home, project.config_path), "DAGSTER_HOME": str(home / "dagster")}
        module = ["-m", "ml_assets.definitions"]
        # Only the runs launched here: the sensors would request training and serving of their own.
        for sensor in ("candidates_sensor", "model_landed_sensor"):
            _dagster(["sensor", "stop", *module, sensor], env)
        for name in names:
            _dagster(
                [
                    "job",
                    "launch",
                    *module,
                    "-j",
                    "__ASSET_JOB",
                    "-o",
                    "trained_model",
                    "--tags",
                    json.dumps({"dagster/partition": name}),
                ],
                env,
            )
        runs = instance.get_runs(RunsFilter(job_name="__ASSET_JOB"))
        assert len(runs) == 3
        assert all(_STAGE_TAG not in run.tags for run in runs)
        assert all(run.status == DagsterRunStatus.QUEUED for run in runs)
        run_ids = [run.run_id for run in runs]

        log = tmp_path / "daemon.log"
        seen_waiting = seen_claimed = False
        with _daemon(env, log) as daemon:
            deadline = time.monotonic() + 240
            while True:
                statuses = {
                    run.run_id: run.status for run in instance.get_runs(RunsFilter(run_ids=run_ids))
                }
                executing = [
                    run_id
                    for run_id in run_ids
                    if statuses[run_id] not in _FINISHED
                    and _is_executing(_step_events(instance, run_id))
                ]
                assert len(executing) <= 1, f"training steps of {executing} ran at once"
                claimed = instance.event_log_storage.get_concurrency_info(
                    TRAINING_POOL
                ).claimed_slots
                assert len(claimed) <= 1, claimed
                seen_claimed = seen_claimed or bool(claimed)
                values = list(statuses.values())
                seen_waiting = seen_waiting or (
                    DagsterRunStatus.QUEUED in values and DagsterRunStatus.STARTED in values
                )
                if all(status in _FINISHED for status in values):
                    break
                assert daemon.poll() is None, f"the daemon exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (
                    f"runs not finished after 240 s: {statuses}\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.2)

        assert all(status == DagsterRunStatus.SUCCESS for status in statuses.values()), statuses
        assert seen_claimed, "no training step ever held a slot of the training pool"
        assert seen_waiting, "no run was ever held in the queue while another ran"
        spans = sorted(
            (
                steps[DagsterEventType.STEP_START],
                steps[DagsterEventType.STEP_SUCCESS],
            )
            for steps in (_step_events(instance, run_id) for run_id in run_ids)
        )
        for (_, previous_end), (next_start, _) in pairwise(spans):
            assert next_start >= previous_end, f"training steps overlapped: {spans}"
