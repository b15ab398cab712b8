"""`ml-assets`: run the whole workflow, or show where it stands."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ml_assets.config import ConfigError, Settings, load_settings
from ml_assets.runner import prepare_home
from ml_assets.tags import DATASET_TAG, FORCE_TAG

if TYPE_CHECKING:
    from dagster import DagsterInstance


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


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


def _ingest(reason: str, force: frozenset[str]) -> bool:
    from ml_assets.runner import run_job

    print(f"ingesting: {reason}")
    outcome = run_job("ingest_job", tags=_force_tags(force))
    if not outcome.success:
        print(f"ingestion failed (run {outcome.run_id}):\n{outcome.error}", file=sys.stderr)
    return outcome.success


def _force_tags(force: frozenset[str]) -> dict[str, str]:
    return {FORCE_TAG: ",".join(sorted(force))} if force else {}


def _run_sync(settings: Settings, workers: int, force: frozenset[str]) -> int:
    """Train what the plan says, one run per candidate (N at once), then serve once."""
    from dagster import DagsterInstance

    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.runner import run_job, run_partitions

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
    serve = run_job("serve_job", tags=_force_tags(force))
    if not serve.success:
        print(f"serving failed (run {serve.run_id}):\n{serve.error}", file=sys.stderr)
        return 1
    return 0


def _run_async(
    settings: Settings,
    timeout: float,
    started: float,
    started_wall: float,
    ingest: str | None,
    force: frozenset[str],
) -> int:
    """Let the daemon's sensors drive training and serving; wait until everything settled.

    Ingestion (when `ingest` gives a reason) runs here while the daemon starts up: its sensors
    wait for an ingestion in flight instead of launching a second one or training on the
    dataset it replaces."""
    from pathlib import Path

    from dagster import AssetKey, DagsterInstance, RunsFilter

    from ml_assets.config import default_home
    from ml_assets.lineage import latest_record
    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource
    from ml_assets.runner import dagster_daemon
    from ml_assets.runs import in_flight

    store = ArtifactStoreResource().get()
    home = default_home()
    log = home / "daemon.log"
    first_prediction: float | None = None
    settled_polls = 0
    since = datetime.fromtimestamp(started_wall, tz=UTC)

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
        if daemon is None:
            print("a daemon is already running on this instance (make dev?); using it")
        else:
            print(f"daemon starting; sensors drive training and serving (log: {log})")
        before = latest_record(instance, AssetKey("aggregated_predictions"))
        if ingest is not None and not _ingest(ingest, force):
            return 1
        while time.perf_counter() - started < timeout:
            time.sleep(1.0)
            if daemon is not None and (code := daemon.exit_code()) is not None:
                print(f"error: the daemon exited ({code}); see {log}", file=sys.stderr)
                return 1
            aggregated = latest_record(instance, AssetKey("aggregated_predictions"))
            if first_prediction is None and aggregated is not None and aggregated != before:
                first_prediction = time.perf_counter() - started
                print(
                    f"first aggregated predictions after {first_prediction:.1f}s: "
                    f"{aggregated['models']}"
                )
            if in_flight(instance):
                # The cheap question first: planning costs ~0.1 s of CPU that the training
                # and serving runs need more while anything is queued or running.
                settled_polls = 0
                continue
            plan = plan_training(instance, settings, store)
            failed = _failed_since(instance, started_wall)
            pending = [c.name for c in plan.to_train if c.name not in failed]
            done = plan.dataset_key is not None and not pending
            settled_polls = settled_polls + 1 if done else 0
            current = settled_polls >= 2 and serving_is_current(instance, settings, store)
            if current or settled_polls >= 15:  # 15 s idle: nothing qualified to serve
                break
        else:
            print(f"error: not settled after {timeout:.0f}s (see the UI or {log})", file=sys.stderr)
            return 1
    return 0


def _up_to_date(settings: Settings) -> bool:
    """No candidate to (re)train and serving already uses every landed model: no daemon needed."""
    from dagster import DagsterInstance

    from ml_assets.planning import plan_training, serving_is_current
    from ml_assets.resources import ArtifactStoreResource

    store = ArtifactStoreResource().get()
    with DagsterInstance.get() as instance:
        plan = plan_training(instance, settings, store)
        return not plan.to_train and serving_is_current(instance, settings, store)


def _failed_since(instance: DagsterInstance, started_wall: float) -> set[str]:
    """Candidates whose training run since `started_wall` failed."""
    from dagster import DagsterRunStatus, RunsFilter

    records = instance.get_run_records(
        RunsFilter(job_name="train_job", statuses=[DagsterRunStatus.FAILURE]),
        limit=500,
    )
    return {
        r.dagster_run.tags.get("dagster/partition", "")
        for r in records
        if r.create_timestamp.timestamp() >= started_wall
    }


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
    force = frozenset(f.strip() for f in args.force.split(",") if f.strip())
    with DagsterInstance.get() as instance:
        for run_id in reap_dead_runs(instance):
            print(f"marked run {run_id[:8]} failed: the process executing it is gone")
        added, removed = sync_candidate_partitions(instance, [c.name for c in settings.candidates])
    if added or removed:
        print(f"candidates: +{added} -{removed}")
    ingest = _ingestion_reason(settings, force)
    if args.mode == "sync":
        if ingest is not None and not _ingest(ingest, force):
            return 1
        code = _run_sync(settings, args.max_concurrent or settings.training.max_concurrent, force)
    elif ingest is None and _up_to_date(settings):
        print("every candidate and the serving outputs are up to date: nothing to launch")
        code = 0
    else:
        if force - {"ingested_dataset"}:
            print("note: --force applies to ingestion only in async mode; use --mode sync")
        code = _run_async(settings, args.timeout, started, started_wall, ingest, force)
    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings, ArtifactStoreResource().get())
    print()
    print(format_status(status, settings.selection.min_score))
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.1f}s; runs are in the Dagster UI (`make dev`)")
    return code


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


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a YouTube-8M-shaped multi-label Parquet file (deterministic by seed)."""
    from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__)
    run.add_argument("--max-concurrent", type=int, default=None, help="training runs at once")
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
    home = sub.add_parser("home", help=cmd_home.__doc__)
    home.set_defaults(func=cmd_home)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster's beta/preview notices are for library authors, not for people running the workflow.
    warnings.filterwarnings("ignore", message=".*(beta|preview|deprecated).*")
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
