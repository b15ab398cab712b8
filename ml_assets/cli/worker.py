"""`ml-assets worker`: a Celery worker that executes the workflow's steps (dagster-celery).

Start one on any machine that has the project installed and the same environment
(`ML_ASSETS_CELERY_BROKER`, `ML_ASSETS_POSTGRES_URL`, `ML_ASSETS_STORE`, the config file): it
consumes the queues it is given (`core/names.py`), each step in a process of its own pool.
"""

from __future__ import annotations

import argparse
import os

from ml_assets.cli.args import POSITIVE_INT
from ml_assets.core.names import QUEUES
from ml_assets.core.workers import queue_name


def worker_argv(queues: list[str], concurrency: int, loglevel: str) -> list[str]:
    """The `celery worker` arguments: named after its queues and pid, so several workers on
    one host are told apart (in the worker metadata's `host:pid` and in Celery's own tools)."""
    return [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel,
        "--hostname",
        f"ml-assets-{'-'.join(q.rsplit('.', 1)[-1] for q in queues)}-{os.getpid()}@%h",
        # No gossip/mingle/heartbeat chatter between workers: Dagster tracks the steps.
        "--without-gossip",
        "--without-mingle",
    ]


def cmd_worker(args: argparse.Namespace) -> int:
    """Execute the workflow's steps from the broker's queues (training, serving, or both)."""
    from ml_assets.cli.local import prepare_home
    from ml_assets.cli.preflight import check_store, require_broker
    from ml_assets.core.config import CONFIG_ENV, default_config_path, load_settings

    check_store()  # before anything is written
    broker = require_broker()
    prepare_home()
    load_settings()  # a broken config is one line now, not a failure in every step
    # Steps resolve the config from the worker's working directory otherwise.
    os.environ[CONFIG_ENV] = str(default_config_path().absolute())

    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    import ml_assets.definitions  # noqa: F401  (imported once here: every pool process has it)
    from ml_assets.defs.executor import celery_app_args

    app = make_app(celery_app_args(broker))
    create_task(app)
    if args.loglevel != "DEBUG":
        # Celery logs each step's result at INFO: the step's serialized events, kilobytes each.
        from celery.signals import after_setup_logger

        after_setup_logger.connect(_quiet_task_results, weak=False)
    queues = [queue_name(q) for q in ([args.queue] if args.queue else QUEUES)]
    print(f"worker for queue(s) {', '.join(queues)}, {args.concurrency} step(s) at a time")
    app.worker_main(worker_argv(queues, args.concurrency, args.loglevel))
    return 0


def _quiet_task_results(**_: object) -> None:
    import logging

    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


def add_worker_parser(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help=cmd_worker.__doc__)
    worker.add_argument(
        "--queue", choices=QUEUES, default=None, help="the one queue to consume (default: both)"
    )
    worker.add_argument(
        "--concurrency", type=POSITIVE_INT, default=1, help="steps executed at once (processes)"
    )
    worker.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    worker.set_defaults(func=cmd_worker)
