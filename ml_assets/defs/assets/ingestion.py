"""`raw_dataset` (observed source) and `ingested_dataset` (clean, validate, split; memoized)."""

from datetime import timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    DataVersion,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    asset,
    observable_source_asset,
)

from ml_assets.core.config import Settings
from ml_assets.core.keys import INGESTION_CODE_VERSION, dataset_config_hash
from ml_assets.core.names import (
    FORCE_TAG,
    INGESTED_DATASET,
    INGESTION_POOL,
    ON_TRAINING_QUEUE,
    is_forced,
)
from ml_assets.core.reingest import (
    Decision,
    IngestionState,
    SourceFingerprint,
    fingerprint_source,
    ingestion_decision,
    observe_source,
)
from ml_assets.defs.failures import user_failure
from ml_assets.defs.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.ml.datasets import (
    PARTS,
    DatasetError,
    load_dataset,
    split_content_hash,
    split_rows,
)
from ml_assets.state.records import last_ingestion
from ml_assets.storage.artifacts import write_dataset


def freshness_policy(days: float) -> FreshnessPolicy:
    """Shown in the UI: the dataset is overdue once older than `memoization.freshness_days`."""
    return FreshnessPolicy.time_window(fail_window=timedelta(days=days))


def decide(
    settings: Settings, resource: SettingsResource, previous: IngestionState | None, now: float
) -> tuple[Decision, SourceFingerprint]:
    """`core.reingest.ingestion_decision`, with an unreadable source failing the step as the
    user's mistake."""
    try:
        return ingestion_decision(settings, resource.base_dir(), previous, now)
    except DatasetError as error:
        raise user_failure(error) from error


@observable_source_asset(
    group_name="ingestion",
    description="The configured dataset source.",
    op_tags=ON_TRAINING_QUEUE,
)
def raw_dataset(context: AssetExecutionContext, settings: SettingsResource) -> ObserveResult:
    """Fingerprint of the source (record count, content hash) as its `DataVersion`."""
    _, state = last_ingestion(context.instance)
    try:
        current = observe_source(settings.load(), settings.base_dir(), state)
    except DatasetError as error:
        raise user_failure(error) from error
    return ObserveResult(
        data_version=DataVersion(current.version),
        metadata={**current.as_metadata(), "files": len(current.files), "rehashed": current.hashed},
    )


@asset(
    deps=[raw_dataset],
    group_name="ingestion",
    code_version=INGESTION_CODE_VERSION,
    kinds={"parquet"},
    pool=INGESTION_POOL,
    op_tags=ON_TRAINING_QUEUE,
)
def ingested_dataset(
    context: AssetExecutionContext,
    settings: SettingsResource,
    store: ArtifactStoreResource,
    clock: ClockResource,
) -> MaterializeResult:
    """The cleaned dataset, split into train, validation and serving requests (Parquet)."""
    cfg = settings.load()
    artifacts = store.get()
    previous_record, previous = last_ingestion(context.instance)
    now = clock.now()
    decision, before = decide(cfg, settings, previous, now)
    if is_forced(context.run.tags, INGESTED_DATASET.path[-1]):
        decision = Decision(True, f"forced by the {FORCE_TAG} tag")
    if not decision.run and previous_record is not None:
        cached, miss = artifacts.find("datasets", previous_record["dataset_key"])
        if cached is not None and cached.digest == previous_record["digest"]:
            artifacts.touch("datasets", cached.key)
            context.log.info(f"ingestion memoized: {decision.reason}")
            return MaterializeResult(
                data_version=DataVersion(cached.key),
                metadata={
                    **_carry_over(previous_record.metadata),
                    "memoized": True,
                    "reason": decision.reason,
                },
            )
        decision = Decision(True, f"cached dataset unusable ({miss or 'digest differs'})")
    context.log.info(f"ingesting: {decision.reason}")
    try:
        dataset, dropped = load_dataset(
            cfg.dataset.source,
            settings.base_dir(),
            cfg.dataset.label,
            cfg.dataset.id,
            cfg.dataset.vocabulary,
        )
        rows = split_rows(
            dataset,
            validation=cfg.dataset.split.validation,
            serving=cfg.dataset.split.serving,
            seed=cfg.training.seed,
        )
        after = fingerprint_source(
            cfg.dataset.source,
            settings.base_dir(),
            (before.cheap_key, before.content_hash),
            vocabulary=cfg.dataset.vocabulary,
        )
    except DatasetError as error:
        raise user_failure(error) from error
    if after.cheap_key != before.cheap_key:
        # Retryable: a writer was still at work; the next attempt reads a settled source.
        raise Failure(f"dataset.source {cfg.dataset.source!r} changed while it was being ingested")
    version = split_content_hash(dataset, rows)[:24]
    artifact = write_dataset(
        artifacts, version, dataset, rows, {"source": cfg.dataset.source, "dropped": dropped}
    )
    state = IngestionState(
        ingested_at=now,
        code_version=INGESTION_CODE_VERSION,
        config_hash=dataset_config_hash(cfg.dataset, cfg.training.seed),
        records=before.records,
        content_hash=before.content_hash,
        cheap_key=before.cheap_key,
    )
    context.log.info(
        f"ingested {len(dataset)} records ({dataset.task}, {len(dataset.entities)} entities) "
        f"as dataset {version}"
    )
    return MaterializeResult(
        data_version=DataVersion(version),
        metadata={
            "dataset_key": version,
            "digest": artifact.digest,
            "path": MetadataValue.path(str(artifact.path)),
            "task": dataset.task,
            "records": len(dataset),
            "entities": len(dataset.entities),
            "features": len(dataset.features),
            **{f"rows_{name}": len(rows[name]) for name in PARTS},
            **{f"dropped_{name}": count for name, count in dropped.items()},
            **_state_metadata(state.as_metadata()),
            "memoized": False,
            "reason": decision.reason,
        },
    )


def _state_metadata(state: dict[str, Any]) -> dict[str, Any]:
    """The ingestion state as shown in the UI: its epoch time as a timestamp."""
    result = dict(state)
    if "state_ingested_at" in result:
        result["state_ingested_at"] = MetadataValue.timestamp(float(result["state_ingested_at"]))
    return result


def _carry_over(metadata: dict[str, Any]) -> dict[str, Any]:
    """A reused ingestion repeats the original's metadata (paths and timestamps as such again)."""
    result = _state_metadata(metadata)
    if "path" in result:
        result["path"] = MetadataValue.path(str(result["path"]))
    return result
