"""Request batches: files dropped in `serving.requests`, scored by the current selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    DagsterRunStatus,
    DeleteDynamicPartitionsRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from ml_assets.core.names import BATCH_PARTITIONS
from ml_assets.defs.sensors import request_batches_sensor
from ml_assets.ml.datasets import write_parquet
from ml_assets.state.records import latest_record
from ml_assets.storage.artifacts import read_dataset_part
from ml_assets_tests.conftest import FAST_CANDIDATES, Project


@pytest.fixture
def batches(project: Project) -> Project:
    project.write_config(candidates=FAST_CANDIDATES[:3], serving={"requests": "requests/*"})
    (project.root / "requests").mkdir()
    return project


def _tick(project: Project) -> SensorResult | SkipReason:
    context = build_sensor_context(instance=project.instance, resources=project.resources())
    result = request_batches_sensor(context)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def _apply(project: Project, result: SensorResult) -> list[Any]:
    """What the daemon does with a tick: change the partitions, launch the runs (in-process)."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                project.instance.delete_dynamic_partition(BATCH_PARTITIONS, key)
        else:
            project.instance.add_dynamic_partitions(BATCH_PARTITIONS, list(request.partition_keys))
    return [
        project.run("batch_job", request.partition_key, tags=request.tags)
        for request in result.run_requests or []
    ]


def _held_out(project: Project) -> pd.DataFrame:
    """The serving requests of the held-out split, as a user's batch file would hold them."""
    record = latest_record(project.instance, AssetKey("ingested_dataset"))
    assert record is not None
    data = project.store.verify("datasets", record["dataset_key"], record["digest"])
    return read_dataset_part(data, "requests").X


def _answer(project: Project, batch: str) -> pd.DataFrame:
    record = latest_record(project.instance, AssetKey("batch_aggregated_predictions"), batch)
    assert record is not None, batch
    return pd.read_parquet(record["path"])


def test_batches_are_scored_like_the_held_out_requests(batches: Project) -> None:
    requests = _held_out_after_workflow(batches)
    write_parquet(requests.iloc[:100], batches.root / "requests" / "morning.parquet")
    requests.iloc[100:].to_csv(batches.root / "requests" / "evening.csv", index=False)
    result = _tick(batches)
    assert isinstance(result, SensorResult)
    assert sorted(r.partition_key or "" for r in result.run_requests or []) == [
        "evening.csv",
        "morning.parquet",
    ]
    assert all(run.success for run in _apply(batches, result))

    # Same models, same records: the batches' answers are the held-out aggregated predictions.
    held_out = latest_record(batches.instance, AssetKey("aggregated_predictions"))
    assert held_out is not None
    expected = pd.read_parquet(held_out["path"])
    answers = pd.concat([_answer(batches, "morning.parquet"), _answer(batches, "evening.csv")])
    assert list(answers["top_entity"]) == list(expected["top_entity"])
    assert [list(t) for t in answers["tags"]] == [list(t) for t in expected["tags"]]
    scores = [c for c in expected.columns if c.startswith("score:")]
    # Scored in batches of another size: BLAS may round the last digits differently.
    np.testing.assert_allclose(answers[scores].to_numpy(), expected[scores].to_numpy(), atol=1e-6)
    assert list(answers["request_id"][:2]) == ["morning:0", "morning:1"]

    # Nothing changed: the next tick asks for nothing.
    again = _tick(batches)
    assert isinstance(again, SensorResult) and not again.run_requests
    assert "every batch (2) is answered by the current selection" in (
        again.skip_reason.skip_message or ""
    )
    # A rewritten file is read and answered again.
    write_parquet(requests.iloc[:10], batches.root / "requests" / "morning.parquet")
    changed = _tick(batches)
    assert isinstance(changed, SensorResult)
    assert [r.partition_key for r in changed.run_requests or []] == ["morning.parquet"]
    assert all(run.success for run in _apply(batches, changed))
    assert len(_answer(batches, "morning.parquet")) == 10
    # A removed file's batch goes.
    (batches.root / "requests" / "evening.csv").unlink()
    removed = _tick(batches)
    assert isinstance(removed, SensorResult)
    (request,) = removed.dynamic_partitions_requests or []
    assert isinstance(request, DeleteDynamicPartitionsRequest)
    assert list(request.partition_keys) == ["evening.csv"]


