"""Sensor tests: candidates_sensor, model_landed_sensor and plan_training on a temp project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    DagsterRun,
    DagsterRunStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from ml_assets.core.config import load_settings
from ml_assets.core.names import CANDIDATES_PARTITIONS, FORCE_TAG, PROCESS_TAG
from ml_assets.core.process import process_tag
from ml_assets.defs.sensors import candidates_sensor, dataset_sensor, model_landed_sensor
from ml_assets.ml.datasets import load_digits_frame
from ml_assets.state.planning import ATTEMPT_TAG, TrainingPlan, plan_training, training_attempt
from ml_assets.state.records import latest_record, latest_records
from ml_assets_tests.conftest import Project

# Three quick candidates: two clear the 0.90 bar on digits, the stump does not.
CANDIDATES: list[dict[str, Any]] = [
    {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
    {"name": "extra_trees", "model": "extra_trees", "params": {"n_estimators": 10}},
    {"name": "stump", "model": "decision_tree", "params": {"max_depth": 2}},
]
NAMES = sorted(c["name"] for c in CANDIDATES)


@pytest.fixture
def small(project: Project) -> Project:
    project.write_config(candidates=[dict(c) for c in CANDIDATES])
    return project


def _tick(project: Project, sensor: Any, cursor: str | None = None) -> SensorResult | SkipReason:
    context = build_sensor_context(
        instance=project.instance, resources=project.resources(), cursor=cursor
    )
    result = sensor(context)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def _result(project: Project, sensor: Any, cursor: str | None = None) -> SensorResult:
    result = _tick(project, sensor, cursor)
    assert isinstance(result, SensorResult), result
    return result


def _skip_message(result: SensorResult | SkipReason) -> str:
    skip = result if isinstance(result, SkipReason) else result.skip_reason
    assert skip is not None and skip.skip_message, f"expected a skip, got {result}"
    return skip.skip_message


def _added(result: SensorResult) -> list[str]:
    requests = result.dynamic_partitions_requests or []
    return sorted(
        key
        for r in requests
        if isinstance(r, AddDynamicPartitionsRequest)
        for key in r.partition_keys
        if r.partitions_def_name == CANDIDATES_PARTITIONS
    )


def _deleted(result: SensorResult) -> list[str]:
    requests = result.dynamic_partitions_requests or []
    return sorted(
        key
        for r in requests
        if isinstance(r, DeleteDynamicPartitionsRequest)
        for key in r.partition_keys
        if r.partitions_def_name == CANDIDATES_PARTITIONS
    )


def _requested(result: SensorResult) -> list[str]:
    return sorted(r.partition_key or "" for r in result.run_requests or [])


def _dataset_key(project: Project) -> str:
    record = latest_record(project.instance, AssetKey("ingested_dataset"))
    assert record is not None
    return str(record["dataset_key"])


def _ingest(project: Project) -> None:
    assert project.run("ingest_job").success


def _train_all(project: Project) -> None:
    assert all(project.train_all().values())


def _set_params(project: Project, name: str, params: dict[str, Any]) -> None:
    candidates = [
        {**c, "params": params} if c["name"] == name else c for c in project.config["candidates"]
    ]
    project.write_config(candidates=candidates)


def _newest_model_storage_id(project: Project) -> int:
    records = project.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("trained_model")), limit=1
    ).records
    assert records
    return records[0].storage_id


def _plan(project: Project) -> TrainingPlan:
    return plan_training(project.instance, load_settings(project.config_path), project.store)


# --- candidates_sensor ------------------------------------------------------------------------


def test_no_dataset_requests_ingestion_and_adds_every_candidate(small: Project) -> None:
    result = _result(small, candidates_sensor)
    assert result.run_requests == []
    assert _added(result) == NAMES
    assert _deleted(result) == []
    context = build_sensor_context(instance=small.instance, resources=small.resources())
    ingest = dataset_sensor(context)
    assert isinstance(ingest, RunRequest) and ingest.run_key
    assert ingest.run_key.startswith("ingest:")
    _ingest(small)
    context = build_sensor_context(instance=small.instance, resources=small.resources())
    again = dataset_sensor(context)
    assert isinstance(again, SkipReason) and "unchanged" in (again.skip_message or "")
    small.write_config(dataset={"source": "sklearn_digits", "split": {"validation": 0.25}})
    context = build_sensor_context(instance=small.instance, resources=small.resources())
    changed = dataset_sensor(context)
    assert isinstance(changed, RunRequest) and changed.run_key != ingest.run_key


def test_after_ingestion_every_candidate_is_requested(small: Project) -> None:
    _ingest(small)
    dataset = _dataset_key(small)
    settings = load_settings(small.config_path)
    result = _result(small, candidates_sensor)
    assert _requested(result) == NAMES
    for request in result.run_requests or []:
        assert isinstance(request, RunRequest)
        name = request.partition_key
        assert name is not None
        assert request.job_name in (None, "train_job")
        assert request.run_key is not None
        assert name in request.run_key
        assert settings.candidate(name).config_hash() in request.run_key
        assert dataset in request.run_key
        assert request.tags["ml_assets/dataset"] == dataset
        assert request.tags["ml_assets/candidate"] == name
    assert candidates_sensor.job_name == "train_job"
    # The partitions do not exist yet, so the same tick adds them.
    assert _added(result) == NAMES


def test_trained_candidates_request_nothing_until_params_change(small: Project) -> None:
    _ingest(small)
    _train_all(small)
    result = _result(small, candidates_sensor)
    assert not result.run_requests
    assert not result.dynamic_partitions_requests
    assert "up to date (3)" in _skip_message(result)
    plan = _plan(small)
    assert plan.to_train == []
    assert sorted(plan.up_to_date) == NAMES
    assert plan.invalid == {}
    assert plan.dataset_key == _dataset_key(small)

    # A cached model that is no longer intact is trained again.
    stump = latest_record(small.instance, AssetKey("trained_model"), "stump")
    assert stump is not None
    shutil.rmtree(small.store.path("models", stump["model_key"]))
    assert [c.name for c in _plan(small).to_train] == ["stump"]
    assert small.run("train_job", "stump").success
    assert _plan(small).to_train == []

    before = load_settings(small.config_path).candidate("knn").config_hash()
    _set_params(small, "knn", {"n_neighbors": 5})
    after = load_settings(small.config_path).candidate("knn").config_hash()
    assert after != before
    result = _result(small, candidates_sensor)
    assert _requested(result) == ["knn"]
    (request,) = result.run_requests or []
    assert request.run_key is not None and after in request.run_key
    assert not result.dynamic_partitions_requests
    changed = _plan(small)
    assert [c.name for c in changed.to_train] == ["knn"]
    assert sorted(changed.up_to_date) == ["extra_trees", "stump"]


def test_removed_candidate_partition_is_deleted(small: Project) -> None:
    small.sync()
    small.write_config(candidates=[c for c in small.config["candidates"] if c["name"] != "stump"])
    result = _result(small, candidates_sensor)
    assert _deleted(result) == ["stump"]
    assert _added(result) == []


def test_invalid_candidates_are_neither_added_nor_requested(small: Project) -> None:
    invalid = [
        {"name": "mystery", "model": "no_such_model"},
        {"name": "typo", "model": "knn", "params": {"n_neighbours": 3}},
    ]
    small.write_config(candidates=[*small.config["candidates"], *invalid])
    before_ingest = _result(small, candidates_sensor)
    assert _added(before_ingest) == NAMES
    _ingest(small)
    result = _result(small, candidates_sensor)
    assert _requested(result) == NAMES
    assert _added(result) == NAMES
    plan = _plan(small)
    assert sorted(plan.invalid) == ["mystery", "typo"]
    assert "unknown model type 'no_such_model'" in plan.invalid["mystery"]
    assert "n_neighbours" in plan.invalid["typo"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("candidates: [\n  - {name: knn\n", "not valid YAML"),
        (None, "unknown key"),
    ],
    ids=["bad-yaml", "unknown-key"],
)
def test_invalid_config_skips_and_keeps_the_partitions(
    small: Project, text: str | None, expected: str
) -> None:
    small.sync()
    if text is None:
        small.write_config(bogus_key=1)
    else:
        small.config_path.write_text(text)
    result = _tick(small, candidates_sensor)
    assert isinstance(result, SkipReason)
    message = _skip_message(result)
    assert expected in message
    assert "config invalid" in message
    if text is None:
        assert "bogus_key" in message
    assert sorted(small.instance.get_dynamic_partitions(CANDIDATES_PARTITIONS)) == sorted(NAMES)


# --- model_landed_sensor ----------------------------------------------------------------------


def test_model_landed_skips_without_materializations(small: Project) -> None:
    result = _tick(small, model_landed_sensor)
    assert isinstance(result, SkipReason)
    assert "no model landed" in _skip_message(result)


def test_model_landings_trigger_serving_once_and_memo_hits_do_not(small: Project) -> None:
    _ingest(small)
    _train_all(small)
    first = _result(small, model_landed_sensor)
    assert len(first.run_requests or []) == 1
    (run,) = first.run_requests or []
    assert run.job_name in (None, "serve_job")
    assert model_landed_sensor.job_name == "serve_job"
    assert first.cursor == str(_newest_model_storage_id(small))
    assert run.tags["ml_assets/landed"].split(",") == NAMES  # all three, none dropped

    # Nothing new since that cursor: skip.
    quiet = _tick(small, model_landed_sensor, cursor=first.cursor)
    assert isinstance(quiet, SkipReason)
    assert "no model landed" in _skip_message(quiet)

    # Serving runs; then a memo hit lands the same model key again: serving already has it.
    assert small.run("serve_job").success
    assert small.run("train_job", "knn").success
    record = latest_record(small.instance, AssetKey("trained_model"), "knn")
    assert record is not None and record["memoized"] is True
    again = _result(small, model_landed_sensor, cursor=first.cursor)
    assert not again.run_requests
    assert "serving already has these models" in _skip_message(again)
    assert "knn" in _skip_message(again)
    assert again.cursor == str(_newest_model_storage_id(small))
    assert first.cursor is not None and int(again.cursor) > int(first.cursor)

    # A genuinely new model for one candidate does trigger serving.
    _set_params(small, "knn", {"n_neighbors": 5})
    assert small.run("train_job", "knn").success
    changed = _result(small, model_landed_sensor, cursor=again.cursor)
    assert len(changed.run_requests or []) == 1
    assert changed.run_requests is not None
    assert changed.run_requests[0].tags["ml_assets/landed"] == "knn"


# --- plan_training ----------------------------------------------------------------------------


def test_plan_without_dataset_lists_every_valid_candidate(small: Project) -> None:
    plan = _plan(small)
    assert plan.dataset_key is None
    assert sorted(c.name for c in plan.to_train) == NAMES


def _write_digits_csv(path: Path, rows: slice) -> None:
    load_digits_frame().iloc[rows].to_csv(path, index=False)


def test_data_change_replans_every_candidate(small: Project) -> None:
    source = small.root / "digits.csv"
    _write_digits_csv(source, slice(0, 1200))
    small.write_config(dataset={"source": "digits.csv"})
    _ingest(small)
    _train_all(small)
    first = _dataset_key(small)
    assert _plan(small).to_train == []

    _write_digits_csv(source, slice(597, 1797))  # same count, different records
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    _ingest(small)
    assert _dataset_key(small) != first
    plan = _plan(small)
    assert sorted(c.name for c in plan.to_train) == NAMES
    assert plan.up_to_date == []


def test_plan_does_not_revalidate_up_to_date_candidates(
    small: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model recorded under the current config hash proves the config valid; validating it
    again would import its library on every sensor tick."""
    _ingest(small)
    _train_all(small)
    checked: list[str] = []
    monkeypatch.setattr(
        "ml_assets.state.planning.validate_candidate", lambda name, *_: checked.append(name)
    )
    assert _plan(small).to_train == []
    assert checked == []
    _set_params(small, "knn", {"n_neighbors": 5})
    assert [c.name for c in _plan(small).to_train] == ["knn"]
    assert checked == ["knn"]


