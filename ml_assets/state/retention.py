"""What the cache GC must keep: what is served or in use, read from the instance.

`storage/store.py` deletes; this decides what it must not touch. `defs/gc.py` runs both as
`cache_gc_job`.
"""

from __future__ import annotations

from dagster import DagsterInstance, RunsFilter

from ml_assets.core.config import Settings
from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    BATCH_AGGREGATED_PREDICTIONS,
    BATCH_PARTITIONS,
    INGESTED_DATASET,
    MODEL_SELECTION,
    SERVING_REQUESTS,
    TRAINED_MODEL,
    batch_prediction_key,
    prediction_key,
)
from ml_assets.core.process import process_gone
from ml_assets.state.records import latest_record, latest_records, recorded_artifact
from ml_assets.state.runs import IN_PROGRESS_STATUSES
from ml_assets.storage.artifacts import SELECTION_FILE, read_json
from ml_assets.storage.store import ArtifactError, ArtifactStore, GcReport


def protected_entries(
    instance: DagsterInstance, settings: Settings, store: ArtifactStore
) -> set[tuple[str, str]]:
    """What GC must keep: the current dataset, selection and serving outputs, the latest model
    of every configured candidate, what the current selection serves, and every request
    batch's latest requests and answers."""
    latest = [
        (key, latest_record(instance, key))
        for key in (
            INGESTED_DATASET,
            MODEL_SELECTION,
            AGGREGATED_PREDICTIONS,
            *(prediction_key(rank) for rank in range(1, settings.selection.top_k + 1)),
        )
    ]
    models = latest_records(instance, TRAINED_MODEL, [c.name for c in settings.candidates])
    latest += [(TRAINED_MODEL, record) for record in models.values()]
    # Every request batch's latest requests and answers (a user reads them by path).
    batches = instance.get_dynamic_partitions(BATCH_PARTITIONS)
    for key in (
        SERVING_REQUESTS,
        BATCH_AGGREGATED_PREDICTIONS,
        *(batch_prediction_key(rank) for rank in range(1, settings.selection.top_k + 1)),
    ):
        latest += [(key, record) for record in latest_records(instance, key, batches).values()]
    keep: set[tuple[str, str]] = set()
    for key, record in latest:
        if record is not None and (named := recorded_artifact(key, record)) is not None:
            keep.add((named[0], named[1]))
    selection_record = dict(latest)[MODEL_SELECTION]
    if selection_record is not None:
        try:
            selection = read_json(
                store, "selections", selection_record["selection_key"], SELECTION_FILE, None
            )
        except ArtifactError:
            selection = {"selected": []}
        keep.update(("models", entry["model_key"]) for entry in selection["selected"])
        if "dataset_key" in selection:
            keep.add(("datasets", selection["dataset_key"]))
    return keep


def in_use_since(instance: DagsterInstance, own_run_id: str | None = None) -> float | None:
    """Start of the oldest run in progress (other than ours): entries hit since then are in use.

    A run whose process is gone (a killed `ml-assets run`) is not in progress, whatever its
    status still says."""
    runs = instance.get_run_records(RunsFilter(statuses=list(IN_PROGRESS_STATUSES)))
    starts = [
        r.start_time or r.create_timestamp.timestamp()
        for r in runs
        if r.dagster_run.run_id != own_run_id and not process_gone(r.dagster_run.tags)
    ]
    return min(starts) if starts else None


def collect(
    instance: DagsterInstance,
    settings: Settings,
    store: ArtifactStore,
    *,
    dry_run: bool,
    own_run_id: str | None = None,
) -> GcReport:
    retention = settings.memoization.cache_retention_days * 86_400.0
    return store.collect_garbage(
        retention,
        protected_entries(instance, settings, store),
        dry_run=dry_run,
        keep_hit_since=in_use_since(instance, own_run_id),
    )
