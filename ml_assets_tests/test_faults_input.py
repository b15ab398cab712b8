"""Fault family: bad input. A source that changes while it is ingested, configurations under
which no candidate succeeds, hostile names and paths, bad data, and retries of transient
versus deterministic errors (docs/RELIABILITY.md, rows 5-8)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterRunStatus

from ml_assets.core.config import ConfigError, load_settings
from ml_assets.core.reingest import fingerprint_source
from ml_assets.ml.datasets import Dataset
from ml_assets.state.records import latest_record
from ml_assets_tests.conftest import Project, write_csv_source
from ml_assets_tests.faults import (
    FAST,
    _assert_serving_intact,
    _message,
    _record,
    _small,
    _snapshot,
    _write_config,
)


def _retries(result: Any) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


# --- 5. a source that changes during ingestion ---------------------------------------------


def _change_source_during_first_read(monkeypatch: pytest.MonkeyPatch, source: Path) -> list[int]:
    """The first read of the source is followed by a writer replacing it (330 rows)."""
    import ml_assets.defs.assets.ingestion as ingestion

    real_load = ingestion.load_dataset
    reads: list[int] = []

    def load(*args: Any, **kwargs: Any) -> tuple[Dataset, dict[str, int]]:
        loaded = real_load(*args, **kwargs)
        reads.append(len(loaded[0]))
        if len(reads) == 1:
            write_csv_source(source, 330, seed=1)
        return loaded

    monkeypatch.setattr(ingestion, "load_dataset", load)
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
    import ml_assets.defs.assets.training as training

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