# --- runs in flight ---------------------------------------------------------------------------


def _add_run(
    project: Project, job: str, status: DagsterRunStatus, tags: dict[str, str] | None = None
) -> str:
    run = DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=status, tags=tags or {})
    project.instance.add_run(run)
    return run.run_id


def _dataset_tick(project: Project) -> RunRequest | SkipReason:
    context = build_sensor_context(instance=project.instance, resources=project.resources())
    result = dataset_sensor(context)
    assert isinstance(result, RunRequest | SkipReason)
    return result


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_dataset_sensor_waits_while_an_ingestion_is_in_flight(small: Project) -> None:
    alive = {PROCESS_TAG: process_tag()}
    run_id = _add_run(small, "ingest_job", DagsterRunStatus.STARTED, alive)
    waiting = _dataset_tick(small)
    assert isinstance(waiting, SkipReason)
    assert f"in progress (run {run_id[:8]})" in _skip_message(waiting)

    # The same run, but its process is gone (a killed `ml-assets run`): not in flight.
    small.instance.delete_run(run_id)
    _add_run(small, "ingest_job", DagsterRunStatus.STARTED, {PROCESS_TAG: process_tag(_dead_pid())})
    assert isinstance(_dataset_tick(small), RunRequest)


def test_candidates_sensor_holds_training_while_ingesting(small: Project) -> None:
    _ingest(small)
    run_id = _add_run(small, "ingest_job", DagsterRunStatus.NOT_STARTED)
    held = _result(small, candidates_sensor)
    assert held.run_requests == []
    assert _added(held) == NAMES  # partitions still follow the config
    assert "ingestion in progress" in _skip_message(held)
    small.instance.delete_run(run_id)
    assert _requested(_result(small, candidates_sensor)) == NAMES


