"""Running the workflow's jobs through Dagster's run machinery on the local instance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    RunsFilter,
    execute_job,
    reconstructable,
)

from ml_assets.config import default_home

INSTANCE_CONFIG = "dagster.yaml"
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


def run_job(
    job: str, partition: str | None = None, tags: Mapping[str, str] | None = None
) -> RunOutcome:
    """Execute one job run in this process, recorded on the instance at `$DAGSTER_HOME`."""
    all_tags = dict(tags or {})
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
            event.step_failure_data.error.message.strip()
            for event in result.get_step_failure_events()
            if event.step_failure_data.error is not None
        ]
        return RunOutcome(job, partition, result.run_id, result.success, "\n".join(errors))


def run_partitions(
    job: str, partitions: list[str], max_workers: int, tags: Mapping[str, str] | None = None
) -> list[RunOutcome]:
    """One run per partition, at most `max_workers` at once, each in its own process."""
    outcomes: list[RunOutcome] = []
    with ProcessPoolExecutor(max_workers=max_workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_job, job, p, tags) for p in partitions]
        for future in as_completed(futures):
            outcomes.append(future.result())
    return sorted(outcomes, key=lambda o: partitions.index(o.partition or ""))


IN_PROGRESS_STATUSES = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def runs_in_progress(instance: DagsterInstance) -> int:
    return instance.get_runs_count(RunsFilter(statuses=list(IN_PROGRESS_STATUSES)))


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


@contextmanager
def dagster_daemon(
    home: Path, project_dir: Path, log: Path
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run `dagster-daemon` over `$DAGSTER_HOME` for the block (None: one is already running)."""
    with DagsterInstance.get() as instance:
        if daemon_running(instance):
            yield None
            return
    executable = Path(sys.executable).parent / "dagster-daemon"
    command = (
        [str(executable)] if executable.exists() else [sys.executable, "-m", "dagster", "daemon"]
    )
    workspace = _workspace_file(home, project_dir)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "run", "-w", str(workspace)],
            cwd=project_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
