"""The one `Definitions` object: workspace.yaml and `[tool.dagster]` point here."""

from collections.abc import Mapping

from dagster import AssetSpec, Definitions, in_process_executor

from ml_assets.assets.ingestion import freshness_policy, ingested_dataset, raw_dataset
from ml_assets.assets.selection import model_selection
from ml_assets.assets.serving import build_aggregation_asset, build_prediction_asset, prediction_key
from ml_assets.assets.training import trained_model
from ml_assets.checks import (
    build_prediction_checks,
    dataset_schema_and_rows,
    selected_models_meet_bar,
)
from ml_assets.config import ConfigError, Settings, load_settings
from ml_assets.gc import cache_gc_job
from ml_assets.jobs import build_jobs
from ml_assets.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.schedules import build_schedules
from ml_assets.sensors import (
    candidates_sensor,
    dataset_sensor,
    dead_runs_sensor,
    model_landed_sensor,
)


def _settings_for_shape(settings: Settings | None) -> Settings:
    """Shape-deciding settings (top_k, freshness, crons); defaults if the file is unreadable,
    so the UI still loads and the sensors report the config error."""
    if settings is not None:
        return settings
    try:
        return load_settings()
    except ConfigError:
        return Settings.model_validate({"candidates": [{"name": "placeholder", "model": "knn"}]})


def build_definitions(
    settings: Settings | None = None, resources: Mapping[str, object] | None = None
) -> Definitions:
    """The graph, shaped by `settings` (top_k serving steps, freshness window, crons)."""
    shape = _settings_for_shape(settings)
    ranks = shape.selection.top_k
    predictions = [build_prediction_asset(r) for r in range(1, ranks + 1)]
    aggregated = build_aggregation_asset(ranks)
    checks = build_prediction_checks(
        [*(prediction_key(r) for r in range(1, ranks + 1)), aggregated.key]
    )

    def _with_freshness(spec: AssetSpec) -> AssetSpec:
        return spec.replace_attributes(
            freshness_policy=freshness_policy(shape.memoization.freshness_days)
        )

    return Definitions(
        assets=[
            raw_dataset,
            ingested_dataset.map_asset_specs(_with_freshness),
            trained_model,
            model_selection,
            *predictions,
            aggregated,
        ],
        asset_checks=[dataset_schema_and_rows, selected_models_meet_bar, *checks],
        jobs=[*build_jobs(shape.retries), cache_gc_job],
        sensors=[dataset_sensor, candidates_sensor, model_landed_sensor, dead_runs_sensor],
        schedules=build_schedules(shape),
        resources=dict(resources)
        if resources
        else {
            "settings": SettingsResource(),
            "store": ArtifactStoreResource(),
            "clock": ClockResource(),
        },
        executor=in_process_executor,
    )


defs = build_definitions()
