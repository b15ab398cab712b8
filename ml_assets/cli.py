"""`ml-assets`: run the whole workflow, or show where it stands."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ml_assets.config import Settings, load_settings
from ml_assets.errors import find_user_error
from ml_assets.runner import prepare_home
from ml_assets.tags import DATASET_TAG, FORCE_TAG

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from ml_assets.planning import TrainingPlan


def _load() -> Settings:
    return load_settings()  # a ConfigError is reported by `main` (one line per problem)


def _ingestion_reason(settings: Settings, force: frozenset[str]) -> str | None:
    """Why ingestion must run (the memoization rules, or --force), or None to skip it."""
    from dagster import AssetKey, DagsterInstance

    from ml_assets.assets.ingestion import ingestion_decision
    from ml_assets.lineage import latest_record
    from ml_assets.memo import IngestionState
    from ml_assets.resources import SettingsResource

    with DagsterInstance.get() as instance:
        record = latest_record(instance, AssetKey("ingested_dataset"))
    previous = None if record is None else IngestionState.from_metadata(record.metadata)
    decision, _ = ingestion_decision(SettingsResource(), previous, time.time())
    if force & {"all", "ingested_dataset"}:
        return "forced"
    if not decision.run:
        print(f"ingestion skipped: {decision.reason}")
        return None
    return decision.reason


def _ingest(reason: str, force: frozenset[str]) -> int:
    """Ingest in this process; 0 on success, else the exit status (2: bad config or data)."""
    from ml_assets.runner import run_job

    print(f"ingesting: {reason}")
    outcome = run_job("ingest_job", tags=_force_tags(force))
    if outcome.success:
        return 0
    print(f"error: ingestion failed (run {outcome.run_id[:8]}): {outcome.error}", file=sys.stderr)
    return 2 if outcome.user_error else 1


def _force_tags(force: frozenset[str]) -> dict[str, str]:
    return {FORCE_TAG: ",".join(sorted(force))} if force else {}


def _run_sync(settings: Settings, workers: int, force: frozenset[str]) -> int:
    """Train what the plan says, one run per candidate (N at once), then serve once."""
    from dagster import DagsterInstance

    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.runner import run_partitions

    store = ArtifactStoreResource().get()
    with DagsterInstance.get() as instance:
        plan = plan_training(instance, settings, store, force)
    if plan.up_to_date:
        print(f"up to date (no run): {', '.join(plan.up_to_date)}")
    names = [c.name for c in plan.to_train] + sorted(plan.invalid)
    if names:
        print(f"training {len(names)} candidate(s), at most {workers} at a time…")
        tags = {**_force_tags(force), DATASET_TAG: plan.dataset_key or ""}
        for outcome in run_partitions("train_job", names, workers, tags):
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
    from dagster import AssetKey, DagsterInstance, RunsFilter

    from ml_assets.config import default_home
    from ml_assets.lineage import latest_record
    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.runner import daemon_on_instance, dagster_daemon
    from ml_assets.runs import in_flight
    from ml_assets.settle import Watchdog

    store = ArtifactStoreResource().get()
    home = default_home()
    log = home / "daemon.log"
    first_prediction: float | None = None
    since = datetime.fromtimestamp(started_wall, tz=UTC)
    served_here = False

    def ingestion_recorded() -> bool:
        # The daemon starts once our ingestion run is on the instance, so its sensors see it
        # in flight (and neither launch a second one nor train on the dataset it replaces).
        return probe.get_runs_count(RunsFilter(job_name="ingest_job", created_after=since)) > 0

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
        before = latest_record(instance, AssetKey("aggregated_predictions"))
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
            aggregated = latest_record(instance, AssetKey("aggregated_predictions"))
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
                waiting, sensor = "the first ingestion", "dataset_sensor"
            elif pending:
                waiting, sensor = f"training of {', '.join(pending)}", "candidates_sensor"
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
                waiting, sensor = "a serving run with the models landed", "model_landed_sensor"
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
    from ml_assets.runs import run_failure
    from ml_assets.settle import last_landing, latest_run, sensor_ticks_after

    serve = latest_run(instance, "serve_job")
    landed = last_landing(instance)
    nothing_new = landed < started_wall and (serve is None or serve.created < started_wall)
    if (
        not served_here
        and nothing_new
        and sensor_ticks_after(instance, "model_landed_sensor", started_wall)
    ):
        return "serve here"
    if serve is not None and serve.created >= landed and serve.status.value == "FAILURE":
        failure = run_failure(instance, serve.run_id).message
        return f"serving failed (run {serve.run_id[:8]}): {failure}"
    return ""


def _serve_here(force: frozenset[str]) -> int:
    from ml_assets.runner import run_job

    print("serving: selection, predictions, aggregation")
    serve = run_job("serve_job", tags=_force_tags(force))
    if serve.success:
        return 0
    print(f"error: serving failed (run {serve.run_id[:8]}): {serve.error}", file=sys.stderr)
    return 2 if serve.user_error else 1


def _up_to_date(settings: Settings) -> bool:
    """No candidate the sensor would train (given-up ones included) and serving already uses
    every landed model: no daemon needed."""
    from dagster import DagsterInstance

    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource

    store = ArtifactStoreResource().get()
    with DagsterInstance.get() as instance:
        plan = plan_training(instance, settings, store)
        pending = _pending(instance, plan, settings)
        return not pending and serving_is_current(instance, settings, store)


def _pending(instance: DagsterInstance, plan: TrainingPlan, settings: Settings) -> list[str]:
    """Candidates `candidates_sensor` will still train (the same rule: `training_attempt`):
    a failed run is retried up to `retries.max_retries` times, unless it failed on the
    candidate's own mistake."""
    from ml_assets.planning import training_attempt

    if plan.dataset_key is None:
        return []
    return [
        c.name
        for c in plan.to_train
        if not training_attempt(instance, c, plan.dataset_key).given_up(
            settings.retries.max_retries
        )
    ]


