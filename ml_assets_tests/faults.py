"""Helpers for the fault-injection tests: real `ml-assets` processes and store invariants."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from dagster import DagsterInstance

from ml_assets.store import KINDS, ArtifactStore
from ml_assets_tests.conftest import Project

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def cli_env(home: Path, config: Path) -> dict[str, str]:
    """The environment of an `ml-assets` process with its own home, config and instance."""
    env = {
        **os.environ,
        "ML_ASSETS_HOME": str(home),
        "ML_ASSETS_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
    }
    env.pop("DAGSTER_HOME", None)
    return env


def start_cli(args: list[str], home: Path, config: Path, log: IO[str]) -> subprocess.Popen[str]:
    """`python -m ml_assets.cli ARGS` in its own session (so its whole group can be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=REPO,
        env=cli_env(home, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_cli(args: list[str], home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=REPO,
        env=cli_env(home, config),
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None (or fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process and every process of its session (its run workers)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def visible_artifacts(store: ArtifactStore, kinds: Iterable[str] = KINDS) -> set[tuple[str, str]]:
    """Every (kind, key) a reader can see: directories other than staging and trash."""
    found = set()
    for kind in kinds:
        base = store.root / kind
        if base.is_dir():
            found |= {
                (kind, p.name) for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
            }
    return found


def assert_every_visible_artifact_verifies(store: ArtifactStore) -> set[tuple[str, str]]:
    """No half-written artifact is visible: every artifact directory matches its manifest."""
    visible = visible_artifacts(store)
    for kind, key in visible:
        store.verify(kind, key)  # raises ArtifactError naming the artifact
    return visible


_RUN_JOB = """
import json, sys
from ml_assets.runner import prepare_home, run_job
prepare_home()
outcome = run_job(sys.argv[1], sys.argv[2] or None)
print("OUTCOME " + json.dumps({"success": outcome.success, "error": outcome.error}))
"""


def start_run(
    job: str, partition: str | None, home: Path, config: Path, log: IO[str]
) -> subprocess.Popen[str]:
    """One job run in its own process, as `ml-assets run` starts them (`runner.run_job`)."""
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_JOB, job, partition or ""],
        cwd=REPO,
        env=cli_env(home, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@contextmanager
def project_home(home: Path, config: dict[str, Any]) -> Iterator[Project]:
    """A project whose home is laid out as `ml-assets` expects (`home/store`, `home/dagster`
    with the project's dagster.yaml, `home/ml_assets.yaml`), so real processes share it."""
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        project = Project(root=home, instance=instance, config=config)
        project.write_config()
        yield project