def _held_out_after_workflow(project: Project) -> pd.DataFrame:
    assert project.workflow().success
    return _held_out(project)


def test_a_new_selection_scores_every_batch_again(batches: Project) -> None:
    requests = _held_out_after_workflow(batches)
    write_parquet(requests.iloc[:20], batches.root / "requests" / "a.parquet")
    first = _tick(batches)
    assert isinstance(first, SensorResult)
    _apply(batches, first)
    before = latest_record(batches.instance, AssetKey("batch_aggregated_predictions"), "a.parquet")
    assert before is not None

    batches.write_config(selection={"top_k": 1})
    assert batches.run("serve_job").success
    second = _tick(batches)
    assert isinstance(second, SensorResult)
    (run,) = second.run_requests or []
    assert run.run_key not in {r.run_key for r in first.run_requests or []}
    assert all(r.success for r in _apply(batches, second))
    after = latest_record(batches.instance, AssetKey("batch_aggregated_predictions"), "a.parquet")
    assert after is not None
    assert after["selection_key"] != before["selection_key"]
    assert len(after["models"]) == 1


def test_a_batch_missing_features_fails_alone_naming_the_columns(batches: Project) -> None:
    requests = _held_out_after_workflow(batches)
    write_parquet(requests.iloc[:10], batches.root / "requests" / "good.parquet")
    requests.iloc[:10].drop(columns=["pixel_0_3", "pixel_7_7"]).to_csv(
        batches.root / "requests" / "bad.csv", index=False
    )
    result = _tick(batches)
    assert isinstance(result, SensorResult)
    runs = {r.partition_key: r for r in result.run_requests or []}
    outcomes = {
        key: batches.run("batch_job", key, tags=runs[key].tags)
        for key in runs
        if not batches.instance.add_dynamic_partitions(BATCH_PARTITIONS, [str(key)])
    }
    assert outcomes["good.parquet"].success
    bad = outcomes["bad.csv"]
    assert not bad.success
    assert bad.dagster_run.status == DagsterRunStatus.FAILURE
    failure = next(e for e in bad.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "bad.csv: missing feature column(s) ['pixel_0_3', 'pixel_7_7']" in message


def test_before_any_selection_batches_wait(batches: Project) -> None:
    assert batches.run("ingest_job").success
    write_parquet(pd.DataFrame({"pixel_0_0": [0.0]}), batches.root / "requests" / "early.parquet")
    result = _tick(batches)
    assert isinstance(result, SensorResult)
    assert not result.run_requests
    assert "waiting for the first model selection" in (result.skip_reason.skip_message or "")
    (request,) = result.dynamic_partitions_requests or []
    assert list(request.partition_keys) == ["early.parquet"]


def test_no_requests_configured_is_a_skip(project: Project) -> None:
    result = _tick(project)
    assert isinstance(result, SkipReason)
    assert "serving.requests is not set" in (result.skip_message or "")


def test_gc_keeps_every_batch_s_latest_requests_and_answers(batches: Project) -> None:
    from ml_assets.core.config import load_settings
    from ml_assets.state.retention import protected_entries

    requests = _held_out_after_workflow(batches)
    write_parquet(requests.iloc[:5], batches.root / "requests" / "kept.parquet")
    result = _tick(batches)
    assert isinstance(result, SensorResult)
    _apply(batches, result)
    keep = protected_entries(batches.instance, load_settings(batches.config_path), batches.store)
    answer = latest_record(
        batches.instance, AssetKey("batch_aggregated_predictions"), "kept.parquet"
    )
    stored = latest_record(batches.instance, AssetKey("serving_requests"), "kept.parquet")
    assert answer is not None and stored is not None
    assert ("aggregated", answer["aggregated_key"]) in keep
    assert ("requests", stored["requests_key"]) in keep
