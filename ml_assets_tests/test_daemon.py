"""Asynchronous serving with the real Dagster daemon: a slow candidate never blocks serving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_first_predictions_land_before_the_slow_model(tmp_path: Path) -> None:
    config = tmp_path / "ml_assets.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": {"source": "sklearn_digits"},
                "candidates": [
                    {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
                    {"name": "logistic_regression", "model": "logistic_regression"},
                    # ~10x slower than the others, and the best of the three on digits.
                    {
                        "name": "slow_trees",
                        "model": "extra_trees",
                        "params": {"n_estimators": 8000},
                    },
                ],
            }
        )
    )
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    home = tmp_path / "home"
    env = {**os.environ, "ML_ASSETS_HOME": str(home), "ML_ASSETS_CONFIG": str(config)}
    env["PYTHONPATH"] = str(REPO)
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", "run", "--timeout", "500"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "first aggregated predictions after" in result.stdout

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        slow = instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=AssetKey("trained_model"), asset_partitions=["slow_trees"]
            ),
            limit=1,
        ).records
        assert slow, "the slow candidate never landed"
        served = instance.fetch_materializations(
            AssetKey("aggregated_predictions"), limit=100, ascending=True
        ).records
        assert served, "nothing was served"
        first, last = served[0], served[-1]
        assert first.timestamp < slow[0].timestamp, "serving waited for the slow model"
        first_models = first.asset_materialization.metadata["models"].value
        assert "slow_trees" not in first_models
        final_models = last.asset_materialization.metadata["models"].value
        assert "slow_trees" in final_models, f"final selection {final_models} lacks the best model"
        since = last.asset_materialization.metadata["seconds_since_training_started"].value
        assert since > 0
