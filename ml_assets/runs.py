"""Runs in flight on the instance, and the in-process runs whose process is gone.

Every run records the process executing it in `PROCESS_TAG` (host, pid namespace, pid and the
process's start time; `ArtifactStoreResource` stamps it when the run starts, `ml-assets run` when
it creates one). A run whose process was killed (by the OOM killer, or with the whole
`ml-assets run`) can then be told apart from one still going, ignored by the sensors and the
cache GC, and marked failed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from ml_assets.errors import USER_ERROR_METADATA

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


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name ([] where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> str:
    """When `pid` started (clock ticks since boot), or "-" where /proc does not say."""
    fields = _stat_fields(pid)
    return fields[19].decode() if len(fields) > 19 else "-"


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
    fields = _stat_fields(int(pid))
    if fields[:1] in ([b"Z"], [b"X"]):
        # Killed but not yet reaped (its parent died too, and init has not got to it): a zombie
        # still answers kill(pid, 0) with the same start time, yet executes nothing.
        return True
    return start != "-" and _start_ticks(int(pid)) not in (start, "-")


def in_flight(
    instance: DagsterInstance,
    job_name: str | None = None,
    statuses: Sequence[DagsterRunStatus] = IN_PROGRESS_STATUSES,
) -> list[str]:
    """Ids of the runs (of `job_name`) queued or in progress whose process is not gone."""
    records = instance.get_run_records(RunsFilter(job_name=job_name, statuses=list(statuses)))
    return [r.dagster_run.run_id for r in records if not process_gone(r.dagster_run.tags)]


def fail_dead_run(instance: DagsterInstance, run: DagsterRun, reason: str) -> None:
    """Mark failed a run whose process died, and give back its steps' pool slots: Dagster
    frees a slot when its step ends, which a killed step never does, so the pool would
    otherwise shrink by one with every kill."""
    instance.report_run_failed(run, reason)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def reap_dead_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed every in-progress run whose executing process on this host is gone (a killed
    `ml-assets run`), and free its pool slots, so nothing waits on it and the cache GC stops
    keeping what it used."""
    reaped = []
    for record in instance.get_run_records(RunsFilter(statuses=list(IN_PROGRESS_STATUSES))):
        run = record.dagster_run
        if process_gone(run.tags):
            host_pid = run.tags[PROCESS_TAG]
            fail_dead_run(
                instance, run, f"the process that executed this run ({host_pid}) is gone: killed?"
            )
            reaped.append(run.run_id)
    return reaped


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


class StepFailure(Protocol):
    """The parts of Dagster's step failure data that the project reads."""

    @property
    def error(self) -> ErrorInfo | None: ...

    @property
    def user_failure_data(self) -> UserFailureInfo | None: ...


class UserFailureInfo(Protocol):
    @property
    def description(self) -> str | None: ...

    @property
    def metadata(self) -> Mapping[str, object]: ...


def step_failure_text(step: StepFailure) -> str:
    """A failed step's error: a `Failure`'s own description (without Dagster's class name)."""
    if step.user_failure_data is not None and step.user_failure_data.description:
        return step.user_failure_data.description.strip()
    return "" if step.error is None else failure_text(step.error)


def is_user_error(step: StepFailure) -> bool:
    """True when the step raised `failures.user_failure` (bad config, data or candidate)."""
    data = step.user_failure_data
    return data is not None and USER_ERROR_METADATA in (data.metadata or {})


@dataclass(frozen=True)
class RunFailure:
    message: str
    user_error: bool  # raised as `failures.user_failure`: bad config, data or candidate


def run_failure(instance: DagsterInstance, run_id: str) -> RunFailure:
    """Why a failed run failed: its steps' errors, else the run's own failure message."""
    steps = [
        entry.dagster_event.step_failure_data
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
        if entry.dagster_event is not None
    ]
    messages = [text for step in steps if (text := step_failure_text(step))]
    user_error = any(is_user_error(step) for step in steps)
    if messages:
        return RunFailure("\n".join(messages), user_error)
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE):
        if entry.dagster_event is not None and entry.dagster_event.message:
            return RunFailure(entry.dagster_event.message.strip(), False)
    return RunFailure("the run failed (no error recorded)", False)
