"""Asset jobs: ingestion, training (one run per candidate partition) and serving."""

from typing import Any

from dagster import AssetSelection, Backoff, RetryPolicy, define_asset_job

from ml_assets.config import RetriesConfig


def build_jobs(retries: RetriesConfig) -> list[Any]:
    """The three jobs, each retrying transient step failures per `retries:` in the config."""
    policy = RetryPolicy(
        max_retries=retries.max_retries, delay=retries.delay_seconds, backoff=Backoff.EXPONENTIAL
    )
    return [
        define_asset_job(
            "ingest_job",
            selection=AssetSelection.assets("raw_dataset", "ingested_dataset"),
            tags={"ml_assets/stage": "ingestion"},
            op_retry_policy=policy,
        ),
        define_asset_job(
            "train_job",
            selection=AssetSelection.assets("trained_model"),
            tags={"ml_assets/stage": "training"},
            op_retry_policy=policy,
        ),
        define_asset_job(
            "serve_job",
            selection=AssetSelection.assets("model_selection").downstream(),
            tags={"ml_assets/stage": "serving"},
            op_retry_policy=policy,
        ),
    ]
