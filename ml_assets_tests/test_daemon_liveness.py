"""Telling a live daemon from a dead one, dead run processes, and the wait that never hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_sensor_context,
    instance_for_test,
)

from ml_assets.cli.daemon import DaemonLock, daemon_on_instance
from ml_assets.cli.settle import Watchdog
from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_gone, process_tag
from ml_assets.defs.sensors import dead_runs_sensor
from ml_assets_tests.faults import wait_for


def add_sensor_heartbeat(instance: DagsterInstance, timestamp: float) -> None:
    """A SENSOR daemon heartbeat, as a running `dagster-daemon` writes it.

    Dagster has no public API to write one: this is the one place a test uses its private
    type, so a Dagster upgrade breaks only here."""
    from dagster._daemon.types import DaemonHeartbeat

    instance.add_daemon_heartbeat(DaemonHeartbeat(timestamp, "SENSOR", str(uuid.uuid4()), []))


_HOLD_LOCK = """
import sys
from pathlib import Path
from ml_assets.cli.daemon import DaemonLock
lock = DaemonLock(Path(sys.argv[1]))
assert lock.acquire("a test daemon")
print("held", flush=True)
sys.stdin.read()  # hold it until the parent closes our stdin (or kills us)
"""


@contextmanager
def _lock_held_by_another_process(home: Path) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_held_lock_means_a_live_daemon_and_dies_with_its_holder(tmp_path: Path) -> None:
    with instance_for_test() as instance:
        assert daemon_on_instance(tmp_path, instance) == ""
        with _lock_held_by_another_process(tmp_path) as child:
            who = daemon_on_instance(tmp_path, instance)
            assert who == f"a test daemon (pid {child.pid})"
            assert not DaemonLock(tmp_path).acquire("a second daemon")
            child.send_signal(signal.SIGKILL)  # killed: the kernel drops the lock with it
            child.wait()
            assert daemon_on_instance(tmp_path, instance) == ""
        second = DaemonLock(tmp_path)
        assert second.acquire("ml-assets run")
        second.release(daemon_stopped=True)


def test_the_last_heartbeat_of_a_stopped_daemon_is_not_a_live_daemon(tmp_path: Path) -> None:
    """The hang of a quick re-run: the daemon the previous `ml-assets run` stopped left a
    heartbeat a few seconds old, which was taken for a live daemon."""
    with instance_for_test() as instance:
        lock = DaemonLock(tmp_path)
        assert lock.acquire("ml-assets run")
        add_sensor_heartbeat(instance, time.time())  # its daemon's last heartbeat
        lock.release(daemon_stopped=True)
        assert daemon_on_instance(tmp_path, instance) == ""

        # A daemon started some other way (plain `dagster dev`) heartbeats after that: alive.
        add_sensor_heartbeat(instance, time.time() + 1)
        assert "not started by ml-assets" in daemon_on_instance(tmp_path, instance)
        # ... until its heartbeat is older than two heartbeat intervals.
        assert daemon_on_instance(tmp_path, instance, now=time.time() + 120) == ""

        # Taking the lock without starting a daemon keeps what the file knew.
        other = DaemonLock(tmp_path)
        assert other.acquire("ml-assets run")
        other.release(daemon_stopped=False)
        assert "not started by ml-assets" in daemon_on_instance(tmp_path, instance)


def test_a_holder_that_died_without_releasing_leaves_no_live_daemon(tmp_path: Path) -> None:
    """`ml-assets dev` exec's into `dagster dev` and never releases; a killed `ml-assets run`
    cannot. The next command must not take their daemon's last heartbeat for a live daemon."""
    with instance_for_test() as instance:
        with _lock_held_by_another_process(tmp_path):
            add_sensor_heartbeat(instance, time.time())
        lock = DaemonLock(tmp_path)
        assert lock.acquire("ml-assets run")
        assert daemon_on_instance(tmp_path, instance, lock) == ""
        lock.release(daemon_stopped=False)
        assert daemon_on_instance(tmp_path, instance) == ""


def test_a_killed_but_unreaped_process_is_gone() -> None:
    """A SIGKILLed run process whose parent has not reaped it (a zombie) still answers
    kill(pid, 0), with its start time, yet executes nothing: its run must be reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tag = {PROCESS_TAG: process_tag(child.pid)}
    try:
        assert not process_gone(tag)
        child.send_signal(signal.SIGKILL)
        # Not waited for: a zombie until `child.wait()` below.
        wait_for(
            lambda: True if _state(child.pid) == "Z" else None,
            timeout=60,
            what="the killed child to become a zombie",
        )
        os.kill(child.pid, 0)  # the pid still answers
        assert process_gone(tag)
    finally:
        child.kill()
        child.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_dead_runs_sensor_fails_the_runs_whose_process_died(instance: DagsterInstance) -> None:
    """What run monitoring cannot do with Dagster's DefaultRunLauncher (no run-worker health
    check), the daemon does through `dead_runs_sensor`."""
    assert not instance.run_launcher.supports_check_run_worker_health
    dead = DagsterRun(
        job_name="train_job",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.STARTED,
        tags={PROCESS_TAG: process_tag(_dead_pid())},
    )
    alive = DagsterRun(
        job_name="train_job",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.STARTED,
        tags={PROCESS_TAG: process_tag()},
    )
    instance.add_run(dead)
    instance.add_run(alive)
    storage = instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    storage.set_concurrency_slots("training", 1)
    assert storage.claim_concurrency_slot("training", dead.run_id, "trained_model").is_claimed
    result = dead_runs_sensor(build_sensor_context(instance=instance))
    assert result is not None and dead.run_id[:8] in str(result.skip_message)
    failed = instance.get_run_by_id(dead.run_id)
    assert failed is not None and failed.status == DagsterRunStatus.FAILURE
    # Its step's pool slot is given back: otherwise every kill shrinks the pool for good.
    assert storage.get_concurrency_info("training").claimed_slots == []
    running = instance.get_run_by_id(alive.run_id)
    assert running is not None and running.status == DagsterRunStatus.STARTED
    again = dead_runs_sensor(build_sensor_context(instance=instance))
    assert again is not None and "no run whose process is gone" in str(again.skip_message)


def test_the_watchdog_names_what_it_waited_for_when_nothing_moves(
    instance: DagsterInstance,
) -> None:
    watchdog = Watchdog(instance, stall_seconds=0.0)
    wait_for(
        lambda: True if time.time() > watchdog.last_progress else None, timeout=10, what="time"
    )
    watchdog.observe()
    stall = watchdog.stalled("training of knn", "candidates_sensor")
    assert stall is not None
    assert "training of knn" in stall and "candidates_sensor did not evaluate" in stall

    patient = Watchdog(instance, stall_seconds=3600.0)
    before = patient.last_progress
    wait_for(lambda: True if time.time() > before else None, timeout=10, what="time")
    patient.observe()
    assert patient.last_progress == before  # nothing happened
    instance.add_run(DagsterRun(job_name="train_job", run_id=str(uuid.uuid4())))
    patient.observe()  # a new run is progress
    assert patient.last_progress > before
    assert patient.stalled("training of knn", "candidates_sensor") is None
