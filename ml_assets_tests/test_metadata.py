"""What the Dagster UI shows on materializations: `memoized` and `reason` everywhere, timestamps
as timestamps, display numbers rounded, a one-line description on every asset."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, TimestampMetadataValue

from ml_assets.core.reingest import IngestionState
from ml_assets.state.records import Record, latest_record
from ml_assets.storage.artifacts import read_training_meta
from ml_assets_tests.conftest import Project, write_csv_source

T0 = 1_800_000_000.0
DAY = 86_400.0
SERVING = ["model_selection", "predictions_rank_1", "predictions_rank_2", "aggregated_predictions"]


def _record(project: Project, key: str, partition: str | None = None) -> Record:
    record = latest_record(project.instance, AssetKey(key), partition)
    assert record is not None, f"{key}[{partition}] was not materialized"
    return record


def _raw_metadata(project: Project, key: str) -> dict[str, Any]:
    """The latest materialization's metadata as stored: `MetadataValue`s, not plain values."""
    records = project.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key)), limit=1
    ).records
    assert records and records[0].asset_materialization is not None
    return dict(records[0].asset_materialization.metadata)


def _small_project(project: Project, candidates: list[str] | None = None) -> None:
    write_csv_source(project.root / "data.csv", 300)
    models = {"lr": "logistic_regression", "nb": "gaussian_nb"}
    project.write_config(
        dataset={"source": "data.csv"},
        selection={"min_score": 0.5},
        candidates=[{"name": n, "model": models[n]} for n in candidates or list(models)],
    )


def _says(record: Record, memoized: bool, *phrases: str) -> None:
    assert record["memoized"] is memoized, record.metadata
    reason = record["reason"]
    assert isinstance(reason, str) and reason and "\n" not in reason
    for phrase in phrases:
        assert phrase in reason, reason


def test_serving_assets_say_whether_they_were_memoized_and_why(project: Project) -> None:
    _small_project(project)
    assert project.workflow().success
    _says(_record(project, "model_selection"), False, "selected from 2 landed candidates")
    for rank in (1, 2):
        _says(_record(project, f"predictions_rank_{rank}"), False, "computed")
    _says(_record(project, "aggregated_predictions"), False, "2 selected model")

    first = {key: _record(project, key) for key in SERVING}
    assert project.run("serve_job").success
    again = {key: _record(project, key) for key in SERVING}
    _says(again["model_selection"], True, "memo hit", first["model_selection"]["selection_key"])
    for rank in (1, 2):
        _says(again[f"predictions_rank_{rank}"], True, "memo hit")
    _says(again["aggregated_predictions"], True, "memo hit")
    for key in SERVING:  # a memo hit reuses the stored artifact as it is
        assert again[key]["digest"] == first[key]["digest"]
        assert again[key].data_version == first[key].data_version

    aggregated_key = first["aggregated_predictions"]["aggregated_key"]
    shutil.rmtree(project.store.path("aggregated", aggregated_key))  # now misses
    shutil.rmtree(project.store.path("selections", first["model_selection"]["selection_key"]))
    assert project.run("serve_job").success
    _says(_record(project, "model_selection"), False, "selected from 2 landed candidates")
    _says(_record(project, "aggregated_predictions"), False, "2 selected model")
    assert project.store.present("aggregated", aggregated_key), "a miss writes it again"


def test_a_rank_without_a_model_says_so(project: Project) -> None:
    _small_project(project, ["lr"])
    assert project.workflow().success
    _says(_record(project, "predictions_rank_1"), False, "computed")
    empty = _record(project, "predictions_rank_2")
    assert empty["candidate"] == "none"
    _says(empty, False, "1 model", "rank 2 serves none")


def test_trained_model_gives_the_reason_of_each_path(project: Project) -> None:
    _small_project(project)
    assert project.run("ingest_job").success
    project.sync()
    assert project.run("train_job", "nb").success
    first = _record(project, "trained_model", "nb")
    _says(first, False, "trained: no cached model for this memo key")

    assert project.run("train_job", "nb").success
    _says(_record(project, "trained_model", "nb"), True, f"memo hit: model {first['model_key']}")

    assert project.run("train_job", "nb", tags={"ml_assets/force": "nb"}).success
    _says(_record(project, "trained_model", "nb"), False, "forced by the ml_assets/force tag")

    model_file = Path(first["path"]) / "model.joblib"
    model_file.write_bytes(model_file.read_bytes()[:100])
    assert project.run("train_job", "nb").success
    _says(_record(project, "trained_model", "nb"), False, "cached model unusable (", "SHA-256")


