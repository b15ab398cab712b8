"""Sensors: keep partitions in step with the config, and serve as each model lands."""

import hashlib
from typing import Final

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ml_assets.config import ConfigError, load_settings
from ml_assets.lineage import latest_record
from ml_assets.memo import IngestionState, dataset_config_hash
from ml_assets.partitions import CANDIDATES_PARTITIONS_NAME
from ml_assets.planning import (
    ATTEMPT_TAG,
    failed_since_selection,
    plan_training,
    serving_is_current,
    training_attempt,
)
from ml_assets.resources import ArtifactStoreResource, SettingsResource
from ml_assets.runs import in_flight, reap_dead_runs
from ml_assets.tags import DATASET_TAG

# The daemon evaluates sensors at most every 5 s whatever this says (Dagster's sensor loop);
# a shorter minimum only keeps a tick from being skipped when the loop runs late.
SENSOR_INTERVAL_SECONDS: Final = 2
DEAD_RUNS_INTERVAL_SECONDS: Final = 15
_MAX_EVENTS_PER_TICK: Final = 1000


@sensor(
    name="candidates_sensor",
    job_name="train_job",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def candidates_sensor(
    context: SensorEvaluationContext, settings: SettingsResource, store: ArtifactStoreResource
) -> SensorResult | SkipReason:
    """Add/remove candidate partitions and request training of new or changed candidates."""
    try:
        cfg = load_settings(settings.path())
    except ConfigError as error:
        context.log.warning(f"config invalid; keeping the last good state:\n{error}")
        return SkipReason(f"config invalid; keeping the last good state: {error}")
    instance = context.instance
    plan = plan_training(instance, cfg, store.get())
    for _name, problem in plan.invalid.items():
        context.log.warning(f"skipping invalid candidate: {problem}")
    wanted = [c.name for c in cfg.candidates if c.name not in plan.invalid]
    existing = set(instance.get_dynamic_partitions(CANDIDATES_PARTITIONS_NAME))
    added = [name for name in wanted if name not in existing]
    removed = sorted(existing - {c.name for c in cfg.candidates})
    partition_requests: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
    if added:
        partition_requests.append(AddDynamicPartitionsRequest(CANDIDATES_PARTITIONS_NAME, added))
    if removed:
        partition_requests.append(
            DeleteDynamicPartitionsRequest(CANDIDATES_PARTITIONS_NAME, removed)
        )
    if plan.dataset_key is None:  # dataset_sensor requests the first ingestion
        return SensorResult(
            dynamic_partitions_requests=partition_requests,
            skip_reason=None if partition_requests else "waiting for the first ingestion",
        )
    if plan.to_train and (ingesting := in_flight(instance, "ingest_job")):
        # Training now would use the dataset that ingestion is about to replace.
        return SensorResult(
            dynamic_partitions_requests=partition_requests,
            skip_reason=f"ingestion in progress (run {ingesting[0][:8]}); training waits for it",
        )
    runs = []
    for candidate in plan.to_train:
        attempt = training_attempt(instance, candidate, plan.dataset_key)
        if attempt.given_up(cfg.retries.max_retries):
            context.log.warning(f"{candidate.name}: gave up after {attempt.failures} failed runs")
            continue
        runs.append(
            RunRequest(
                partition_key=candidate.name,
                run_key=attempt.run_key,
                tags={
                    "ml_assets/candidate": candidate.name,
                    DATASET_TAG: plan.dataset_key,
                    ATTEMPT_TAG: attempt.group,
                },
            )
        )
    skip = None
    if not runs and not partition_requests:
        invalid = f"; invalid: {sorted(plan.invalid)}" if plan.invalid else ""
        skip = f"every candidate is up to date ({len(plan.up_to_date)}){invalid}"
    return SensorResult(
        run_requests=runs, dynamic_partitions_requests=partition_requests, skip_reason=skip
    )


def _digest(run_ids: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:16]


@sensor(
    name="dead_runs_sensor",
    minimum_interval_seconds=DEAD_RUNS_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def dead_runs_sensor(context: SensorEvaluationContext) -> SkipReason:
    """Mark failed the runs whose process on this host died (killed, out of memory).

    Fills a Dagster gap: run monitoring can only fail a started run whose worker died when the
    run launcher implements `check_run_worker_health`, and the `DefaultRunLauncher` that
    starts local run processes does not (`supports_check_run_worker_health` is False).
    """
    reaped = reap_dead_runs(context.instance)
    if reaped:
        ids = ", ".join(run_id[:8] for run_id in reaped)
        context.log.warning(f"marked failed, their process is gone: {ids}")
        return SkipReason(f"marked {len(reaped)} run(s) failed, their process is gone: {ids}")
    return SkipReason("no run whose process is gone")


@sensor(
    name="dataset_sensor",
    job_name="ingest_job",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def dataset_sensor(
    context: SensorEvaluationContext, settings: SettingsResource
) -> RunRequest | SkipReason:
    """Request ingestion when there is no dataset yet or the `dataset:` settings changed.

    Changes of the source's content are picked up by `refresh_schedule` and `ml-assets run`,
    which apply the freshness and row-change rules.
    """
    try:
        cfg = load_settings(settings.path())
    except ConfigError as error:
        return SkipReason(f"config invalid; keeping the last good state: {error}")
    config_hash = dataset_config_hash(cfg.dataset, cfg.training.seed)
    record = latest_record(context.instance, AssetKey("ingested_dataset"))
    state = None if record is None else IngestionState.from_metadata(record.metadata)
    if state is not None and state.config_hash == config_hash:
        return SkipReason("dataset settings unchanged since the last ingestion")
    if ingesting := in_flight(context.instance, "ingest_job"):
        # `ml-assets run` or the refresh schedule is ingesting; look again when it is done.
        return SkipReason(f"ingestion already in progress (run {ingesting[0][:8]})")
    return RunRequest(run_key=f"ingest:{config_hash}")


@sensor(
    name="model_landed_sensor",
    job_name="serve_job",
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def model_landed_sensor(
    context: SensorEvaluationContext, settings: SettingsResource, store: ArtifactStoreResource
) -> SensorResult | SkipReason:
    """Re-run selection → serving → aggregation after any model lands (none dropped)."""
    cursor = int(context.cursor) if context.cursor else 0
    # Every materialization since the cursor, not just the newest (an @asset_sensor would drop
    # partitions that land in the same tick).
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("trained_model"), after_storage_id=cursor),
        limit=_MAX_EVENTS_PER_TICK,
        ascending=True,
    ).records
    try:
        cfg = load_settings(settings.path())
    except ConfigError as error:
        return SkipReason(f"config invalid; serving left as it is: {error}")
    # A training run that failed after the latest selection: select again, so the leaderboard
    # says why that candidate did not land (the serving steps reuse their cached outputs).
    failed = [] if records else failed_since_selection(context.instance, cfg)
    if not records and not failed:
        return SkipReason("no model landed since the last tick")
    newest = max((r.storage_id for r in records), default=cursor)
    landed = sorted({r.partition_key or "" for r in records}) or ["(none: training failed)"]
    if serving_is_current(context.instance, cfg, store.get()):
        return SensorResult(
            cursor=str(newest), skip_reason=f"{landed} landed; serving already has these models"
        )
    waiting = in_flight(
        context.instance,
        "serve_job",
        [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING],
    )
    if waiting:
        # A serving run whose steps have not begun selects from everything landed by then.
        return SensorResult(
            cursor=str(newest), skip_reason=f"{landed} landed; a queued serving run will take them"
        )
    run = RunRequest(
        run_key=f"serve:{newest}" + (f":failed:{_digest(failed)}" if failed else ""),
        tags={"ml_assets/landed": ",".join(landed)[:250]},
    )
    return SensorResult(run_requests=[run], cursor=str(newest))
