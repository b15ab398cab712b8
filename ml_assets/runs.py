"""Runs in flight on the instance, and the in-process runs whose process is gone.

Runs the daemon launches are watched by Dagster's run monitoring. Runs that `ml-assets run`
executes in its own processes are not: each carries `PROCESS_TAG` (host and pid), so a run whose
process was killed can be told apart from one still going and marked failed.
"""

import os
import socket
from collections.abc import Mapping
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


def process_tag() -> str:
    """`host:pid` of this process, for the runs it executes in-process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run was executed by a process on this host that no longer exists.

    Runs without the tag, or from another host, are never called gone: only their own
    launcher can tell. A reused pid reads as alive, which errs on the safe side.
    """
    host, _, pid = tags.get(PROCESS_TAG, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def in_flight(instance: DagsterInstance, job_name: str | None = None) -> list[str]:
    """Ids of the runs (of `job_name`) queued or in progress whose process is not gone."""
    records = instance.get_run_records(
        RunsFilter(job_name=job_name, statuses=list(IN_PROGRESS_STATUSES))
    )
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
