"""`ingested_dataset`: read, clean, validate and split the configured source."""

from typing import Final

from dagster import (
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.artifacts import write_dataset
from ml_assets.ml.datasets import PARTS, DatasetError, clean, content_hash, read_source, split
from ml_assets.resources import ArtifactStoreResource, SettingsResource

# Bump when cleaning or splitting changes what a given source turns into.
INGESTION_CODE_VERSION: Final = "1"


@asset(group_name="ingestion", code_version=INGESTION_CODE_VERSION, kinds={"parquet"})
def ingested_dataset(
    context: AssetExecutionContext, settings: SettingsResource, store: ArtifactStoreResource
) -> MaterializeResult:
    """The cleaned dataset, split into train, validation and serving requests (Parquet)."""
    cfg = settings.load()
    try:
        frame = read_source(cfg.dataset.source, settings.base_dir())
        dataset, dropped = clean(frame, cfg.dataset.label, cfg.dataset.id, cfg.dataset.source)
        parts = split(
            dataset,
            validation=cfg.dataset.split.validation,
            serving=cfg.dataset.split.serving,
            seed=cfg.training.seed,
        )
    except DatasetError as error:
        raise Failure(str(error), allow_retries=False) from error
    version = content_hash(parts)[:24]
    artifact = write_dataset(
        store.get(), version, parts, {"source": cfg.dataset.source, "dropped": dropped}
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
            **{f"rows_{name}": len(parts[name]) for name in PARTS},
            **{f"dropped_{name}": count for name, count in dropped.items()},
        },
    )