def test_epoch_times_are_timestamps_and_still_read_back_as_floats(project: Project) -> None:
    _small_project(project)
    project.now = T0
    assert project.workflow().success
    for key, name in (
        ("ingested_dataset", "state_ingested_at"),
        ("aggregated_predictions", "landed_at"),
    ):
        value = _raw_metadata(project, key)[name]
        assert isinstance(value, TimestampMetadataValue), (key, name, value)
    assert _raw_metadata(project, "ingested_dataset")["state_ingested_at"].value == T0
    assert isinstance(_record(project, "aggregated_predictions")["landed_at"], float)

    # Memoization reads the state back, from plain values or from the stored metadata values.
    state = IngestionState.from_metadata(_record(project, "ingested_dataset").metadata)
    assert state is not None and state.ingested_at == T0
    assert IngestionState.from_metadata(_raw_metadata(project, "ingested_dataset")) == state

    project.now = T0 + 2 * DAY
    assert project.run("ingest_job").success
    reused = _record(project, "ingested_dataset")
    assert reused["memoized"] is True and reused["state_ingested_at"] == T0
    carried = _raw_metadata(project, "ingested_dataset")["state_ingested_at"]
    assert isinstance(carried, TimestampMetadataValue) and carried.value == T0

    project.now = T0 + 20 * DAY  # the window still counts from T0: expired
    assert project.run("ingest_job").success
    assert _record(project, "ingested_dataset")["memoized"] is False


def _decimals_at_most(value: Any, digits: int) -> bool:
    return isinstance(value, float) and round(value, digits) == value


def test_display_numbers_are_rounded_and_the_model_keeps_full_precision(
    project: Project,
) -> None:
    _small_project(project)
    assert project.workflow().success
    for name in ("lr", "nb"):
        record = _record(project, "trained_model", name)
        for field in ("score", "hit_at_1", "macro_f1"):
            assert _decimals_at_most(record[field], 4), (name, field, record[field])
        assert _decimals_at_most(record["training_seconds"], 3), record["training_seconds"]
        model = project.store.verify("models", record["model_key"], record["digest"])
        training = read_training_meta(model)
        assert round(training["score"], 4) == record["score"]
        assert round(training["training_seconds"], 3) == record["training_seconds"]
        # The artifact keeps the measured duration, not the displayed one.
        assert training["training_seconds"] != record["training_seconds"]

    assert _decimals_at_most(_record(project, "model_selection")["top_score"], 4)
    for rank in (1, 2):
        assert _decimals_at_most(_record(project, f"predictions_rank_{rank}")["seconds"], 3)
    aggregated = _record(project, "aggregated_predictions")
    for field in ("ensemble_score", "ensemble_macro_f1", "best_single_score"):
        assert _decimals_at_most(aggregated[field], 4), (field, aggregated[field])
    assert aggregated["model_scores"] and all(
        _decimals_at_most(v, 4)
        for scores in aggregated["model_scores"].values()
        for v in scores.values()
    )
    assert set(aggregated["model_scores"]["lr"]) == {"hit@1", "gap@20", "perr", "map"}
    assert aggregated["best_single_score"] == max(
        scores["hit@1"] for scores in aggregated["model_scores"].values()
    )
    since = aggregated.get("seconds_since_training_started")
    assert since is None or _decimals_at_most(since, 3)


def test_every_asset_has_a_one_line_description(project: Project) -> None:
    specs = project.defs().resolve_all_asset_specs()
    keys = {spec.key.to_user_string() for spec in specs}
    assert {"raw_dataset", "ingested_dataset", "trained_model", *SERVING} <= keys
    assert {"serving_requests", "batch_aggregated_predictions"} <= keys
    for spec in specs:
        description = spec.description or ""
        assert description.strip() and "\n" not in description.strip(), spec.key
    predictions = {s.key.to_user_string(): s.description for s in specs}
    assert "rank 2" in (predictions["predictions_rank_2"] or "")