def test_model_landed_leaves_new_models_to_a_starting_serving_run(small: Project) -> None:
    _ingest(small)
    _train_all(small)
    _add_run(small, "serve_job", DagsterRunStatus.STARTING)
    result = _result(small, model_landed_sensor)
    assert not result.run_requests
    assert "a queued serving run will take them" in _skip_message(result)
    assert result.cursor == str(_newest_model_storage_id(small))


def _damage_models(project: Project) -> None:
    for path in (project.store.root / "models").rglob("*"):
        if path.is_file() and not path.name.endswith(".entry.json"):
            path.write_bytes(b"garbage")


def test_a_damaged_model_is_requested_again_under_a_new_run_key(small: Project) -> None:
    """Dagster skips a run key it has seen: a key that stayed the same after the store lost the
    model would leave the candidate untrained forever (and `ml-assets run` waiting)."""
    assert small.run("ingest_job").success
    small.sync()
    first = {r.partition_key: r.run_key for r in _result(small, candidates_sensor).run_requests}
    assert sorted(first) == NAMES
    assert small.run("train_job", "knn").success
    assert "knn" not in {r.partition_key for r in _result(small, candidates_sensor).run_requests}

    _damage_models(small)
    second = {r.partition_key: r.run_key for r in _result(small, candidates_sensor).run_requests}
    assert "knn" in second and second["knn"] != first["knn"]
    assert second["stump"] == first["stump"]  # never landed: nothing changed for it

    retrained = small.run("train_job", "knn")
    assert retrained.success
    assert latest_record(small.instance, AssetKey("trained_model"), "knn")["memoized"] is False
    _damage_models(small)
    third = {r.partition_key: r.run_key for r in _result(small, candidates_sensor).run_requests}
    assert third["knn"] not in {first["knn"], second["knn"]}


