"""Asset jobs: ingestion, training (one run per candidate partition), serving, and the request
batches (one run per batch partition)."""

from typing import Any

from dagster import AssetSelection, Backoff, RetryPolicy, define_asset_job

from ml_assets.core.config import RetriesConfig
from ml_assets.core.names import (
    BATCH_JOB,
    BATCHES_GROUP,
    INGEST_JOB,
    INGESTED_DATASET,
    MODEL_SELECTION,
    RAW_DATASET,
    SERVE_JOB,
    STAGE_TAG,
    TRAIN_JOB,
    TRAINED_MODEL,
)


def build_jobs(retries: RetriesConfig) -> list[Any]:
    """The jobs, each retrying transient step failures per `retries:` in the config."""
    policy = RetryPolicy(
        max_retries=retries.max_retries, delay=retries.delay_seconds, backoff=Backoff.EXPONENTIAL
    )
    return [
        define_asset_job(
            INGEST_JOB,
            selection=AssetSelection.assets(RAW_DATASET, INGESTED_DATASET),
            tags={STAGE_TAG: "ingestion"},
            op_retry_policy=policy,
        ),
        define_asset_job(
            TRAIN_JOB,
            selection=AssetSelection.assets(TRAINED_MODEL),
            tags={STAGE_TAG: "training"},
            op_retry_policy=policy,
        ),
        define_asset_job(
            SERVE_JOB,
            # The held-out evaluation; the request batches have their own partitioned job.
            selection=AssetSelection.assets(MODEL_SELECTION).downstream()
            - AssetSelection.groups(BATCHES_GROUP),
            tags={STAGE_TAG: "serving"},
            op_retry_policy=policy,
        ),
        define_asset_job(
            BATCH_JOB,
            selection=AssetSelection.groups(BATCHES_GROUP),  # partitioned by request batch
            tags={STAGE_TAG: "serving"},
            op_retry_policy=policy,
        ),
    ]
