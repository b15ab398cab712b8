"""When `ml-assets run` stops waiting on the daemon: the workflow settled, or nothing moves.

The daemon's sensors launch the runs; the command line only watches. Two things end the wait:
the workflow settled (every candidate landed or failed, serving uses every landed model or its
last attempt failed), or nothing moves: no run is created or changes status while the sensor
that should launch the next one keeps ticking without launching, or does not tick at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.core.names import TRAINED_MODEL

# Sensor evaluations in a row that launch nothing while work is pending: the sensor will not
# launch it (e.g. its run key was already used), so waiting longer cannot help.
IDLE_TICKS: Final = 3
_DONE_TICK_STATUSES: Final = frozenset({"SKIPPED", "SUCCESS", "FAILURE"})


@dataclass(frozen=True)
class LatestRun:
    run_id: str
    status: DagsterRunStatus
    created: float


def latest_run(instance: DagsterInstance, job_name: str) -> LatestRun | None:
    """The newest run of `job_name` on the instance."""
    records = instance.get_run_records(RunsFilter(job_name=job_name), limit=1)
    if not records:
        return None
    run = records[0].dagster_run
    return LatestRun(run.run_id, run.status, records[0].create_timestamp.timestamp())


def last_landing(instance: DagsterInstance) -> float:
    """When the newest `trained_model` partition landed (0 when none has)."""
    records = instance.fetch_materializations(TRAINED_MODEL, limit=1).records
    return records[0].timestamp if records else 0.0


def _last_run_change(instance: DagsterInstance) -> float:
    records = instance.get_run_records(limit=1, order_by="update_timestamp", ascending=False)
    return records[0].update_timestamp.timestamp() if records else 0.0


def sensor_ticks_after(instance: DagsterInstance, sensor: str, after: float) -> list[str]:
    """Skip reasons (or statuses) of `sensor`'s finished evaluations since `after`, newest
    first; public instance calls only (a sensor's state exists once the daemon evaluated it)."""
    for state in instance.all_instigator_state():
        if state.name == sensor:
            ticks = instance.get_ticks(
                state.instigator_origin_id, state.selector_id, after=after, limit=20
            )
            return [
                tick.skip_reason or (tick.error.message if tick.error else tick.status.value)
                for tick in ticks
                if tick.status.value in _DONE_TICK_STATUSES and not tick.run_ids
            ]
    return []


class Watchdog:
    """Notices when nothing moves: no run created or changed status for a while."""

    def __init__(self, instance: DagsterInstance, stall_seconds: float) -> None:
        self._instance = instance
        self._stall_seconds = stall_seconds
        self._seen = _last_run_change(instance)
        self.last_progress = time.time()

    def observe(self) -> None:
        """Call on every poll: a run created, or one that changed status, is progress."""
        change = _last_run_change(self._instance)
        if change != self._seen:
            self._seen = change
            self.last_progress = time.time()

    def stalled(self, waiting_for: str, sensor: str) -> str | None:
        """Why waiting for `waiting_for` (launched by `sensor`) cannot end, or None."""
        idle = sensor_ticks_after(self._instance, sensor, self.last_progress)
        quiet = time.time() - self.last_progress
        if len(idle) >= IDLE_TICKS:
            return (
                f"waited for {waiting_for}, but {sensor} evaluated {len(idle)} times in "
                f"{quiet:.0f}s and launched nothing (last: {idle[0]})"
            )
        if quiet > self._stall_seconds:
            return (
                f"waited {quiet:.0f}s for {waiting_for}: no run was launched or changed and "
                f"{sensor} {'skipped' if idle else 'did not evaluate'} meanwhile; is the daemon "
                "running?"
            )
        return None
