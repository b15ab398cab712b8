"""The Dagster instance on a real Postgres (`ML_ASSETS_POSTGRES_URL`), and a wrong URL.

The workflow test needs the Postgres server of this machine (127.0.0.1:5432, or the server
`ML_ASSETS_TEST_POSTGRES` names; `services.py`): in CI (`CI=true`) a missing server fails it;
elsewhere it is skipped with the reason. Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.cli.postgres import POSTGRES_ENV, dagster_url
from ml_assets_tests.faults import REPO, cli_env

# Two fits of a few seconds and two quick ones, two training runs at a time.
CANDIDATES = [
    {"name": "trees", "model": "extra_trees", "params": {"n_estimators": 150}},
    {"name": "forest", "model": "random_forest", "params": {"n_estimators": 150}},
    {"name": "lr", "model": "logistic_regression"},
    {"name": "nb", "model": "gaussian_nb"},
]


def _cli(
    args: list[str], tmp_path: Path, url: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "ml_assets.yaml"
    if not config.exists():
        config.write_text(
            yaml.safe_dump(
                {
                    "dataset": {"source": "sklearn_digits"},
                    "training": {"max_concurrent": 2},
                    "candidates": CANDIDATES,
                }
            )
        )
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=REPO,  # the project's dagster.yaml
        env={**cli_env(tmp_path / "home", config), POSTGRES_ENV: url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:secret@127.0.0.1:1/nowhere", "cannot connect"),
        ("mysql://root@127.0.0.1/test", "expected a URL like postgresql://"),
    ],
)
def test_a_wrong_postgres_url_fails_at_start_naming_the_variable(
    tmp_path: Path, url: str, expected: str
) -> None:
    result = _cli(["status"], tmp_path, url, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {POSTGRES_ENV}=") and expected in line
    assert "secret" not in line and "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists(), "nothing is written before the URL works"


@pytest.mark.e2e
def test_the_workflow_runs_on_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _cli(["run", "--max-concurrent", "2"], tmp_path, postgres_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Selected:" in result.stdout
    dagster_home = tmp_path / "home" / "dagster"
    assert not any(dagster_home.glob("**/*.db")), "no SQLite storage next to Postgres"
    monkeypatch.setenv(POSTGRES_ENV, dagster_url(postgres_url))  # as `ml-assets` passes it on
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        training = instance.get_run_records(RunsFilter(job_name="train_job"))
        runs = [
            (
                r.dagster_run.tags.get("dagster/partition"),
                r.dagster_run.tags.get("dagster/run_key"),
                r.dagster_run.tags.get("dagster/sensor_name"),
                r.create_timestamp.isoformat(),
            )
            for r in training
        ]
        assert len(training) == 4, runs
        assert {r.dagster_run.status for r in training} == {DagsterRunStatus.SUCCESS}
        assert instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.FAILURE])) == 0
        spans = [(r.start_time or 0.0, r.end_time or 0.0) for r in training]
    # Two training runs at once (the pool has 2 slots), both writing to the same database.
    assert any(
        max(a[0], b[0]) < min(a[1], b[1]) for i, a in enumerate(spans) for b in spans[i + 1 :]
    ), spans
    log = (tmp_path / "home" / "daemon.log").read_text()
    for lock_error in ("database is locked", "deadlock detected", "LockNotAvailable"):
        assert lock_error not in log, log[-3000:]
