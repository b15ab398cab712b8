"""`cache_gc_job`: delete cache entries nobody hit for a while, never what is served or in use
(`state/retention.py` says what to keep; `storage/store.py` deletes)."""

from dagster import Config, OpExecutionContext, Output, job, op

from ml_assets.core.names import CACHE_GC_JOB, STAGE_TAG
from ml_assets.defs.resources import ArtifactStoreResource, ClockResource, SettingsResource
from ml_assets.state.retention import collect


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


@job(name=CACHE_GC_JOB, tags={STAGE_TAG: "maintenance"})
def cache_gc_job() -> None:
    """Garbage-collect the artifact store (`dry_run: true` in the op config to only report)."""
    collect_cache_garbage()
