"""The one `Definitions` object: workspace.yaml and `[tool.dagster]` point here."""

from collections.abc import Mapping

from dagster import AssetSpec, Definitions

from ml_assets.core.config import ConfigError, Settings, load_settings
from ml_assets.core.names import prediction_key
from ml_assets.defs.assets.batches import (
    build_batch_aggregation_asset,
    build_batch_prediction_asset,
    serving_requests,
)
from ml_assets.defs.assets.ingestion import freshness_policy, ingested_dataset, raw_dataset
from ml_assets.defs.assets.selection import model_selection
from ml_assets.defs.assets.serving import build_aggregation_asset, build_prediction_asset
from ml_assets.defs.assets.training import trained_model
from ml_assets.defs.checks import (
    build_prediction_checks,
    dataset_schema_and_rows,
    selected_models_meet_bar,
)
from ml_assets.defs.executor import build_executor
from ml_assets.defs.gc import cache_gc_job
from ml_assets.defs.io_manager import RecordedArtifactIOManager
from ml_assets.defs.jobs import build_jobs
from ml_assets.defs.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.defs.schedules import build_schedules
from ml_assets.defs.sensors import (
    candidates_sensor,
    dataset_sensor,
    dead_runs_sensor,
    model_landed_sensor,
    request_batches_sensor,
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


def _resources(given: Mapping[str, object] | None) -> dict[str, object]:
    """The settings, store and clock (defaults unless given), and the IO manager that loads
    each step's upstream artifact from that same store."""
    resources: dict[str, object] = {
        "settings": SettingsResource(),
        "store": ArtifactStoreResource(),
        "clock": ClockResource(),
        **(given or {}),
    }
    store = resources["store"]
    assert isinstance(store, ArtifactStoreResource)
    resources.setdefault("io_manager", RecordedArtifactIOManager(store=store))
    return resources


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
            serving_requests,
            *(build_batch_prediction_asset(r) for r in range(1, ranks + 1)),
            build_batch_aggregation_asset(ranks),
        ],
        asset_checks=[dataset_schema_and_rows, selected_models_meet_bar, *checks],
        jobs=[*build_jobs(shape.retries), cache_gc_job],
        sensors=[
            dataset_sensor,
            candidates_sensor,
            model_landed_sensor,
            dead_runs_sensor,
            request_batches_sensor,
        ],
        schedules=build_schedules(shape),
        resources=_resources(resources),
        executor=build_executor(),
    )


defs = build_definitions()