def _apply_pool_limits(settings: Settings, training_slots: int | None = None) -> None:
    """The training pool's slots follow `training.max_concurrent` (see `ml_assets/pools.py`)."""
    from dagster import DagsterInstance

    from ml_assets.pools import apply_pool_limits

    with DagsterInstance.get() as instance:
        apply_pool_limits(instance, training_slots or settings.training.max_concurrent)


def cmd_run(args: argparse.Namespace) -> int:
    """Ingest, train every candidate, select, serve and aggregate; only what changed runs."""
    prepare_home()
    settings = _load()
    from dagster import DagsterInstance

    from ml_assets.partitions import sync_candidate_partitions
    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.runs import reap_dead_runs
    from ml_assets.status import collect_status, format_status

    started, started_wall = time.perf_counter(), time.time()
    _apply_pool_limits(settings, args.max_concurrent)
    force = frozenset(f.strip() for f in args.force.split(",") if f.strip())
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
        if force - {"ingested_dataset"}:
            print("note: --force applies to ingestion only in async mode; use --mode sync")
        code = _run_async(settings, args, started, started_wall, ingest, force)
    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings, ArtifactStoreResource().get())
    print()
    print(format_status(status, settings.selection.min_score))
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.1f}s; runs are in the Dagster UI (`make dev`)")
    # Bad candidates do not stop the others, but the command says so and fails like any
    # other user error.
    mistakes = [e for e in status["leaderboard"] if e["status"] == "invalid" or e["user_error"]]
    for entry in mistakes:
        print(f"error: candidate {entry['name']!r}: {entry['note']}", file=sys.stderr)
    return 2 if mistakes and code == 0 else code


def cmd_status(args: argparse.Namespace) -> int:
    """Print the leaderboard, the current selection and the latest aggregated predictions."""
    prepare_home()
    settings = _load()
    from dagster import DagsterInstance

    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.status import collect_status, format_status

    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings, ArtifactStoreResource().get())
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(format_status(status, settings.selection.min_score))
    return 0


