"""Runs in flight on the instance, and the in-process runs whose process is gone.

Every run records the process executing it in `PROCESS_TAG` (host, pid namespace, pid and the
process's start time; `ArtifactStoreResource` stamps it when the run starts, `ml-assets run` when
it creates one). A run whose process was killed (by the OOM killer, or with the whole
`ml-assets run`) can then be told apart from one still going, ignored by the sensors and the
cache GC, and marked failed.
"""

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Final

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

PROCESS_TAG: Final = "ml_assets/process"
IN_PROGRESS_STATUSES: Final = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _start_ticks(pid: int) -> str:
    """When `pid` started (clock ticks since boot), or "-" where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "-"


def process_tag(pid: int | None = None) -> str:
    """`host/pid-namespace/pid/start` of this process: the pid alone could be reused."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_pid_namespace()}/{pid}/{_start_ticks(pid)}"


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run's executing process was on this host, in this pid namespace, and no
    longer exists (a reused pid has another start time).

    Runs without the tag, or from another host or container, are never called gone: only their
    own launcher can tell.
    """
    parts = tags.get(PROCESS_TAG, "").split("/")
    if len(parts) != 4:
        return False
    host, namespace, pid, start = parts
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        pass
    return start != "-" and _start_ticks(int(pid)) not in (start, "-")


def in_flight(
    instance: DagsterInstance,
    job_name: str | None = None,
    statuses: Sequence[DagsterRunStatus] = IN_PROGRESS_STATUSES,
) -> list[str]:
    """Ids of the runs (of `job_name`) queued or in progress whose process is not gone."""
    records = instance.get_run_records(RunsFilter(job_name=job_name, statuses=list(statuses)))
    return [r.dagster_run.run_id for r in records if not process_gone(r.dagster_run.tags)]


def reap_dead_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed every in-progress run whose executing process on this host is gone (a killed
    `ml-assets run`), so nothing waits on it and the cache GC stops keeping what it used."""
    reaped = []
    for record in instance.get_run_records(RunsFilter(statuses=list(IN_PROGRESS_STATUSES))):
        run = record.dagster_run
        if process_gone(run.tags):
            host_pid = run.tags[PROCESS_TAG]
            instance.report_run_failed(
                run, f"the process that executed this run ({host_pid}) is gone: killed?"
            )
            reaped.append(run.run_id)
    return reaped
