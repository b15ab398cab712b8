"""In-process runs whose process is gone, the training processes' priority, and import cost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from ml_assets.runs import PROCESS_TAG, in_flight, process_gone, process_tag, reap_dead_runs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _add_run(instance: DagsterInstance, status: DagsterRunStatus, tags: dict[str, str]) -> str:
    run = DagsterRun(job_name="train_job", run_id=str(uuid.uuid4()), status=status, tags=tags)
    instance.add_run(run)
    return run.run_id


def test_process_gone_only_for_a_dead_pid_on_this_host() -> None:
    host = socket.gethostname()
    assert process_gone({PROCESS_TAG: f"{host}:{_dead_pid()}"})
    assert not process_gone({PROCESS_TAG: process_tag()})
    assert not process_gone({PROCESS_TAG: f"another-{host}:{_dead_pid()}"})
    assert not process_gone({PROCESS_TAG: f"{host}:not-a-pid"})
    assert not process_gone({})


def test_reap_fails_only_the_runs_of_gone_processes(instance: DagsterInstance) -> None:
    host = socket.gethostname()
    dead = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: f"{host}:{_dead_pid()}"})
    alive = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: process_tag()})
    launched = _add_run(instance, DagsterRunStatus.STARTED, {})  # the daemon's: not ours
    assert sorted(in_flight(instance)) == sorted([alive, launched])

    assert reap_dead_runs(instance) == [dead]
    run = instance.get_run_by_id(dead)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    for run_id in (alive, launched):
        other = instance.get_run_by_id(run_id)
        assert other is not None and other.status == DagsterRunStatus.STARTED
    assert reap_dead_runs(instance) == []


def _in_child(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priority")
def test_lower_priority_sets_niceness_once_and_never_raises_it() -> None:
    code = (
        "import os\n"
        "from ml_assets.assets.training import lower_priority\n"
        "lower_priority(7); lower_priority(7); a = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(3); b = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(0); c = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "print(a, b, c)\n"
    )
    start = os.getpriority(os.PRIO_PROCESS, 0)
    expected = max(start, 7)
    assert _in_child(code) == f"{expected} {expected} {expected}"


def test_loading_the_definitions_imports_no_model_library() -> None:
    """Every run process and sensor evaluation loads the definitions; scikit-learn, SciPy and
    LightGBM cost ~1.8 s to import and are loaded only where a model is built or read."""
    code = (
        "import sys\n"
        "import ml_assets.definitions, ml_assets.cli, ml_assets.planning\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'lightgbm', 'joblib') if m in sys.modules))"
    )
    assert _in_child(code) == "[]"
