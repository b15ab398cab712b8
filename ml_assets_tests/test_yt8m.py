"""The workflow on YouTube-8M-shaped TFRecord shards with a vocabulary, ranked by GAP@20."""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey

from ml_assets.core.config import load_settings
from ml_assets.core.reingest import ingestion_decision
from ml_assets.ml.synthetic import write_video_shards, write_vocabulary
from ml_assets.state.records import latest_record
from ml_assets_tests.conftest import Project

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="TFRecord sources need the tfrecords package (Linux wheels)"
)

ENTITIES = 10
CANDIDATES: list[dict[str, Any]] = [
    {"name": "audio_lr", "model": "logistic_regression", "features": ["mean_audio_*"]},
    {"name": "visual_lr", "model": "logistic_regression", "features": ["mean_rgb_*"]},
    {"name": "all_nb", "model": "gaussian_nb"},
]


def _record(project: Project, asset: str, partition: str | None = None) -> Any:
    record = latest_record(project.instance, AssetKey(asset), partition)
    assert record is not None, asset
    return record


@pytest.fixture
def videos(project: Project) -> Project:
    data = project.root / "data"
    write_video_shards(data, 900, ENTITIES, shards=3, rgb_dims=24, audio_dims=12)
    write_vocabulary(data / "vocabulary.csv", ENTITIES)
    project.write_config(
        dataset={
            "source": "data/train*.tfrecord",
            "label": "labels",
            "id": "id",
            "vocabulary": "data/vocabulary.csv",
        },
        selection={"metric": "gap@20", "min_score": 0.3, "top_k": 2, "strategy": "ensemble"},
        serving={"tag_threshold": 0.3},
        candidates=CANDIDATES,
    )
    return project


def test_tfrecord_shards_ranked_by_gap_with_entity_names(videos: Project) -> None:
    assert videos.workflow().success
    names = pd.read_csv(videos.root / "data" / "vocabulary.csv")["Name"].tolist()

    dataset = _record(videos, "ingested_dataset")
    assert (dataset["records"], dataset["entities"], dataset["task"]) == (
        900,
        ENTITIES,
        "multilabel",
    )
    assert dataset["features"] == 36

    # Every candidate carries all four metrics; the leaderboard ranks by GAP@20.
    for candidate in CANDIDATES:
        model = _record(videos, "trained_model", candidate["name"])
        assert model["metric"] == "gap@20"
        assert model["score"] == model["gap_at_20"]
        assert {"hit_at_1", "gap_at_20", "perr", "map"} <= set(model.metadata)

    selection = _record(videos, "model_selection")
    assert selection["metric"] == "gap@20"
    assert selection["strategy"] == "ensemble"
    table = selection["leaderboard"]
    assert "| gap@20 |" in table.splitlines()[0] and "yes: " in table
    assert len(selection["selected"]) == len(selection["weights"]) >= 1
    assert selection["validation_ensemble_score"] >= selection["validation_top_k_score"]

    # Predictions speak the vocabulary's entity names.
    aggregated = _record(videos, "aggregated_predictions")
    frame = pd.read_parquet(aggregated["path"])
    assert [c for c in frame.columns if c.startswith("score:")] == [f"score:{n}" for n in names]
    assert {tag for tags in frame["tags"] for tag in tags} <= set(names)
    assert set(frame["top_entity"]) <= set(names)
    covered = aggregated["entities_covered"]
    assert set(covered) == {*selection["selected"], "ensemble"}
    assert set(covered["ensemble"]) <= set(names)
    assert all(set(covered[m]) <= set(covered["ensemble"]) for m in selection["selected"])
    assert aggregated["entity_coverage"]["ensemble"] == len(covered["ensemble"])
    assert aggregated["metric"] == "gap@20"
    assert aggregated["ensemble_score"] == aggregated["ensemble_gap_at_20"]


def test_a_vocabulary_edit_reingests_and_renames(videos: Project) -> None:
    assert videos.run("ingest_job").success
    first = _record(videos, "ingested_dataset")
    settings = load_settings(videos.config_path)
    vocabulary = videos.root / "data" / "vocabulary.csv"
    frame = pd.read_csv(vocabulary)
    frame.loc[0, "Name"] = "Renamed entity"
    frame.to_csv(vocabulary, index=False)

    from ml_assets.core.reingest import IngestionState

    state = IngestionState.from_metadata(first.metadata)
    decision, _ = ingestion_decision(
        settings, videos.root, state, now=state.ingested_at if state else 0
    )
    assert decision.run and decision.reason == "source content changed"
    assert videos.run("ingest_job").success
    second = _record(videos, "ingested_dataset")
    assert second["dataset_key"] != first["dataset_key"]
    info = videos.store.verify("datasets", second["dataset_key"], second["digest"])
    assert "Renamed entity" in (info.path / "dataset.json").read_text()
