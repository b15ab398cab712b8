"""`ml-assets run`: ingest, train every candidate, select, serve and aggregate; only what
changed runs.

`--mode async` (the default) lets the daemon's sensors drive training and serving and waits until
the workflow settled; `--mode sync` trains here, in a local pool of run processes, then serves.
Fills a Dagster gap: Dagster offers no command that materializes a sensor-driven workflow and
waits until it settles (`dagster asset materialize` executes one selection in-process).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ml_assets.cli.local import prepare_home
from ml_assets.core.config import Settings, load_settings
from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    BATCH_JOB,
    BATCH_PARTITIONS,
    CANDIDATES_SENSOR,
    DATASET_SENSOR,
    DATASET_TAG,
    FORCE_TAG,
    INGEST_JOB,
    INGESTED_DATASET,
    MODEL_LANDED_SENSOR,
    SERVE_JOB,
    TRAIN_JOB,
)
from ml_assets.core.workers import BROKER_ENV

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from ml_assets.state.planning import TrainingPlan


def _ingestion_reason(settings: Settings, force: frozenset[str]) -> str | None:
    """Why ingestion must run (the memoization rules, or --force), or None to skip it."""
    from dagster import DagsterInstance

    from ml_assets.core.reingest import ingestion_decision
    from ml_assets.defs.resources import SettingsResource
    from ml_assets.state.records import last_ingestion

    with DagsterInstance.get() as instance:
        _, previous = last_ingestion(instance)
    decision, _ = ingestion_decision(settings, SettingsResource().base_dir(), previous, time.time())
    if force & {"all", INGESTED_DATASET.path[-1]}:
        return "forced"
    if not decision.run:
        print(f"ingestion skipped: {decision.reason}")
        return None
    return decision.reason


def _ingest(reason: str, force: frozenset[str]) -> int:
    """Ingest in this process; 0 on success, else the exit status (2: bad config or data)."""
    from ml_assets.cli.local import run_job

    print(f"ingesting: {reason}")
    outcome = run_job(INGEST_JOB, tags=_force_tags(force))
    if outcome.success:
        return 0
    print(f"error: ingestion failed (run {outcome.run_id[:8]}): {outcome.error}", file=sys.stderr)
    return 2 if outcome.user_error else 1


def _force_tags(force: frozenset[str]) -> dict[str, str]:
    return {FORCE_TAG: ",".join(sorted(force))} if force else {}


def _run_sync(settings: Settings, workers: int, force: frozenset[str]) -> int:
    """Train what the plan says, one run per candidate (N at once), then serve once."""
    from dagster import DagsterInstance

    from ml_assets.cli.local import run_partitions
    from ml_assets.defs.resources import ArtifactStoreResource
    from ml_assets.state.planning import plan_training, serving_is_current

    store = ArtifactStoreResource().get()
    with DagsterInstance.get() as instance:
        plan = plan_training(instance, settings, store, force)
    if plan.up_to_date:
        print(f"up to date (no run): {', '.join(plan.up_to_date)}")
    names = [c.name for c in plan.to_train] + sorted(plan.invalid)
    if names:
        print(f"training {len(names)} candidate(s), at most {workers} at a time…")
        tags = {**_force_tags(force), DATASET_TAG: plan.dataset_key or ""}
        for outcome in run_partitions(TRAIN_JOB, names, workers, tags):
            first_line = outcome.error.splitlines()[0] if outcome.error else ""
            verdict = "ok" if outcome.success else f"FAILED: {first_line}"
            print(f"  {outcome.partition:<24} {verdict}")
    with DagsterInstance.get() as instance:
        current = serving_is_current(instance, settings, store)
    if current and not force:
        print("serving is current (no run)")
        return 0
    return _serve_here(force)


def _run_async(
    settings: Settings,
    args: argparse.Namespace,
    started: float,
    started_wall: float,
    ingest: str | None,
    force: frozenset[str],
) -> int:
    """Let the daemon's sensors drive training and serving; wait until everything settled.

    Ingestion (when `ingest` gives a reason) runs here while the daemon starts up: its sensors
    wait for an ingestion in flight instead of launching a second one or training on the
    dataset it replaces. The wait ends when the workflow settled, or as soon as nothing moves
    (`settle.Watchdog`): it never waits on work nobody will launch."""
    from dagster import DagsterInstance, RunsFilter

    from ml_assets.cli.daemon import daemon_on_instance, dagster_daemon
    from ml_assets.cli.settle import Watchdog
    from ml_assets.core.config import default_home
    from ml_assets.defs.resources import ArtifactStoreResource
    from ml_assets.state.planning import plan_training, serving_is_current
    from ml_assets.state.records import latest_record
    from ml_assets.state.runs import in_flight

    store = ArtifactStoreResource().get()
    home = default_home()
    log = home / "daemon.log"
    first_prediction: float | None = None
    since = datetime.fromtimestamp(started_wall, tz=UTC)
    served_here = False

    def ingestion_recorded() -> bool:
        # The daemon starts once our ingestion run is on the instance, so its sensors see it
        # in flight (and neither launch a second one nor train on the dataset it replaces).
        return probe.get_runs_count(RunsFilter(job_name=INGEST_JOB, created_after=since)) > 0

    with (
        DagsterInstance.get() as probe,
        dagster_daemon(
            home, Path.cwd(), log, start_when=None if ingest is None else ingestion_recorded
        ) as daemon,
        DagsterInstance.get() as instance,
    ):
        if isinstance(daemon, str):
            print(f"a daemon already runs on this instance ({daemon}); using it")
        else:
            print(f"daemon starting; sensors drive training and serving (log: {log})")
        before = latest_record(instance, AGGREGATED_PREDICTIONS)
        if ingest is not None and (failed_ingestion := _ingest(ingest, force)):
            return failed_ingestion
        watchdog = Watchdog(instance, args.stall_timeout)
        while time.perf_counter() - started < args.timeout:
            time.sleep(1.0)
            if not isinstance(daemon, str) and (exit_code := daemon.exit_code()) is not None:
                print(f"error: the daemon exited ({exit_code}); see {log}", file=sys.stderr)
                return 1
            if isinstance(daemon, str) and not daemon_on_instance(home, instance):
                # The daemon of another `ml-assets run` or `ml-assets dev` that this one used.
                print(
                    f"error: the daemon this command used ({daemon}) stopped; run again",
                    file=sys.stderr,
                )
                return 1
            aggregated = latest_record(instance, AGGREGATED_PREDICTIONS)
            if first_prediction is None and aggregated is not None and aggregated != before:
                first_prediction = time.perf_counter() - started
                print(
                    f"first aggregated predictions after {first_prediction:.1f}s: "
                    f"{aggregated['models']}"
                )
            watchdog.observe()
            if in_flight(instance):
                # The cheap question first: planning costs ~0.1 s of CPU that the training
                # and serving runs need more while anything is queued or running.
                continue
            plan = plan_training(instance, settings, store)
            pending = _pending(instance, plan, settings)
            if plan.dataset_key is None:
                waiting, sensor = "the first ingestion", DATASET_SENSOR
            elif pending:
                waiting, sensor = f"training of {', '.join(pending)}", CANDIDATES_SENSOR
            elif serving_is_current(instance, settings, store):
                return 0
            else:
                outcome = _serving_outcome(instance, started_wall, served_here)
                if outcome == "serve here":
                    served_here = True
                    if failed_serving := _serve_here(force):
                        return failed_serving
                    continue
                if outcome:
                    print(f"error: {outcome}", file=sys.stderr)
                    return 1
                waiting, sensor = "a serving run with the models landed", MODEL_LANDED_SENSOR
            if stall := watchdog.stalled(waiting, sensor):
                print(f"error: {stall}; see {log}", file=sys.stderr)
                return 1
        print(
            f"error: not settled after {args.timeout:.0f}s (see the UI or {log})",
            file=sys.stderr,
        )
        return 1


def _serving_outcome(instance: DagsterInstance, started_wall: float, served_here: bool) -> str:
    """With training settled and serving not current: "serve here" when no sensor will launch
    serving (nothing landed during this command, and `model_landed_sensor` has looked since
    and launched nothing), the failure of the serving run that saw every landed model, or ""
    while `model_landed_sensor` still has to launch one."""
    from ml_assets.cli.settle import last_landing, latest_run, sensor_ticks_after
    from ml_assets.state.runs import run_failure

    serve = latest_run(instance, SERVE_JOB)
    landed = last_landing(instance)
    nothing_new = landed < started_wall and (serve is None or serve.created < started_wall)
    if (
        not served_here
        and nothing_new
        and sensor_ticks_after(instance, MODEL_LANDED_SENSOR, started_wall)
    ):
        return "serve here"
    if serve is not None and serve.created >= landed and serve.status.value == "FAILURE":
        failure = run_failure(instance, serve.run_id).message
        return f"serving failed (run {serve.run_id[:8]}): {failure}"
    return ""


def _serve_here(force: frozenset[str]) -> int:
    from ml_assets.cli.local import run_job

    print("serving: selection, predictions, aggregation")
    serve = run_job(SERVE_JOB, tags=_force_tags(force))
    if serve.success:
        return 0
    print(f"error: serving failed (run {serve.run_id[:8]}): {serve.error}", file=sys.stderr)
    return 2 if serve.user_error else 1


def _score_batches(settings: Settings) -> int:
    """Score every request batch (`serving.requests`) whose answer is not from the current
    selection and file, here (the daemon's `request_batches_sensor` does it while it runs)."""
    from dagster import DagsterInstance

    from ml_assets.cli.local import run_partitions
    from ml_assets.core.config import default_config_path
    from ml_assets.state.planning import stale_batches

    base_dir = default_config_path().absolute().parent
    with DagsterInstance.get() as instance:
        stale = stale_batches(instance, settings, base_dir)
        known = set(instance.get_dynamic_partitions(BATCH_PARTITIONS))
        if new := [name for name in stale if name not in known]:
            instance.add_dynamic_partitions(BATCH_PARTITIONS, new)
    if not stale:
        print(f"request batches ({settings.serving.requests}): all current")
        return 0
    print(f"request batches: scoring {len(stale)} with the current selection…")
    failed = 0
    for outcome in run_partitions(BATCH_JOB, stale, settings.training.max_concurrent):
        first_line = outcome.error.splitlines()[0] if outcome.error else ""
        failed += not outcome.success
        print(f"  {outcome.partition:<24} {'ok' if outcome.success else 'FAILED: ' + first_line}")
    return 2 if failed else 0


def _up_to_date(settings: Settings) -> bool:
    """No candidate the sensor would train (given-up ones included) and serving already uses
    every landed model: no daemon needed."""
    from dagster import DagsterInstance

    from ml_assets.defs.resources import ArtifactStoreResource
    from ml_assets.state.planning import plan_training, serving_is_current

    store = ArtifactStoreResource().get()
    with DagsterInstance.get() as instance:
        plan = plan_training(instance, settings, store)
        pending = _pending(instance, plan, settings)
        return not pending and serving_is_current(instance, settings, store)


def _pending(instance: DagsterInstance, plan: TrainingPlan, settings: Settings) -> list[str]:
    """Candidates `candidates_sensor` will still train (the same rule: `training_attempt`):
    a failed run is retried up to `retries.max_retries` times, unless it failed on the
    candidate's own mistake."""
    from ml_assets.state.planning import training_attempt

    if plan.dataset_key is None:
        return []
    return [
        c.name
        for c in plan.to_train
        if not training_attempt(instance, c, plan.dataset_key, plan.landed.get(c.name, 0)).given_up(
            settings.retries.max_retries
        )
    ]


def apply_pool_limits(settings: Settings, training_slots: int | None = None) -> None:
    """The training pool's slots follow `training.max_concurrent` (see `defs/pools.py`)."""
    from dagster import DagsterInstance

    from ml_assets.defs.pools import apply_pool_limits as apply

    with DagsterInstance.get() as instance:
        apply(instance, training_slots or settings.training.max_concurrent)


def cmd_run(args: argparse.Namespace) -> int:
    """Ingest, train every candidate, select, serve and aggregate; only what changed runs."""
    from ml_assets.cli.preflight import check_configured_broker, check_store

    check_store()  # before anything is written
    broker = check_configured_broker()
    prepare_home()
    settings = load_settings()  # a ConfigError is reported by `main`
    from dagster import DagsterInstance

    from ml_assets.cli.status import collect_status, format_status
    from ml_assets.defs.resources import ArtifactStoreResource
    from ml_assets.state.partitions import sync_candidate_partitions
    from ml_assets.state.runs import reap_dead_runs

    started, started_wall = time.perf_counter(), time.time()
    apply_pool_limits(settings, args.max_concurrent)
    force = frozenset(f.strip() for f in args.force.split(",") if f.strip())
    if broker is not None:
        print(f"steps run on Celery workers ({BROKER_ENV}); `ml-assets worker` starts one")
    with DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"marked run {run_id[:8]} failed: the process executing it is gone")
        added, removed = sync_candidate_partitions(instance, [c.name for c in settings.candidates])
    if added or removed:
        print(f"candidates: +{added} -{removed}")
    ingest = _ingestion_reason(settings, force)
    if args.mode == "sync":
        if ingest is not None and (code := _ingest(ingest, force)):
            return code
        code = _run_sync(settings, args.max_concurrent or settings.training.max_concurrent, force)
    elif ingest is None and _up_to_date(settings):
        print("every candidate and the serving outputs are up to date: nothing to launch")
        code = 0
    else:
        if force - {INGESTED_DATASET.path[-1]}:
            print("note: --force applies to ingestion only in async mode; use --mode sync")
        code = _run_async(settings, args, started, started_wall, ingest, force)
    if code == 0 and settings.serving.requests is not None:
        code = _score_batches(settings)
    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings, ArtifactStoreResource().get())
    print()
    print(format_status(status, settings.selection.min_score, settings.selection.metric))
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.1f}s; runs are in the Dagster UI (`make dev`)")
    # Bad candidates do not stop the others, but the command says so and fails like any
    # other user error.
    mistakes = [e for e in status["leaderboard"] if e["status"] == "invalid" or e["user_error"]]
    for entry in mistakes:
        print(f"error: candidate {entry['name']!r}: {entry['note']}", file=sys.stderr)
    return 2 if mistakes and code == 0 else code
