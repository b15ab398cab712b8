"""Executing the workflow's jobs on this machine: in this process, or in a local pool of run
processes (`ml-assets run --mode sync`), recorded on the instance at `$DAGSTER_HOME`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path

from dagster import (
    DagsterInstance,
    JobDefinition,
    RunsFilter,
    execute_job,
    reconstructable,
)

from ml_assets.cli.postgres import (
    POSTGRES_ENV,
    check_postgres,
    dagster_url,
    instance_yaml,
    postgres_url,
)
from ml_assets.core.config import default_home
from ml_assets.core.names import (
    BATCH_JOB,
    INGEST_JOB,
    LAUNCH_TAG,
    PARTITION_TAG,
    PROCESS_TAG,
    SERVE_JOB,
    TRAIN_JOB,
)
from ml_assets.core.process import process_tag
from ml_assets.state.runs import fail_dead_run, run_failure

INSTANCE_CONFIG = "dagster.yaml"
# The run's full event log still goes to the instance (and the UI). The terminal gets what
# `ml-assets` prints of each run's outcome: one line per failure, not Dagster's stack traces.
QUIET_RUN_CONFIG: Mapping[str, object] = {
    "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}
}


def prepare_home(project_dir: Path | None = None) -> Path:
    """Set `ML_ASSETS_HOME`/`DAGSTER_HOME` and put the project's dagster.yaml there.

    A symlink, not a copy: Dagster reads the project's own file, so an edit applies to the next
    instance that loads and `dagster dev` (run from `DAGSTER_HOME`) has no other file to warn of.
    With `ML_ASSETS_POSTGRES_URL` set, the URL is tried first (a wrong one fails here, before
    anything is written), then the file is the project's plus Postgres storage
    (`cli/postgres.py`), rewritten at each start so project edits still apply.
    """
    url = postgres_url()
    if url is not None:
        check_postgres(url)
        # What Dagster reads, here and in every process this one starts (daemon, runs).
        os.environ[POSTGRES_ENV] = dagster_url(url)
    home = default_home()
    os.environ["ML_ASSETS_HOME"] = str(home)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").absolute()
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    source = ((project_dir or Path.cwd()) / INSTANCE_CONFIG).absolute()
    target = dagster_home / INSTANCE_CONFIG
    staging = dagster_home / f".{INSTANCE_CONFIG}.{uuid.uuid4().hex}"
    if url is not None:
        staging.write_text(instance_yaml(source.read_text() if source.is_file() else ""))
        staging.replace(target)  # atomic: a reader sees the old file or the new one
    elif source.is_file() and target.resolve() != source.resolve():
        staging.symlink_to(source)
        staging.replace(target)  # atomic: a reader sees the old file or the link
    elif _written_for_postgres(target) and not source.is_file():
        target.unlink()  # without the variable it cannot load
    return home


def _written_for_postgres(path: Path) -> bool:
    """True for an instance file `prepare_home` wrote while `ML_ASSETS_POSTGRES_URL` was set."""
    return path.is_file() and not path.is_symlink() and POSTGRES_ENV in path.read_text()


def _job(name: str) -> JobDefinition:
    from ml_assets.definitions import defs

    return defs.resolve_job_def(name)


def ingest_job() -> JobDefinition:
    return _job(INGEST_JOB)


def train_job() -> JobDefinition:
    return _job(TRAIN_JOB)


def serve_job() -> JobDefinition:
    return _job(SERVE_JOB)


def batch_job() -> JobDefinition:
    return _job(BATCH_JOB)


_JOBS: Mapping[str, Callable[[], JobDefinition]] = {
    INGEST_JOB: ingest_job,
    TRAIN_JOB: train_job,
    SERVE_JOB: serve_job,
    BATCH_JOB: batch_job,
}


@dataclass(frozen=True)
class RunOutcome:
    job: str
    partition: str | None
    run_id: str
    success: bool
    error: str
    user_error: bool = False  # failed on bad config, data or candidate (`failures.user_failure`)


def run_job(
    job: str, partition: str | None = None, tags: Mapping[str, str] | None = None
) -> RunOutcome:
    """Execute one job run in this process, recorded on the instance at `$DAGSTER_HOME`."""
    all_tags = {**(tags or {}), PROCESS_TAG: process_tag()}
    if partition is not None:
        all_tags[PARTITION_TAG] = partition
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(_JOBS[job]),
            instance=instance,
            tags=all_tags,
            run_config=QUIET_RUN_CONFIG,
        )
        if result.success:
            return RunOutcome(job, partition, result.run_id, True, "")
        failure = run_failure(instance, result.run_id)
        return RunOutcome(job, partition, result.run_id, False, failure.message, failure.user_error)


def quiet_library_warnings() -> None:
    """Dagster's beta/preview notices are for library authors, not for people running the
    workflow: the terminal shows what `ml-assets` says of each run."""
    warnings.filterwarnings("ignore", message=".*(beta|preview|deprecated).*")


def _serve_runs(connection: Connection) -> None:
    """A worker process: execute the runs sent over `connection`, one after another."""
    quiet_library_warnings()  # a spawned process starts with the default filters
    with contextlib.suppress(EOFError):  # the parent went away
        while (task := connection.recv()) is not None:
            connection.send(run_job(*task))


class _Worker:
    """A spawned process that executes runs one at a time (imports are paid once)."""

    def __init__(self) -> None:
        context = get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve_runs, args=(child,))
        self.process.start()
        child.close()

    def run(self, job: str, partition: str, tags: Mapping[str, str]) -> RunOutcome | None:
        """The run's outcome, or None when the process died during the run."""
        try:
            self.connection.send((job, partition, dict(tags)))
            outcome: RunOutcome = self.connection.recv()
        except (EOFError, OSError):
            self.process.join()
            return None
        return outcome

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join()
        self.connection.close()


