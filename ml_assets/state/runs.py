"""Runs on the instance: which are in flight, which lost their process, and why one failed.

A run whose executing process is gone (`core/process.py`) is not in flight, whatever its status
still says: the sensors and the cache GC ignore it, and it is marked failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_gone
from ml_assets.errors import USER_ERROR_METADATA

IN_PROGRESS_STATUSES: Final = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


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


_WORKERS_FAILED: Final = "During celery execution errors occurred in workers:"


def run_error_text(error: ErrorInfo) -> str:
    """The error a run failed on outside any step's own report, in one line: e.g. the Celery
    worker processes executing its steps died ("[trained_model]: …WorkerLostError: Worker
    exited prematurely: signal 9 (SIGKILL)"), where Dagster's run message only says "An
    exception was thrown during execution"."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    if lines and lines[0].endswith(_WORKERS_FAILED):
        # One "[step]: error" line per failed step, each followed by its stack trace.
        steps = [line for line in lines[1:] if line.startswith("[")]
        return "a step's worker process failed: " + "; ".join(steps)
    head = error.message.split("\nStack Trace:")[0]
    return "; ".join(line.strip() for line in head.splitlines() if line.strip())


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
        event = entry.dagster_event
        if event is None:
            continue
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            return RunFailure(run_error_text(error), False)
        if event.message:
            return RunFailure(event.message.strip(), False)
    return RunFailure("the run failed (no error recorded)", False)
