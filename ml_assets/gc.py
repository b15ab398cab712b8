"""Cache garbage collection: what is protected, and the `cache_gc_job` that deletes the rest."""

from dagster import (
    AssetKey,
    Config,
    DagsterInstance,
    OpExecutionContext,
    Output,
    RunsFilter,
    job,
    op,
)

from ml_assets.artifacts import SELECTION_FILE, read_json
from ml_assets.config import Settings
from ml_assets.lineage import latest_record
from ml_assets.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.runs import IN_PROGRESS_STATUSES, process_gone
from ml_assets.store import ArtifactError, ArtifactStore, GcReport

_SERVING_KEYS = {
    "predictions": "predictions_key",
    "aggregated": "aggregated_key",
}


def protected_entries(
    instance: DagsterInstance, settings: Settings, store: ArtifactStore
) -> set[tuple[str, str]]:
    """What GC must keep: the current dataset, selection and serving outputs, and the latest
    model of every configured candidate."""
    keep: set[tuple[str, str]] = set()
    dataset = latest_record(instance, AssetKey("ingested_dataset"))
    if dataset is not None:
        keep.add(("datasets", dataset["dataset_key"]))
    for candidate in settings.candidates:
        model = latest_record(instance, AssetKey("trained_model"), candidate.name)
        if model is not None:
            keep.add(("models", model["model_key"]))
    selection_record = latest_record(instance, AssetKey("model_selection"))
    if selection_record is not None:
        keep.add(("selections", selection_record["selection_key"]))
        try:
            selection = read_json(
                store, "selections", selection_record["selection_key"], SELECTION_FILE, None
            )
        except ArtifactError:
            selection = {"selected": []}
        keep.update(("models", entry["model_key"]) for entry in selection["selected"])
        if "dataset_key" in selection:
            keep.add(("datasets", selection["dataset_key"]))
    for rank in range(1, settings.selection.top_k + 1):
        record = latest_record(instance, AssetKey(f"predictions_rank_{rank}"))
        if record is not None and "predictions_key" in record.metadata:
            keep.add(("predictions", record["predictions_key"]))
    aggregated = latest_record(instance, AssetKey("aggregated_predictions"))
    if aggregated is not None:
        keep.add(("aggregated", aggregated["aggregated_key"]))
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


class CacheGcConfig(Config):
    dry_run: bool = False


@op
def collect_cache_garbage(
    context: OpExecutionContext,
    config: CacheGcConfig,
    settings: SettingsResource,
    store: ArtifactStoreResource,
    clock: ClockResource,
) -> Output[None]:
    """Delete cache entries not hit for `cache_retention_days`; never what is served or in use."""
    artifacts = store.get()
    artifacts.clock = clock.now
    report = collect(
        context.instance,
        settings.load(),
        artifacts,
        dry_run=config.dry_run,
        own_run_id=context.run_id,
    )
    verb = "would delete" if report.dry_run else "deleted"
    context.log.info(f"cache GC {verb} {len(report.deleted)} entries, {report.bytes_freed} bytes")
    return Output(
        None,
        metadata={
            "dry_run": report.dry_run,
            "entries_deleted": len(report.deleted),
            "bytes_freed": report.bytes_freed,
            "kept_protected": report.kept_protected,
            "kept_recent": report.kept_recent,
            "deleted": [f"{kind}/{key}" for kind, key in report.deleted],
        },
    )


@job(tags={"ml_assets/stage": "maintenance"})
def cache_gc_job() -> None:
    """Garbage-collect the artifact store (`dry_run: true` in the op config to only report)."""
    collect_cache_garbage()
