"""Asset jobs: ingestion, training (one run per candidate partition) and serving."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets("raw_dataset", "ingested_dataset"),
    tags={"ml_assets/stage": "ingestion"},
)
train_job = define_asset_job(
    "train_job",
    selection=AssetSelection.assets("trained_model"),
    tags={"ml_assets/stage": "training"},
)
serve_job = define_asset_job(
    "serve_job",
    selection=AssetSelection.assets("model_selection").downstream(),
    tags={"ml_assets/stage": "serving"},
)
