"""Sensors: keep partitions in step with the config, serve as each model lands, and score the
request batches dropped in `serving.requests`."""

from collections.abc import Callable
from typing import Final

from dagster import (
    AddDynamicPartitionsRequest,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ml_assets.core.config import ConfigError, load_settings
from ml_assets.core.keys import dataset_config_hash, short_digest
from ml_assets.core.names import (
    ATTEMPT_TAG,
    BATCH_JOB,
    BATCH_PARTITIONS,
    CANDIDATE_TAG,
    CANDIDATES_PARTITIONS,
    CANDIDATES_SENSOR,
    DATASET_SENSOR,
    DATASET_TAG,
    DEAD_RUNS_SENSOR,
    INGEST_JOB,
    LANDED_TAG,
    MODEL_LANDED_SENSOR,
    MODEL_SELECTION,
    REQUEST_BATCHES_SENSOR,
    SELECTION_TAG,
    SERVE_JOB,
    TRAIN_JOB,
    TRAINED_MODEL,
)
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.datasets import DatasetError, batch_files
from ml_assets.state.partitions import partition_changes
from ml_assets.state.planning import (
    failed_since_selection,
    plan_training,
    serving_is_current,
    stale_batches,
    training_attempt,
)
from ml_assets.state.records import last_ingestion, latest_record
from ml_assets.state.runs import in_flight, reap_dead_runs

# The daemon evaluates sensors at most every 5 s whatever this says (Dagster's sensor loop);
# a shorter minimum only keeps a tick from being skipped when the loop runs late.
SENSOR_INTERVAL_SECONDS: Final = 2
DEAD_RUNS_INTERVAL_SECONDS: Final = 15
_MAX_EVENTS_PER_TICK: Final = 1000


def _running_sensor(name: str, job_name: str) -> Callable[..., SensorDefinition]:
    """A sensor on from the start (the workflow needs it), evaluated as often as Dagster allows."""
    return sensor(
        name=name,
        job_name=job_name,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
    )


@_running_sensor(CANDIDATES_SENSOR, TRAIN_JOB)
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
    added, removed = partition_changes(
        instance.get_dynamic_partitions(CANDIDATES_PARTITIONS),
        [c.name for c in cfg.candidates if c.name not in plan.invalid],
        [c.name for c in cfg.candidates],
    )
    partition_requests: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
    if added:
        partition_requests.append(AddDynamicPartitionsRequest(CANDIDATES_PARTITIONS, added))
    if removed:
        partition_requests.append(DeleteDynamicPartitionsRequest(CANDIDATES_PARTITIONS, removed))
    if plan.dataset_key is None:  # dataset_sensor requests the first ingestion
        return SensorResult(
            dynamic_partitions_requests=partition_requests,
            skip_reason=None if partition_requests else "waiting for the first ingestion",
        )
    if plan.to_train and (ingesting := in_flight(instance, INGEST_JOB)):
        # Training now would use the dataset that ingestion is about to replace.
        return SensorResult(
            dynamic_partitions_requests=partition_requests,
            skip_reason=f"ingestion in progress (run {ingesting[0][:8]}); training waits for it",
        )
    runs = []
    # Retries of failed training runs are counted here, per (candidate config, dataset), not by
    # Dagster's run retries: those are made by the daemon only (an in-process `--mode sync` run
    # is never retried) and re-execute the failed run as it was, while a retry here is planned
    # again (a config edit starts a new count; a user error is never retried).
    for candidate in plan.to_train:
        attempt = training_attempt(
            instance, candidate, plan.dataset_key, plan.landed.get(candidate.name, 0)
        )
        if attempt.given_up(cfg.retries.max_retries):
            context.log.warning(f"{candidate.name}: gave up after {attempt.failures} failed runs")
            continue
        runs.append(
            RunRequest(
                partition_key=candidate.name,
                run_key=attempt.run_key,
                tags={
                    CANDIDATE_TAG: candidate.name,
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


@sensor(
    name=DEAD_RUNS_SENSOR,
    minimum_interval_seconds=DEAD_RUNS_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
)
def dead_runs_sensor(context: SensorEvaluationContext) -> SkipReason:
    """Mark failed the runs whose process on this host died (killed, out of memory).

    Fills a Dagster gap: run monitoring can only fail a started run whose worker died when the
    run launcher implements `check_run_worker_health`, and the `DefaultRunLauncher` that
    starts local run processes does not ("Detecting run worker crashes only works when using a
    run launcher other than the DefaultRunLauncher": docs.dagster.io, run monitoring).
    """
    reaped = reap_dead_runs(context.instance)
    if reaped:
        ids = ", ".join(run_id[:8] for run_id in reaped)
        context.log.warning(f"marked failed, their process is gone: {ids}")
        return SkipReason(f"marked {len(reaped)} run(s) failed, their process is gone: {ids}")
    return SkipReason("no run whose process is gone")


@_running_sensor(DATASET_SENSOR, INGEST_JOB)
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
    _, state = last_ingestion(context.instance)
    if state is not None and state.config_hash == config_hash:
        return SkipReason("dataset settings unchanged since the last ingestion")
    if ingesting := in_flight(context.instance, INGEST_JOB):
        # `ml-assets run` or the refresh schedule is ingesting; look again when it is done.
        return SkipReason(f"ingestion already in progress (run {ingesting[0][:8]})")
    return RunRequest(run_key=f"ingest:{config_hash}")


@_running_sensor(MODEL_LANDED_SENSOR, SERVE_JOB)
def model_landed_sensor(
    context: SensorEvaluationContext, settings: SettingsResource, store: ArtifactStoreResource
) -> SensorResult | SkipReason:
    """Re-run selection → serving → aggregation after any model lands (none dropped).

    A sensor, not Dagster's own mechanisms, because each of those misses part of the job:
    `@asset_sensor` sees only the newest materialization between ticks, so partitions landing
    together are dropped (dagster-io/dagster#32853); `multi_asset_sensor` is superseded;
    `AutomationCondition.eager()` on the fan-in waits while any candidate is missing or in
    progress, and a customized condition would still not re-select after a failed training run
    (so the leaderboard says why) or a damaged artifact, and ticks every 30 s by default.
    """
    cursor = int(context.cursor) if context.cursor else 0
    # Every materialization since the cursor, not just the newest (an @asset_sensor would drop
    # partitions that land in the same tick).
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=TRAINED_MODEL, after_storage_id=cursor),
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
        SERVE_JOB,
        [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING],
    )
    if waiting:
        # A serving run whose steps have not begun selects from everything landed by then.
        return SensorResult(
            cursor=str(newest), skip_reason=f"{landed} landed; a queued serving run will take them"
        )
    run = RunRequest(
        run_key=f"serve:{newest}"
        + (f":failed:{short_digest(','.join(sorted(failed)), 16)}" if failed else ""),
        tags={LANDED_TAG: ",".join(landed)[:250]},
    )
    return SensorResult(run_requests=[run], cursor=str(newest))


@_running_sensor(REQUEST_BATCHES_SENSOR, BATCH_JOB)
def request_batches_sensor(
    context: SensorEvaluationContext, settings: SettingsResource
) -> SensorResult | SkipReason:
    """A partition per file in `serving.requests` (a removed file's partition is deleted), and a
    scoring run for each batch whose file or the current selection changed since it was last
    scored.

    The run key names the file's size, mtime and the selection, so Dagster launches each
    (batch, file content, selection) once: a new selection scores every batch again.
    """
    try:
        cfg = load_settings(settings.path())
    except ConfigError as error:
        return SkipReason(f"config invalid; batches left as they are: {error}")
    if cfg.serving.requests is None:
        return SkipReason("serving.requests is not set: no request batches")
    try:
        files = batch_files(cfg.serving.requests, settings.base_dir())
    except DatasetError as error:
        context.log.warning(str(error))
        return SkipReason(str(error))
    existing = set(context.instance.get_dynamic_partitions(BATCH_PARTITIONS))
    new, gone = sorted(set(files) - existing), sorted(existing - set(files))
    partitions: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
    if new:
        partitions.append(AddDynamicPartitionsRequest(BATCH_PARTITIONS, new))
    if gone:  # a removed file's batch goes, and the cache GC no longer keeps its answers
        partitions.append(DeleteDynamicPartitionsRequest(BATCH_PARTITIONS, gone))
    selection = latest_record(context.instance, MODEL_SELECTION)
    if selection is None:
        return SensorResult(
            dynamic_partitions_requests=partitions,
            skip_reason=f"{len(files)} batch file(s); waiting for the first model selection",
        )
    key = str(selection["selection_key"])
    # Only batches whose answer is not from this selection and file (`ml-assets run` may have
    # scored them already); the run key still names both, so Dagster launches each once.
    runs = []
    for name in stale_batches(context.instance, cfg, settings.base_dir(), files):
        try:
            stat = files[name].stat()
        except FileNotFoundError:
            continue  # removed since the glob matched it
        runs.append(
            RunRequest(
                partition_key=name,
                run_key=f"batch:{name}:{stat.st_size}:{stat.st_mtime_ns}:{key}",
                tags={SELECTION_TAG: key},
            )
        )
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=partitions,
        skip_reason=None
        if runs
        else f"every batch ({len(files)}) is answered by the current selection",
    )