def cmd_home(args: argparse.Namespace) -> int:
    """Prepare `.ml_assets/` and print the environment the Dagster commands need."""
    import os

    prepare_home()
    print(f"export ML_ASSETS_HOME={os.environ['ML_ASSETS_HOME']}")
    print(f"export DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    return 0


def dev_command(dagster: str, host: str, port: int, workspace: Path) -> list[str]:
    """The `dagster dev` command line of `ml-assets dev`."""
    return [dagster, "dev", "-h", host, "-p", str(port), "-w", str(workspace)]


def cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI and daemon over `.ml_assets/` (what `make dev` runs)."""
    import os
    import shutil

    from dagster import DagsterInstance

    from ml_assets.config import CONFIG_ENV, default_config_path
    from ml_assets.runner import DaemonLock, daemon_on_instance, workspace_file

    home = prepare_home()
    settings = _load()
    _apply_pool_limits(settings)
    # The code server resolves the config from its own working directory otherwise.
    os.environ[CONFIG_ENV] = str(default_config_path().absolute())
    lock = DaemonLock(home)
    if not lock.acquire("ml-assets dev"):
        with DagsterInstance.get() as instance:
            who = daemon_on_instance(home, instance) or "another ml-assets process"
        print(f"error: a daemon already runs on this instance ({who}); stop it first")
        return 1
    assert lock.fd is not None
    os.set_inheritable(lock.fd, True)  # `dagster dev` holds it from here on, as long as it runs
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or shutil.which(
        "dagster"
    )
    if dagster is None:
        print("error: the `dagster` command is not installed next to this Python")
        return 1
    command = dev_command(dagster, args.host, args.port, workspace_file(home, Path.cwd()))
    # From DAGSTER_HOME, whose dagster.yaml is the project's own (a symlink): `dagster dev`
    # reads the instance there and finds no other dagster.yaml in its working directory.
    os.chdir(os.environ["DAGSTER_HOME"])
    os.execv(command[0], command)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a YouTube-8M-shaped multi-label Parquet file (deterministic by seed)."""
    from ml_assets.ml.synthetic import write_videos

    path = write_videos(
        Path(args.output),
        rows=args.rows,
        entities=args.entities,
        seed=args.seed,
        rgb_dims=args.rgb_dims,
        audio_dims=args.audio_dims,
    )
    print(f"wrote {args.rows} videos × {args.entities} entities to {path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 64, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-assets", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a configuration or data error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__)
    run.add_argument(
        "--max-concurrent", type=_positive_int, default=None, help="training runs at once"
    )
    run.add_argument(
        "--mode",
        choices=["async", "sync"],
        default="async",
        help="async (default): the daemon's sensors serve as each model lands; "
        "sync: train every candidate here, then serve once",
    )
    run.add_argument(
        "--timeout", type=float, default=3600.0, help="async: give up after this many seconds"
    )
    run.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="async: give up when no run was launched or changed for this many seconds",
    )
    run.add_argument(
        "--force",
        default="",
        help="recompute despite memoization: 'all', or comma-separated steps/candidates",
    )
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help=cmd_status.__doc__)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    generate = sub.add_parser("generate", help=cmd_generate.__doc__)
    generate.add_argument("output", help="the Parquet file to write, e.g. data/videos.parquet")
    generate.add_argument("--rows", type=int, default=20_000)
    generate.add_argument("--entities", type=int, default=20)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--rgb-dims", type=int, default=1024)
    generate.add_argument("--audio-dims", type=int, default=128)
    generate.set_defaults(func=cmd_generate)
    dev = sub.add_parser("dev", help=cmd_dev.__doc__)
    dev.add_argument("--host", default="127.0.0.1", help="the UI's address (no authentication)")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)
    home = sub.add_parser("home", help=cmd_home.__doc__)
    home.set_defaults(func=cmd_home)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster's beta/preview notices are for library authors, not for people running the workflow.
    warnings.filterwarnings("ignore", message=".*(beta|preview|deprecated).*")
    args = build_parser().parse_args(argv)
    # `kill` or a closed terminal unwinds like Ctrl-C, so a daemon this command started is
    # stopped (and its lock released) rather than left running without anyone to stop it.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # A user's mistake is one line naming the file, key, column or candidate; anything
        # else is a bug and keeps its traceback.
        mistake = find_user_error(error)
        if mistake is None or args.debug:
            raise
        print(f"error: {mistake}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