def _mark_dead_run(job: str, partition: str, launch: str, exitcode: int | None) -> RunOutcome:
    """Fail the run of a process that died, so it does not stay 'started' on the instance."""
    how = (
        f"killed by {signal.Signals(-exitcode).name}"
        if exitcode and exitcode < 0
        else f"exit code {exitcode}"
    )
    reason = f"the run's process died ({how}) before the run finished: killed, or out of memory?"
    run_id = ""
    with DagsterInstance.get() as instance:
        for record in instance.get_run_records(RunsFilter(tags={LAUNCH_TAG: launch}), limit=1):
            run_id = record.dagster_run.run_id
            if not record.dagster_run.is_finished:
                fail_dead_run(instance, record.dagster_run, reason)
    return RunOutcome(job, partition, run_id, False, reason)


def run_partitions(
    job: str, partitions: list[str], max_workers: int, tags: Mapping[str, str] | None = None
) -> list[RunOutcome]:
    """One run per partition, at most `max_workers` at once, in worker processes. A worker that
    dies (killed, out of memory) fails only the run it was executing, which is marked failed on
    the instance, and is replaced; the other runs go on.

    Fills a Dagster gap: `execute_job` executes one run in the calling process, and Dagster's
    ways to start runs in other processes need a daemon (`QueuedRunCoordinator`) or a running
    code server (`instance.launch_run`); `--mode sync` is the way to run without either.
    """
    todo = list(partitions)
    outcomes: dict[str, RunOutcome] = {}
    lock = threading.Lock()

    def _drive() -> None:
        worker: _Worker | None = None
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    partition = todo.pop(0)
                worker = worker or _Worker()
                launch = uuid.uuid4().hex
                outcome = worker.run(job, partition, {**(tags or {}), LAUNCH_TAG: launch})
                if outcome is None:
                    outcome = _mark_dead_run(job, partition, launch, worker.process.exitcode)
                    worker = None
                outcomes[partition] = outcome
        finally:
            if worker is not None:
                worker.stop()

    workers = max(1, min(max_workers, len(todo)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(_drive) for _ in range(workers)]:
            future.result()
    return [outcomes[p] for p in partitions]