def test_a_model_landing_during_a_tick_keeps_the_run_key_the_plan_saw(small: Project) -> None:
    """The run key comes from what the plan read: a model that lands between planning and
    asking (a slow tick) must not give a new key, or Dagster launches a second run for it."""
    assert small.run("ingest_job").success
    small.sync()
    plan = _plan(small)
    knn = load_settings(small.config_path).candidate("knn")
    assert plan.dataset_key is not None and plan.landed["knn"] == 0
    before = training_attempt(small.instance, knn, plan.dataset_key, plan.landed["knn"])
    assert small.run("train_job", "knn").success  # lands while the tick is still asking
    during = training_attempt(small.instance, knn, plan.dataset_key, plan.landed["knn"])
    assert during.run_key == before.run_key
    after = _plan(small)
    assert "knn" in after.up_to_date and after.landed["knn"] > 0


def test_a_canceled_training_run_is_requested_again_under_a_new_key(small: Project) -> None:
    """Dagster skips a run key it has seen, whatever that run's status: a canceled run must
    count as an attempt, or its candidate would never be requested again."""
    assert small.run("ingest_job").success
    small.sync()
    cfg = load_settings(small.config_path)
    knn = cfg.candidate("knn")
    dataset_key = latest_record(small.instance, AssetKey("ingested_dataset"))["dataset_key"]
    first = training_attempt(small.instance, knn, dataset_key, 0)
    small.instance.add_run(
        DagsterRun(
            job_name="train_job",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.CANCELED,
            tags={ATTEMPT_TAG: first.group, "dagster/partition": "knn"},
        )
    )
    second = training_attempt(small.instance, knn, dataset_key, 0)
    assert second.failures == 1 and second.run_key != first.run_key
    assert not second.given_up(cfg.retries.max_retries)


