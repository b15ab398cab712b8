"""In-process Dagster tests of the asset graph on a temporary instance and store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey

from ml_assets.core.config import Settings, load_settings
from ml_assets.definitions import build_definitions, defs
from ml_assets.ml.synthetic import write_videos
from ml_assets.state.leaderboard import leaderboard
from ml_assets.state.records import latest_record
from ml_assets_tests.conftest import Project

SERVING_ASSETS = [
    "model_selection",
    "predictions_rank_1",
    "predictions_rank_2",
    "aggregated_predictions",
]


def _record(project: Project, key: str, partition: str | None = None):  # type: ignore[no-untyped-def]
    record = latest_record(project.instance, AssetKey(key), partition)
    assert record is not None, f"{key}[{partition}] was not materialized"
    return record


def _failure_message(result) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(
        e.step_failure_data.error.message
        for e in result.get_step_failure_events()
        if e.step_failure_data.error
    )


def test_definitions_load_and_resolve_everything() -> None:
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"ingested_dataset", "trained_model", *SERVING_ASSETS} <= keys
    assert {job.name for job in defs.resolve_all_job_defs()} >= {
        "ingest_job",
        "train_job",
        "serve_job",
        "batch_job",
    }
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"dataset_schema_and_rows", "selected_models_meet_bar", "predictions_complete"} <= checks
    defs.validate_loadable(defs)
    three = Settings(selection={"top_k": 3}, candidates=[{"name": "a", "model": "knn"}])
    # One more serving step for the held-out requests, and one more for the request batches.
    assert len(build_definitions(three).resolve_all_asset_keys()) == len(keys) + 2
    assert {s.name for s in defs.sensors} == {
        "dataset_sensor",
        "candidates_sensor",
        "model_landed_sensor",
        "dead_runs_sensor",
        "request_batches_sensor",
    }
    assert {s.name for s in defs.schedules} == {"refresh_schedule", "cache_gc_schedule"}


def test_digits_selects_two_models_above_the_bar(project: Project) -> None:
    result = project.workflow()
    assert result.success, _failure_message(result)
    selection = _record(project, "model_selection")
    assert len(selection["selected"]) == 2
    for name in selection["selected"]:
        assert _record(project, "trained_model", name)["score"] >= 0.90
    assert "stump" not in selection["selected"]
    assert "| stump | landed |" in selection["leaderboard"]
    aggregated = _record(project, "aggregated_predictions")
    assert aggregated["models"] == selection["selected"]
    assert aggregated["ensemble_score"] >= 0.90
    frame = pd.read_parquet(aggregated["path"])
    assert len(frame) == aggregated["rows"] == _record(project, "ingested_dataset")["rows_requests"]
    assert frame["top_entity"].isin([str(d) for d in range(10)]).all()
    assert all(len(tags) == 1 for tags in frame["tags"])
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)


def test_training_metadata_records_what_a_person_needs(project: Project) -> None:
    assert project.run("ingest_job").success
    project.sync()
    assert project.run("train_job", "lightgbm_small").success
    record = _record(project, "trained_model", "lightgbm_small")
    for name in ("score", "macro_f1", "training_seconds", "rows", "params", "digest", "model_key"):
        assert name in record.metadata
    assert record["params"]["n_estimators"] == 40
    model_dir = Path(record["path"])
    assert (model_dir / "lightgbm_0.txt").read_text().startswith("tree")
    assert record.data_version == record["model_key"]


def test_multilabel_fixture_runs_end_to_end(project: Project, tmp_path: Path) -> None:
    source = write_videos(
        tmp_path / "videos.parquet", rows=600, entities=6, rgb_dims=16, audio_dims=8
    )
    project.write_config(
        dataset={"source": str(source), "label": "tags", "id": "video_id"},
        selection={"top_k": 2, "min_score": 0.5},
        candidates=[
            {"name": "audio_lr", "model": "logistic_regression", "features": ["mean_audio_*"]},
            {"name": "visual_lr", "model": "logistic_regression", "features": ["mean_rgb_*"]},
        ],
    )
    result = project.workflow()
    assert result.success, _failure_message(result)
    assert _record(project, "ingested_dataset")["task"] == "multilabel"
    aggregated = _record(project, "aggregated_predictions")
    coverage = aggregated["entity_coverage"]
    assert coverage["ensemble"] >= max(coverage["audio_lr"], coverage["visual_lr"])
    frame = pd.read_parquet(aggregated["path"])
    assert frame["request_id"].str.startswith("vid_").all()
    assert "micro_f1" in _record(project, "trained_model", "audio_lr").metadata


def test_partial_fan_in_lists_missing_and_failed(project: Project) -> None:
    candidates = [
        *project.config["candidates"][:3],
        {"name": "broken", "model": "knn", "params": {"n_neighbours": 3}},
        {"name": "never_ran", "model": "gaussian_nb"},
    ]
    project.write_config(candidates=candidates)
    project.sync()
    assert project.run("ingest_job").success
    for name in ("lightgbm_small", "logistic_regression", "knn"):
        assert project.run("train_job", name).success
    failed = project.run("train_job", "broken")
    assert not failed.success
    assert "'broken'" in _failure_message(failed) and "n_neighbors" in _failure_message(failed)
    result = project.run("serve_job")
    assert result.success, _failure_message(result)
    selection = _record(project, "model_selection")
    assert selection["candidates_failed"] == 1 and selection["candidates_missing"] == 1
    assert "| broken | failed |" in selection["leaderboard"]
    assert "| never_ran | missing |" in selection["leaderboard"]


def test_unknown_model_type_fails_only_its_partition(project: Project) -> None:
    project.write_config(
        candidates=[*project.config["candidates"][:2], {"name": "mystery", "model": "xgboost"}]
    )
    assert project.run("ingest_job").success
    outcomes = project.train_all()
    assert outcomes == {"lightgbm_small": True, "logistic_regression": True, "mystery": False}
    message = _failure_message(project.run("train_job", "mystery"))
    assert "'mystery'" in message and "unknown model type 'xgboost'" in message


def test_nobody_meets_the_bar_fails_with_every_score(project: Project) -> None:
    project.write_config(
        selection={"min_score": 0.999}, candidates=project.config["candidates"][:2]
    )
    assert project.run("ingest_job").success
    project.train_all()
    result = project.run("serve_job")
    assert not result.success
    message = _failure_message(result)
    assert "0.999" in message
    for name in ("lightgbm_small", "logistic_regression"):
        assert name in message
    assert latest_record(project.instance, AssetKey("aggregated_predictions")) is None


def test_one_qualifier_serves_one_model(project: Project) -> None:
    project.write_config(
        candidates=[project.config["candidates"][1], project.config["candidates"][4]]
    )
    result = project.workflow()
    assert result.success, _failure_message(result)
    assert _record(project, "predictions_rank_2")["candidate"] == "none"
    assert _record(project, "aggregated_predictions")["models"] == ["logistic_regression"]


def test_tampered_model_is_refused(project: Project) -> None:
    project.write_config(candidates=project.config["candidates"][1:3])
    assert project.workflow().success
    selection = _record(project, "model_selection")
    victim = _record(project, "trained_model", selection["selected"][0])
    model_file = next(
        p for p in Path(victim["path"]).iterdir() if p.name.startswith("model.joblib")
    )
    model_file.write_bytes(model_file.read_bytes()[:-10] + b"0123456789")
    project.store.path("predictions", _record(project, "predictions_rank_1")["predictions_key"])
    # Serving must reload the model: drop the cached predictions so rank 1 is recomputed.
    import shutil

    shutil.rmtree(_record(project, "predictions_rank_1")["path"])
    # Only the serving step: a fresh selection would pass over the broken model (see
    # test_faults_storage.py); here the model was damaged after it was selected.
    result = (
        project.defs()
        .resolve_job_def("serve_job")
        .execute_in_process(
            instance=project.instance,
            asset_selection=[AssetKey("predictions_rank_1")],
            raise_on_error=False,
        )
    )
    assert not result.success
    message = _failure_message(result)
    assert selection["selected"][0] in message and "SHA-256" in message


def test_materializing_twice_is_idempotent(project: Project) -> None:
    assert project.run("ingest_job").success
    first = _record(project, "ingested_dataset")
    assert project.run("ingest_job").success
    second = _record(project, "ingested_dataset")
    assert first["dataset_key"] == second["dataset_key"] and first["digest"] == second["digest"]
    assert len(list((project.root / "store" / "datasets").glob("*/MANIFEST.json"))) == 1


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ({"source": "missing.csv"}, "file not found"),
        ({"source": "data/*.parquet"}, "no file matches"),
        ({"source": "sklearn_digits", "label": "digit"}, "label column 'digit'"),
    ],
)
def test_bad_source_fails_ingestion_clearly(
    project: Project, dataset: dict[str, str], expected: str
) -> None:
    project.write_config(dataset=dataset)
    result = project.run("ingest_job")
    assert not result.success
    assert expected in _failure_message(result)


def test_an_invalid_edit_of_a_trained_candidate_is_a_user_error_not_a_wait(
    project: Project,
) -> None:
    """No run retrains a candidate whose new config is invalid: the leaderboard says why, as a
    user error (so `ml-assets run` exits with 2), instead of showing it stale as if pending."""
    project.write_config(candidates=[{"name": "nb", "model": "gaussian_nb"}])
    assert project.run("ingest_job").success
    assert project.train_all() == {"nb": True}
    project.write_config(
        candidates=[{"name": "nb", "model": "gaussian_nb", "params": {"var_smoothin": 1e-9}}]
    )
    dataset_key = _record(project, "ingested_dataset")["dataset_key"]
    settings = load_settings(project.config_path)
    (entry,) = leaderboard(project.instance, settings, dataset_key, project.store)
    assert entry.status == "stale" and entry.user_error
    assert "the new config is invalid" in entry.note and "'var_smoothin'" in entry.note
