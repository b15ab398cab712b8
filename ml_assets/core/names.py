"""Every name the project gives Dagster, defined once: asset keys, jobs, sensors, pools, tags.

`AssetKey` is the one Dagster type here: a plain value object, so that no layer spells an asset's
name as a string literal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dagster import AssetKey

# Defined where it is read, Dagster-free: the process executing a run.
from ml_assets.core.process import PROCESS_TAG as PROCESS_TAG

# Assets (ml_assets/defs/assets/), in the order data flows through them.
RAW_DATASET: Final = AssetKey("raw_dataset")
INGESTED_DATASET: Final = AssetKey("ingested_dataset")
TRAINED_MODEL: Final = AssetKey("trained_model")
MODEL_SELECTION: Final = AssetKey("model_selection")
AGGREGATED_PREDICTIONS: Final = AssetKey("aggregated_predictions")
# Request batches (`serving.requests`): one partition per file, scored by the current selection.
SERVING_REQUESTS: Final = AssetKey("serving_requests")
BATCH_AGGREGATED_PREDICTIONS: Final = AssetKey("batch_aggregated_predictions")
BATCHES_GROUP: Final = "request_batches"


def prediction_key(rank: int) -> AssetKey:
    """The serving step of the model at `rank` (1-based) in the current selection."""
    return AssetKey(f"predictions_rank_{rank}")


def batch_prediction_key(rank: int) -> AssetKey:
    """The model at `rank` of the current selection, scoring one request batch."""
    return AssetKey(f"batch_predictions_rank_{rank}")


# The dynamic partitions of `trained_model`: one per candidate in `ml_assets.yaml`.
CANDIDATES_PARTITIONS: Final = "candidates"
# The dynamic partitions of the request batches: one per file matching `serving.requests`.
BATCH_PARTITIONS: Final = "request_batches"

# Jobs (ml_assets/defs/jobs.py, ml_assets/defs/gc.py).
INGEST_JOB: Final = "ingest_job"
TRAIN_JOB: Final = "train_job"
SERVE_JOB: Final = "serve_job"
BATCH_JOB: Final = "batch_job"
CACHE_GC_JOB: Final = "cache_gc_job"

# Sensors and schedules (ml_assets/defs/sensors.py, ml_assets/defs/schedules.py).
DATASET_SENSOR: Final = "dataset_sensor"
CANDIDATES_SENSOR: Final = "candidates_sensor"
MODEL_LANDED_SENSOR: Final = "model_landed_sensor"
DEAD_RUNS_SENSOR: Final = "dead_runs_sensor"
REQUEST_BATCHES_SENSOR: Final = "request_batches_sensor"
REFRESH_SCHEDULE: Final = "refresh_schedule"
CACHE_GC_SCHEDULE: Final = "cache_gc_schedule"

# Concurrency pools (dagster.yaml `concurrency: pools:`; ml_assets/defs/pools.py).
INGESTION_POOL: Final = "ingestion"
TRAINING_POOL: Final = "training"
SERVING_POOL: Final = "serving"
POOLS: Final = (INGESTION_POOL, TRAINING_POOL, SERVING_POOL)

# Celery queues (`ML_ASSETS_CELERY_BROKER`; ml_assets/defs/executor.py): each scales on its own
# (`ml-assets worker --queue training|serving`). Training: ingestion and the fits (minutes,
# CPU-bound); serving: selection, predictions, aggregation and every check (seconds).
TRAINING_QUEUE: Final = "training"
SERVING_QUEUE: Final = "serving"
QUEUES: Final = (TRAINING_QUEUE, SERVING_QUEUE)
CELERY_QUEUE_TAG: Final = "dagster-celery/queue"  # dagster-celery's op tag naming a step's queue
# The op tags of the training queue's steps; an untagged step goes to the serving queue.
ON_TRAINING_QUEUE: Final[Mapping[str, str]] = {CELERY_QUEUE_TAG: TRAINING_QUEUE}

# Run tags the project reads or writes.
PARTITION_TAG: Final = "dagster/partition"  # Dagster's own
STAGE_TAG: Final = "ml_assets/stage"  # ingestion | training | serving | maintenance
FORCE_TAG: Final = "ml_assets/force"  # "all", or comma-separated steps / candidate names
DATASET_TAG: Final = "ml_assets/dataset"  # the dataset version a training run fans out from
CANDIDATE_TAG: Final = "ml_assets/candidate"
ATTEMPT_TAG: Final = "ml_assets/attempt_of"  # groups the runs that try one config on one dataset
REASON_TAG: Final = "ml_assets/reason"
LANDED_TAG: Final = "ml_assets/landed"  # the models whose landing launched a serving run
LAUNCH_TAG: Final = "ml_assets/launch"  # finds the run of a local worker that died unreported
SELECTION_TAG: Final = "ml_assets/selection"  # the selection current when a batch run was asked


def is_forced(run_tags: Mapping[str, str], step: str) -> bool:
    """True when the run's `ml_assets/force` tag names `step` (or says `all`)."""
    value = run_tags.get(FORCE_TAG, "")
    return value == "all" or step in {v.strip() for v in value.split(",")}
