"""What a new user does with `ml-assets`, in real processes: re-run at once after an edit,
re-run over a damaged store, make mistakes in the config, open the UI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, RunsFilter

from ml_assets.cli.daemon import daemon_on_instance
from ml_assets.state.records import latest_record
from ml_assets.storage.store import ArtifactStore
from ml_assets_tests.faults import REPO, cli_env, wait_for
from ml_assets_tests.test_daemon_liveness import add_sensor_heartbeat

FAST: list[dict[str, Any]] = [
    {"name": "knn", "model": "knn", "params": {"n_neighbors": 3}},
    {"name": "lr", "model": "logistic_regression"},
    {"name": "nb", "model": "gaussian_nb"},
]


def _project(tmp_path: Path, candidates: list[dict[str, Any]], **extra: Any) -> Path:
    config = tmp_path / "ml_assets.yaml"
    body = {"dataset": {"source": "sklearn_digits"}, "candidates": candidates, **extra}
    config.write_text(yaml.safe_dump(body))
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return config


def _cli(
    args: list[str], tmp_path: Path, config: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_assets.cli", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path / "home", config),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _instance(tmp_path: Path) -> DagsterInstance:
    return DagsterInstance.from_config(str(tmp_path / "home" / "dagster"))


def _trained_since(instance: DagsterInstance, since: float) -> list[str]:
    records = instance.get_run_records(RunsFilter(job_name="train_job"))
    return sorted(
        r.dagster_run.tags["dagster/partition"]
        for r in records
        if r.create_timestamp.timestamp() >= since
    )


@pytest.mark.e2e
def test_quick_reruns_after_an_edit_and_over_damaged_models_finish(tmp_path: Path) -> None:
    """Run, edit one candidate, run again at once (the first run's daemon left a fresh
    heartbeat), then damage every model file and run again: no run waits on work nobody
    launches, the edit retrains exactly its candidate, and the damage retrains them all."""
    config = _project(tmp_path, [dict(c) for c in FAST])
    first = _cli(["run", "--timeout", "300"], tmp_path, config)
    assert first.returncode == 0, first.stdout + first.stderr

    edited = [dict(c) for c in FAST]
    edited[0] = {**edited[0], "params": {"n_neighbors": 5}}
    config.write_text(
        yaml.safe_dump({"dataset": {"source": "sklearn_digits"}, "candidates": edited})
    )
    since = time.time()
    second = _cli(["run", "--timeout", "300"], tmp_path, config)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "already runs" not in output, "the stopped daemon was taken for a live one"
    with _instance(tmp_path) as instance:
        assert _trained_since(instance, since) == ["knn"]
        knn = latest_record(instance, AssetKey("trained_model"), "knn")
        assert knn is not None and knn["params"]["n_neighbors"] == 5

    store = ArtifactStore(tmp_path / "home" / "store")
    for path in (store.root / "models").rglob("*"):
        if path.is_file() and not path.name.endswith(".entry.json"):
            path.write_bytes(b"not a model")
    since = time.time()
    third = _cli(["run", "--timeout", "300"], tmp_path, config)
    assert third.returncode == 0, third.stdout + third.stderr
    with _instance(tmp_path) as instance:
        assert _trained_since(instance, since) == ["knn", "lr", "nb"]
        for name in ("knn", "lr", "nb"):
            record = latest_record(instance, AssetKey("trained_model"), name)
            assert record is not None and record["memoized"] is False and record.timestamp > since
            store.verify("models", record["model_key"], record["digest"])
        aggregated = latest_record(instance, AssetKey("aggregated_predictions"))
        assert aggregated is not None
        for rank in range(1, len(aggregated["models"]) + 1):
            served = latest_record(instance, AssetKey(f"predictions_rank_{rank}"))
            assert served is not None
            model = latest_record(instance, AssetKey("trained_model"), served["candidate"])
            # Serving used the retrained model: what it names verifies now.
            assert model is not None and served["model_key"] == model["model_key"]
            store.verify("models", model["model_key"], model["digest"])


@pytest.mark.e2e
def test_a_daemon_that_never_acts_fails_the_wait_fast_naming_what_it_waited_for(
    tmp_path: Path,
) -> None:
    config = _project(tmp_path, [dict(FAST[0])])
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    with _instance(tmp_path) as instance:
        # A daemon started by hand, as far as the instance can tell, that will never tick
        # (its heartbeat a minute ahead, so it still looks fresh however slow the start).
        add_sensor_heartbeat(instance, time.time() + 60)
    result = _cli(["run", "--stall-timeout", "10", "--timeout", "300"], tmp_path, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "using it" in result.stdout
    assert "waited" in result.stderr and "training of knn" in result.stderr
    assert "is the daemon running?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_user_errors_are_one_line_with_status_2_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    missing = _project(tmp_path, [dict(FAST[0])])
    missing.write_text(missing.read_text().replace("sklearn_digits", "/nonexistent/dir/v.parquet"))
    result = _cli(["run"], tmp_path, missing)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: dataset.source '/nonexistent/dir/v.parquet': file not found "
        "(/nonexistent/dir/v.parquet)"
    ]
    debug = _cli(["--debug", "run"], tmp_path, missing)
    assert debug.returncode != 0 and "Traceback" in debug.stderr

    (tmp_path / "data.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n")
    no_label = tmp_path / "no_label.yaml"
    no_label.write_text(
        yaml.safe_dump({"dataset": {"source": "data.csv"}, "candidates": [dict(FAST[0])]})
    )
    result = _cli(["run", "--mode", "sync"], tmp_path, no_label)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ingestion failed") and "'label'" in line
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.e2e
def test_why_a_candidate_did_not_land_is_shown_everywhere(tmp_path: Path) -> None:
    config = _project(
        tmp_path,
        [
            *(dict(c) for c in FAST[:2]),
            {"name": "typo_model", "model": "xgboostt"},
            {"name": "bad_forest", "model": "random_forest", "params": {"n_estimators": -5}},
        ],
    )
    result = _cli(["run", "--timeout", "300"], tmp_path, config)
    assert result.returncode == 2, result.stdout + result.stderr
    typo = "unknown model type 'xgboostt'"
    negative = "'n_estimators' parameter of RandomForestClassifier must be an int"
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "invalid" in rows["typo_model"] and typo in rows["typo_model"]
    assert "failed" in rows["bad_forest"] and negative in rows["bad_forest"]
    errors = result.stderr.strip().splitlines()
    assert sorted(e.split(":")[1].strip() for e in errors) == [
        "candidate 'bad_forest'",
        "candidate 'typo_model'",
    ]

    status = _cli(["status", "--json"], tmp_path, config)
    notes = {e["name"]: e["note"] for e in json.loads(status.stdout)["leaderboard"]}
    assert typo in notes["typo_model"] and negative in notes["bad_forest"]
    with _instance(tmp_path) as instance:
        # A retry cannot fix a bad value: tried once, though `retries.max_retries` is 2.
        assert _trained_since(instance, 0.0).count("bad_forest") == 1
        board = latest_record(instance, AssetKey("model_selection"))
        assert board is not None
        assert typo in board["leaderboard"] and negative in board["leaderboard"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.e2e
def test_dev_reads_the_projects_dagster_yaml_and_holds_the_daemon_lock(tmp_path: Path) -> None:
    config = _project(tmp_path, [dict(FAST[0])])
    log = tmp_path / "dev.log"
    port = _free_port()
    with log.open("w") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "ml_assets.cli", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=cli_env(tmp_path / "home", config),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: True if "Serving dagster-webserver on" in log.read_text() else None,
            timeout=240,
            what=f"the UI to serve (log: {log.read_text()[-2000:]})",
        )
        linked = tmp_path / "home" / "dagster" / "dagster.yaml"
        assert linked.is_symlink() and linked.resolve() == (tmp_path / "dagster.yaml").resolve()
        with _instance(tmp_path) as instance:
            assert daemon_on_instance(tmp_path / "home", instance).startswith("ml-assets dev")
        again = _cli(["dev", "--port", str(_free_port())], tmp_path, config, timeout=120)
        assert again.returncode == 1 and "a daemon already runs" in again.stdout
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    output = log.read_text()
    assert "Found a dagster instance configuration" not in output, output
    assert f"http://127.0.0.1:{port}" in output


def test_unreadable_and_corrupt_inputs_are_user_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_assets.core.config import ConfigError, load_settings
    from ml_assets.core.reingest import fingerprint_source
    from ml_assets.errors import UserError

    config = _project(tmp_path, [dict(FAST[0])])
    (tmp_path / "videos.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    with pytest.raises(UserError, match=r"videos\.parquet.*not a readable Parquet file"):
        fingerprint_source("videos.parquet", tmp_path)

    def _denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    # Root reads any file whatever its mode, so the denial is simulated.
    monkeypatch.setattr(Path, "read_text", _denied)
    with pytest.raises(ConfigError, match=r"ml_assets\.yaml: cannot read the config file"):
        load_settings(config)
    monkeypatch.setattr(Path, "open", _denied)
    with pytest.raises(UserError, match=r"cannot read .*data\.csv: Permission denied"):
        fingerprint_source("data.csv", tmp_path)
