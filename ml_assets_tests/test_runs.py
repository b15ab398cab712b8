"""In-process runs whose process is gone, the training processes' priority, and import cost."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_gone, process_tag
from ml_assets.state.runs import in_flight, reap_dead_runs
from ml_assets_tests.conftest import Project


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _add_run(instance: DagsterInstance, status: DagsterRunStatus, tags: dict[str, str]) -> str:
    run = DagsterRun(job_name="train_job", run_id=str(uuid.uuid4()), status=status, tags=tags)
    instance.add_run(run)
    return run.run_id


def test_process_gone_only_for_a_dead_or_reused_pid_here() -> None:
    host, namespace, pid, start = process_tag().split("/")
    assert pid == str(os.getpid())
    assert process_gone({PROCESS_TAG: process_tag(_dead_pid())})
    assert not process_gone({PROCESS_TAG: process_tag()})
    if start != "-":  # our pid, another start time: the pid was reused
        assert process_gone({PROCESS_TAG: f"{host}/{namespace}/{pid}/{int(start) - 1}"})
    dead = process_tag(_dead_pid()).split("/")
    assert not process_gone({PROCESS_TAG: "/".join([f"another-{host}", *dead[1:]])})
    assert not process_gone({PROCESS_TAG: "/".join([host, "elsewhere", *dead[2:]])})
    assert not process_gone({PROCESS_TAG: f"{host}/{namespace}/not-a-pid/-"})
    assert not process_gone({PROCESS_TAG: "garbage"})
    assert not process_gone({})


def test_reap_fails_only_the_runs_of_gone_processes(instance: DagsterInstance) -> None:
    dead = _add_run(instance, DagsterRunStatus.STARTED, {PROCESS_TAG: process_tag(_dead_pid())})
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
    start = os.getpriority(os.PRIO_PROCESS, 0)
    if start > 16:
        pytest.skip(f"this process already runs at niceness {start}")
    target = start + 2
    code = (
        "import os, threading, time\n"
        "from ml_assets.core.process import lower_priority\n"
        "def tid(box): box.append(threading.get_native_id()); time.sleep(5)\n"
        "box = []; t = threading.Thread(target=tid, args=(box,), daemon=True); t.start()\n"
        "while not box: time.sleep(0.01)\n"
        "def nice(who=0): return os.getpriority(os.PRIO_PROCESS, who)\n"
        f"lower_priority({target}); lower_priority({target}); a = nice(); other = nice(box[0])\n"
        f"lower_priority({start + 1}); b = nice()\n"
        "lower_priority(0); c = nice()\n"
        "print(a, other, b, c)\n"
    )
    assert _in_child(code) == " ".join([str(target)] * 4)


def test_training_lowers_its_priority_to_the_configured_niceness(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr("ml_assets.defs.assets.training.lower_priority", calls.append)
    project.write_config(
        training={"niceness": 7},
        candidates=[{"name": "nb", "model": "gaussian_nb"}],
    )
    assert project.run("ingest_job").success
    project.sync()
    assert project.run("train_job", "nb").success
    assert calls == [7]


def test_every_run_records_the_process_executing_it(project: Project) -> None:
    result = project.run("ingest_job")
    assert result.success
    run = project.instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags[PROCESS_TAG] == process_tag()
    assert not process_gone(run.tags)


def test_loading_the_definitions_imports_no_model_library() -> None:
    """Every run process and sensor evaluation loads the definitions; scikit-learn, SciPy and
    LightGBM cost ~1.8 s to import and are loaded only where a model is built or read."""
    code = (
        "import sys\n"
        "import ml_assets.definitions, ml_assets.cli, ml_assets.state.planning\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'lightgbm', 'joblib') if m in sys.modules))"
    )
    assert _in_child(code) == "[]"
