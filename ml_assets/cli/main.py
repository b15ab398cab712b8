"""`ml-assets`: run the whole workflow, or show where it stands."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ml_assets.cli.args import POSITIVE_INT, at_least
from ml_assets.cli.local import prepare_home, quiet_library_warnings
from ml_assets.cli.run import apply_pool_limits, cmd_run
from ml_assets.cli.serve import add_serve_parser
from ml_assets.cli.worker import add_worker_parser
from ml_assets.core.config import load_settings
from ml_assets.errors import find_user_error


def cmd_status(args: argparse.Namespace) -> int:
    """Print the leaderboard, the current selection and the latest aggregated predictions."""
    prepare_home()
    settings = load_settings()  # a ConfigError is reported by `main`
    from dagster import DagsterInstance

    from ml_assets.cli.status import collect_status, format_status
    from ml_assets.defs.resources import ArtifactStoreResource

    with DagsterInstance.get() as instance:
        status = collect_status(instance, settings, ArtifactStoreResource().get())
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(format_status(status, settings.selection.min_score, settings.selection.metric))
    return 0


def cmd_home(args: argparse.Namespace) -> int:
    """Prepare `.ml_assets/` and print the environment the Dagster commands need."""
    import os

    prepare_home()
    print(f"export ML_ASSETS_HOME={os.environ['ML_ASSETS_HOME']}")
    print(f"export DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    return 0


def dev_command(dagster: str, host: str, port: int) -> list[str]:
    """The `dagster dev` command line of `ml-assets dev`."""
    from ml_assets.cli.daemon import code_location_args

    return [dagster, "dev", "-h", host, "-p", str(port), *code_location_args()]


def cmd_dev(args: argparse.Namespace) -> int:
    """The Dagster UI and daemon over `.ml_assets/` (what `make dev` runs)."""
    import os
    import shutil

    from dagster import DagsterInstance

    from ml_assets.cli.daemon import DaemonLock, code_location_env, daemon_on_instance
    from ml_assets.cli.preflight import check_configured_broker, check_store
    from ml_assets.core.config import CONFIG_ENV, default_config_path

    check_store()  # before anything is written
    check_configured_broker()
    home = prepare_home()
    settings = load_settings()  # a ConfigError is reported by `main`
    apply_pool_limits(settings)
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
    command = dev_command(dagster, args.host, args.port)
    # From DAGSTER_HOME, whose dagster.yaml is the project's own (a symlink): `dagster dev`
    # reads the instance there and finds no other dagster.yaml in its working directory.
    os.chdir(os.environ["DAGSTER_HOME"])
    os.execve(command[0], command, code_location_env(os.environ))


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a YouTube-8M-shaped multi-label dataset, deterministic by seed: one Parquet file,
    or video-level TFRecord shards and a vocabulary.csv."""
    from ml_assets.ml.synthetic import write_video_shards, write_videos, write_vocabulary

    parser: argparse.ArgumentParser = args.generate_parser
    output = Path(args.output)
    if args.format == "parquet":
        if args.shards is not None:
            parser.error("--shards is for --format tfrecord")
        if output.is_dir():
            parser.error(f"{output} is a directory; --format parquet writes one file")
        path = write_videos(
            output,
            rows=args.rows,
            entities=args.entities,
            seed=args.seed,
            rgb_dims=args.rgb_dims,
            audio_dims=args.audio_dims,
        )
        print(f"wrote {args.rows} videos × {args.entities} entities to {path}")
        return 0
    shards = 4 if args.shards is None else args.shards
    if shards > args.rows:
        parser.error(f"--shards {shards} is more than --rows {args.rows}")
    if output.exists() and not output.is_dir():
        parser.error(f"{output} is a file; --format tfrecord writes shards into a directory")
    paths = write_video_shards(
        output,
        rows=args.rows,
        entities=args.entities,
        shards=shards,
        seed=args.seed,
        rgb_dims=args.rgb_dims,
        audio_dims=args.audio_dims,
    )
    vocabulary = write_vocabulary(output / "vocabulary.csv", args.entities, rows=args.rows)
    source = str(output / f"{paths[0].name[: -len('0000.tfrecord')]}*.tfrecord")
    settings = ", ".join(
        f"{key}: {json.dumps(value)}"
        for key, value in (
            ("source", source),
            ("label", "labels"),
            ("id", "id"),
            ("vocabulary", str(vocabulary)),
        )
    )
    print(
        f"wrote {args.rows} videos × {args.entities} entities to {output}: {paths[0].name} … "
        f"{paths[-1].name} ({len(paths)} TFRecord shards) and {vocabulary.name}; "
        f"dataset: {{{settings}}}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-assets", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a configuration or data error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__)
    run.add_argument(
        "--max-concurrent", type=POSITIVE_INT, default=None, help="training runs at once"
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
    generate.add_argument(
        "output",
        help="parquet: the file to write, e.g. data/videos.parquet; tfrecord: the directory "
        "that gets train0000.tfrecord … and vocabulary.csv, e.g. data/yt8m",
    )
    generate.add_argument(
        "--format",
        choices=["parquet", "tfrecord"],
        default="parquet",
        help="parquet (default): one file; tfrecord: YouTube-8M video-level shards",
    )
    generate.add_argument(
        "--shards", type=at_least(1), default=None, help="tfrecord: how many shards (default 4)"
    )
    generate.add_argument("--rows", type=at_least(1), default=20_000)
    generate.add_argument("--entities", type=at_least(2), default=20)
    generate.add_argument("--seed", type=at_least(0), default=0)
    generate.add_argument("--rgb-dims", type=at_least(1), default=1024)
    generate.add_argument("--audio-dims", type=at_least(1), default=128)
    generate.set_defaults(func=cmd_generate, generate_parser=generate)
    dev = sub.add_parser("dev", help=cmd_dev.__doc__)
    dev.add_argument("--host", default="127.0.0.1", help="the UI's address (no authentication)")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)
    home = sub.add_parser("home", help=cmd_home.__doc__)
    home.set_defaults(func=cmd_home)
    add_worker_parser(sub)
    add_serve_parser(sub)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_warnings()
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
