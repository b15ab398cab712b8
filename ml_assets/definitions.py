"""The one `Definitions` object: workspace.yaml and `[tool.dagster]` point here."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from ml_assets.assets.ingestion import ingested_dataset
from ml_assets.assets.selection import model_selection
from ml_assets.assets.serving import build_aggregation_asset, build_prediction_asset, prediction_key
from ml_assets.assets.training import trained_model
from ml_assets.checks import (
    build_prediction_checks,
    dataset_schema_and_rows,
    selected_models_meet_bar,
)
from ml_assets.config import ConfigError, load_settings
from ml_assets.jobs import ingest_job, serve_job, train_job
from ml_assets.resources import ArtifactStoreResource, SettingsResource


def serving_ranks() -> int:
    """How many serving steps to build: `selection.top_k` from the config (2 if unreadable)."""
    try:
        return load_settings().selection.top_k
    except ConfigError:
        return 2


def build_definitions(ranks: int, resources: dict[str, object] | None = None) -> Definitions:
    """The graph with `ranks` serving steps; tests pass their own resources."""
    predictions = [build_prediction_asset(r) for r in range(1, ranks + 1)]
    aggregated = build_aggregation_asset(ranks)
    checks = build_prediction_checks(
        [*(prediction_key(r) for r in range(1, ranks + 1)), aggregated.key]
    )
    return Definitions(
        assets=[ingested_dataset, trained_model, model_selection, *predictions, aggregated],
        asset_checks=[dataset_schema_and_rows, selected_models_meet_bar, *checks],
        jobs=[ingest_job, train_job, serve_job],
        resources=resources or {"settings": SettingsResource(), "store": ArtifactStoreResource()},
        executor=in_process_executor,
    )


defs = build_definitions(serving_ranks())