def test_a_training_failure_after_the_selection_is_selected_again_with_its_reason(
    small: Project,
) -> None:
    """A candidate that fails after the latest selection must not stay 'running' in the
    leaderboard: model_landed_sensor asks for a new selection, which says why it failed."""
    assert small.run("ingest_job").success
    assert all(small.train_all().values())
    assert small.run("serve_job").success
    newest = small.instance.fetch_materializations(AssetKey("trained_model"), limit=1).records
    cursor = str(newest[0].storage_id)
    assert "no model landed" in _skip_message(_tick(small, model_landed_sensor, cursor))

    broken = [dict(c) for c in CANDIDATES]
    broken[0] = {**broken[0], "params": {"n_neighbors": -1}}
    small.write_config(candidates=broken)
    assert not small.run("train_job", "knn").success
    requests = _result(small, model_landed_sensor, cursor).run_requests
    assert len(requests) == 1
    assert small.run("serve_job").success
    board = latest_record(small.instance, AssetKey("model_selection"))["leaderboard"]
    assert "retraining failed" in board and "n_neighbors" in board
    assert "no model landed" in _skip_message(_tick(small, model_landed_sensor, cursor))


def test_the_latest_model_of_every_candidate_in_one_read_matches_one_by_one(
    small: Project,
) -> None:
    """`latest_records` (two queries for every candidate) agrees with `latest_record` per
    candidate: the newest of several materializations, and nothing for one never trained."""
    assert small.run("ingest_job").success
    small.sync()
    names = [c["name"] for c in small.config["candidates"]]
    trained, never = names[:-1], names[-1]
    for name in [*trained, trained[0]]:  # the first one twice: its newer landing counts
        assert small.run("train_job", name, tags={FORCE_TAG: name}).success
    together = latest_records(small.instance, AssetKey("trained_model"), names)
    assert set(together) == set(trained) and never not in together
    for name in trained:
        alone = latest_record(small.instance, AssetKey("trained_model"), name)
        assert alone is not None and together[name] == alone
    assert together[trained[0]].storage_id > min(r.storage_id for r in together.values())


def test_the_latest_run_of_every_candidate_in_pages(
    small: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leaderboard reads each partition's latest run with a few queries, paging newest
    first until every candidate has one (or there are no more runs)."""
    from ml_assets.state import leaderboard as board

    monkeypatch.setattr(board, "_RUNS_PAGE", 2)
    ids: dict[str, list[str]] = {}
    for name in ["a", "b", "a", "a", "a", "c", "a"]:  # b's only run is old: several pages back
        run_id = str(uuid.uuid4())
        small.instance.add_run(
            DagsterRun(job_name="train_job", run_id=run_id, tags={"dagster/partition": name})
        )
        ids.setdefault(name, []).append(run_id)
    latest = board._latest_runs(small.instance, ["a", "b", "c", "never"])
    assert {name: run.run_id for name, run in latest.items()} == {
        name: runs[-1] for name, runs in ids.items()
    }
