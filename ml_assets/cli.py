"""`ml-assets`: run the whole workflow, or show where it stands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ml_assets.config import ConfigError, Settings, load_settings
from ml_assets.runner import prepare_home


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    """Ingest, train every candidate (at most N at once), select, serve and aggregate."""
    prepare_home()
    settings = _load()
    from dagster import DagsterInstance

    from ml_assets.partitions import sync_candidate_partitions
    from ml_assets.runner import run_job, run_partitions
    from ml_assets.status import collect_status, format_status

    started = time.perf_counter()
    tags = {"ml_assets/force": args.force} if args.force else {}
    with DagsterInstance.get() as instance:
        added, removed = sync_candidate_partitions(instance, [c.name for c in settings.candidates])
    if added or removed:
        print(f"candidates: +{added} -{removed}")
    ingest = run_job("ingest_job", tags=tags)
    if not ingest.success:
        print(f"ingestion failed (run {ingest.run_id}):\n{ingest.error}", file=sys.stderr)
        return 1
    workers = args.max_concurrent or settings.training.max_concurrent
    print(f"training {len(settings.candidates)} candidates, at most {workers} at a time…")
    for outcome in run_partitions(
        "train_job", [c.name for c in settings.candidates], workers, tags
    ):
        verdict = (
            "ok"
            if outcome.success
            else f"FAILED: {outcome.error.splitlines()[0] if outcome.error else ''}"
        )
        print(f"  {outcome.partition:<24} {verdict}")
    serve = run_job("serve_job", tags=tags)
    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings)
    print()
    print(format_status(status, settings.selection.min_score))
    print(
        f"\nwall time {time.perf_counter() - started:.1f}s; runs are in the Dagster UI (`make dev`)"
    )
    if not serve.success:
        print(f"\nserving failed (run {serve.run_id}):\n{serve.error}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the leaderboard, the current selection and the latest aggregated predictions."""
    prepare_home()
    settings = _load()
    from dagster import DagsterInstance

    from ml_assets.status import collect_status, format_status

    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings)
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
        choices=["sync"],
        default="sync",
        help="sync: ingest, train every candidate, then serve once",
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
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
