"""Running the workflow's jobs through Dagster's run machinery on the local instance."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from dagster import (
    DagsterInstance,
    JobDefinition,
    RunsFilter,
    execute_job,
    reconstructable,
)

from ml_assets.config import default_home
from ml_assets.runs import PROCESS_TAG, process_tag

INSTANCE_CONFIG = "dagster.yaml"
LAUNCH_TAG = "ml_assets/launch"  # finds the run of a process that died before reporting it
# The run's full event log still goes to the instance (and the UI); the terminal gets warnings.
QUIET_RUN_CONFIG: Mapping[str, object] = {
    "loggers": {"console": {"config": {"log_level": "WARNING"}}}
}


def prepare_home(project_dir: Path | None = None) -> Path:
    """Set `ML_ASSETS_HOME`/`DAGSTER_HOME` and install the project's dagster.yaml there."""
    home = default_home()
    os.environ["ML_ASSETS_HOME"] = str(home)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    source = (project_dir or Path.cwd()) / INSTANCE_CONFIG
    target = dagster_home / INSTANCE_CONFIG
    if source.is_file() and source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return home


def _job(name: str) -> JobDefinition:
    from ml_assets.definitions import defs

    return defs.resolve_job_def(name)


def ingest_job() -> JobDefinition:
    return _job("ingest_job")


def train_job() -> JobDefinition:
    return _job("train_job")


def serve_job() -> JobDefinition:
    return _job("serve_job")


_JOBS: Mapping[str, Callable[[], JobDefinition]] = {
    "ingest_job": ingest_job,
    "train_job": train_job,
    "serve_job": serve_job,
}


@dataclass(frozen=True)
class RunOutcome:
    job: str
    partition: str | None
    run_id: str
    success: bool
    error: str


class ErrorInfo(Protocol):
    """The parts of Dagster's serialized step error that `failure_text` reads."""

    @property
    def message(self) -> str: ...

    @property
    def cls_name(self) -> str | None: ...

    @property
    def cause(self) -> ErrorInfo | None: ...


def failure_text(error: ErrorInfo) -> str:
    """A failed step's error as a person needs it: once a retried step gives up, Dagster's
    message is only "Exceeded max_retries of N", so the error that was retried comes first."""
    if error.cls_name == "RetryRequestedFromPolicy" and error.cause is not None:
        return f"{failure_text(error.cause)}\n({error.message.strip()})"
    return error.message.strip()


def run_job(
    job: str, partition: str | None = None, tags: Mapping[str, str] | None = None
) -> RunOutcome:
    """Execute one job run in this process, recorded on the instance at `$DAGSTER_HOME`."""
    all_tags = {**(tags or {}), PROCESS_TAG: process_tag()}
    if partition is not None:
        all_tags["dagster/partition"] = partition
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(_JOBS[job]),
            instance=instance,
            tags=all_tags,
            run_config=QUIET_RUN_CONFIG,
        )
        errors = [
            failure_text(event.step_failure_data.error)
            for event in result.get_step_failure_events()
            if event.step_failure_data.error is not None
        ]
        return RunOutcome(job, partition, result.run_id, result.success, "\n".join(errors))


def _serve_runs(connection: Connection) -> None:
    """A worker process: execute the runs sent over `connection`, one after another."""
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
                instance.report_run_failed(record.dagster_run, reason)
    return RunOutcome(job, partition, run_id, False, reason)


def run_partitions(
    job: str, partitions: list[str], max_workers: int, tags: Mapping[str, str] | None = None
) -> list[RunOutcome]:
    """One run per partition, at most `max_workers` at once, in worker processes. A worker that
    dies (killed, out of memory) fails only the run it was executing, which is marked failed on
    the instance, and is replaced; the other runs go on."""
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


def _workspace_file(home: Path, project_dir: Path) -> Path:
    """A workspace pointing at the project, so the daemon finds the code wherever it runs."""
    path = home / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: ml_assets.definitions\n"
        f"      working_directory: {project_dir}\n"
        "      location_name: ml_assets\n"
    )
    return path


def daemon_running(instance: DagsterInstance, within_seconds: float = 30.0) -> bool:
    """True when a sensor daemon (e.g. `make dev`'s) heartbeat is recent on this instance."""
    heartbeat = instance.get_daemon_heartbeats().get("SENSOR")
    return heartbeat is not None and time.time() - heartbeat.timestamp < within_seconds


class Daemon:
    """A `dagster-daemon run` child process in its own session, started at most once."""

    def __init__(self, command: list[str], cwd: Path, log: Path) -> None:
        self._command, self._cwd, self._log = command, cwd, log
        self._lock = threading.Lock()
        self._stopped = False
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._lock:
            if self.process is not None or self._stopped:
                return
            with self._log.open("ab") as out:
                self.process = subprocess.Popen(
                    self._command,
                    cwd=self._cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def exit_code(self) -> int | None:
        """The exit code once the daemon has exited; None while it runs or before it starts."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def dagster_daemon(
    home: Path,
    project_dir: Path,
    log: Path,
    start_when: Callable[[], bool] | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Daemon | None]:
    """Run `dagster-daemon` over `$DAGSTER_HOME` for the block (None: one is already running).

    With `start_when`, a thread starts it once that holds (or after `start_timeout`), so the
    caller can first put something on the instance its sensors must see (an ingestion run).
    """
    with DagsterInstance.get() as instance:
        if daemon_running(instance):
            yield None
            return
    executable = Path(sys.executable).parent / "dagster-daemon"
    command = (
        [str(executable)] if executable.exists() else [sys.executable, "-m", "dagster", "daemon"]
    )
    workspace = _workspace_file(home, project_dir)
    daemon = Daemon([*command, "run", "-w", str(workspace)], project_dir, log)
    leaving = threading.Event()

    def _start_when_ready() -> None:
        deadline = time.monotonic() + start_timeout
        while start_when is not None and not start_when() and time.monotonic() < deadline:
            if leaving.wait(0.1):
                return
        if not leaving.is_set():
            daemon.start()

    waiter = None
    if start_when is None:
        daemon.start()
    else:
        waiter = threading.Thread(target=_start_when_ready, name="start-daemon", daemon=True)
        waiter.start()
    try:
        yield daemon
    finally:
        leaving.set()
        if waiter is not None:
            waiter.join()
        daemon.stop()
