"""Schedules: the periodic source refresh (ingests only when the memo rules say so) and cache GC."""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from ml_assets.core.config import Settings
from ml_assets.core.names import (
    CACHE_GC_JOB,
    CACHE_GC_SCHEDULE,
    INGEST_JOB,
    REASON_TAG,
    REFRESH_SCHEDULE,
)
from ml_assets.defs.assets.ingestion import decide
from ml_assets.defs.resources import ClockResource, SettingsResource
from ml_assets.state.records import last_ingestion


def build_schedules(settings: Settings) -> list[ScheduleDefinition]:
    """The refresh and GC schedules, on the cron strings from `schedules:` in the config."""

    @schedule(
        name=REFRESH_SCHEDULE,
        cron_schedule=settings.schedules.refresh_cron,
        job_name=INGEST_JOB,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    def refresh_schedule(
        context: ScheduleEvaluationContext, settings: SettingsResource, clock: ClockResource
    ) -> RunRequest | SkipReason:
        """Observe the source; launch ingestion only if it changed or the window expired."""
        _, previous = last_ingestion(context.instance)
        decision, current = decide(settings.load(), settings, previous, clock.now())
        if not decision.run:
            return SkipReason(f"ingestion not needed: {decision.reason}")
        return RunRequest(
            run_key=f"refresh:{current.version}:{context.scheduled_execution_time}",
            tags={REASON_TAG: decision.reason[:200]},
        )

    gc_schedule = ScheduleDefinition(
        name=CACHE_GC_SCHEDULE,
        cron_schedule=settings.schedules.cache_gc_cron,
        job_name=CACHE_GC_JOB,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return [refresh_schedule, gc_schedule]
