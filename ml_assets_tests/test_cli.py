"""End to end: `ml-assets run` and `ml-assets status` as a user runs them, in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path, home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ML_ASSETS_HOME": str(home),
        "ML_ASSETS_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
    }
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
def test_run_on_the_default_config_then_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = REPO / "ml_assets.yaml"
    run = _cli(["run"], cwd=tmp_path, home=home, config=config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Selected:" in run.stdout and "Ensemble hit@1" in run.stdout
    status = _cli(["status", "--json"], cwd=tmp_path, home=home, config=config)
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    selected = body["selection"]["selected"]
    assert len(selected) == 2
    scores = {e["name"]: e["score"] for e in body["leaderboard"]}
    assert all(scores[name] >= 0.90 for name in selected)
    assert any(score < 0.90 for score in scores.values()), (
        "defaults should include a weak candidate"
    )
    assert body["aggregated"]["current"] and Path(body["aggregated"]["path"]).is_file()
    assert (home / "dagster" / "storage").exists(), (
        "runs must be recorded on the project's instance"
    )
    assert not (tmp_path / "ml_assets.yaml").exists() and sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["home"]


@pytest.mark.e2e
def test_invalid_config_is_reported_with_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("selection: {topk: 2}\ncandidates: [{name: a, model: knn}]\n")
    result = _cli(["status"], cwd=tmp_path, home=tmp_path / "home", config=config)
    assert result.returncode == 2
    assert str(config) in result.stderr and "selection.topk: unknown key" in result.stderr
