"""Schedules: the periodic source refresh (ingests only when the memo rules say so) and cache GC."""

from dagster import (
    AssetKey,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from ml_assets.assets.ingestion import ingestion_decision
from ml_assets.config import Settings
from ml_assets.lineage import latest_record
from ml_assets.memo import IngestionState
from ml_assets.resources import ClockResource, SettingsResource


def build_schedules(settings: Settings) -> list[ScheduleDefinition]:
    """The refresh and GC schedules, on the cron strings from `schedules:` in the config."""

    @schedule(
        name="refresh_schedule",
        cron_schedule=settings.schedules.refresh_cron,
        job_name="ingest_job",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    def refresh_schedule(
        context: ScheduleEvaluationContext, settings: SettingsResource, clock: ClockResource
    ) -> RunRequest | SkipReason:
        """Observe the source; launch ingestion only if it changed or the window expired."""
        record = latest_record(context.instance, AssetKey("ingested_dataset"))
        previous = None if record is None else IngestionState.from_metadata(record.metadata)
        decision, current = ingestion_decision(settings, previous, clock.now())
        if not decision.run:
            return SkipReason(f"ingestion not needed: {decision.reason}")
        return RunRequest(
            run_key=f"refresh:{current.version}:{context.scheduled_execution_time}",
            tags={"ml_assets/reason": decision.reason[:200]},
        )

    gc_schedule = ScheduleDefinition(
        name="cache_gc_schedule",
        cron_schedule=settings.schedules.cache_gc_cron,
        job_name="cache_gc_job",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return [refresh_schedule, gc_schedule]
