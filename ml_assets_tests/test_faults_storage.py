"""Fault family: storage. Damaged model artifacts (truncated, deleted, garbled manifest) and
store write errors (ENOSPC, EACCES): never served, named clearly, previous artifacts kept
(docs/RELIABILITY.md, rows 2a and 3)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ml_assets.storage.artifacts
from ml_assets.core.config import load_settings
from ml_assets.state.planning import plan_training
from ml_assets.storage.store import MANIFEST, ArtifactStore
from ml_assets_tests.conftest import Project
from ml_assets_tests.faults import (
    _assert_artifacts_verify,
    _assert_serving_intact,
    _message,
    _model_file,
    _record,
    _served,
    _small,
    _snapshot,
    visible_artifacts,
)

# Another valid configuration of each fast candidate: a new memo key, so a new model.
CHANGED_PARAMS = {"lr": {"C": 0.5}, "nb": {"var_smoothing": 1e-8}, "knn": {"n_neighbors": 7}}


# --- 2. damaged model artifacts ------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = _model_file(path).read_bytes()
    _model_file(path).write_bytes(data[: len(data) // 2])


def _delete_artifact(path: Path) -> None:
    shutil.rmtree(path)


def _garble_manifest(path: Path) -> None:
    (path / MANIFEST).write_text("{not json")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "fails its SHA-256 check"),
        (_delete_artifact, "artifact missing or incomplete"),
        (_garble_manifest, "does not match the recorded"),
    ],
)
def test_damaged_model_is_never_served_selection_states_why_and_training_replaces_it(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    victim_record = _record(project.instance, "trained_model", victim)
    damage(Path(victim_record["path"]))

    loaded: list[Path] = []
    real_load = ml_assets.storage.artifacts.load_model

    def spy(directory: Path) -> Any:
        loaded.append(directory)
        return real_load(directory)

    monkeypatch.setattr(ml_assets.storage.artifacts, "load_model", spy)
    result = project.run("serve_job")
    assert result.success, _message(result)
    assert Path(victim_record["path"]) not in loaded
    selection = _record(project.instance, "model_selection")
    assert victim not in selection["selected"] and selection["candidates_broken"] == 1
    row = next(line for line in selection["leaderboard"].splitlines() if f"| {victim} |" in line)
    assert "| broken |" in row and "passed over" in row and reason in row
    assert _record(project.instance, "aggregated_predictions")["models"] == selection["selected"]

    plan = plan_training(project.instance, load_settings(project.config_path), project.store)
    assert [c.name for c in plan.to_train] == [victim]
    assert project.run("train_job", victim).success
    retrained = _record(project.instance, "trained_model", victim)
    assert retrained["memoized"] is False
    project.store.verify("models", retrained["model_key"], retrained["digest"])


# --- 3. storage errors ---------------------------------------------------------------------


def _fail_writes(monkeypatch: pytest.MonkeyPatch, kind: str, code: int) -> None:
    """Writes of `kind` fail with `code` after the payload landed in the staging directory."""
    real_put = ArtifactStore.put

    def put(self: ArtifactStore, put_kind: str, key: str, write: Callable[[Path], object]) -> Any:
        if put_kind != kind:
            return real_put(self, put_kind, key, write)

        def failing(directory: Path) -> None:
            write(directory)
            raise OSError(code, os.strerror(code), str(directory / "next.bin"))

        return real_put(self, put_kind, key, failing)

    monkeypatch.setattr(ArtifactStore, "put", put)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("datasets", errno.ENOSPC),
        ("models", errno.EACCES),
        ("predictions", errno.ENOSPC),
        ("aggregated", errno.EACCES),
    ],
)
def test_storage_error_is_named_and_previous_artifacts_stay(
    project: Project, monkeypatch: pytest.MonkeyPatch, kind: str, code: int
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    if kind in {"predictions", "aggregated"}:
        # A new model for a selected candidate: serving has new predictions to write.
        changed = [
            {**c, "params": CHANGED_PARAMS[c["name"]]} if c["name"] == victim else c
            for c in project.config["candidates"]
        ]
        project.write_config(candidates=changed)
        assert project.run("train_job", victim).success
    model_before = _record(project.instance, "trained_model", victim)
    before = _snapshot(project.instance)
    served = _served(project.instance)
    visible = visible_artifacts(project.store)

    _fail_writes(monkeypatch, kind, code)
    force = {"ml_assets/force": "all"}
    if kind == "datasets":
        result = project.run("ingest_job", tags=force)
    elif kind == "models":
        result = project.run("train_job", victim, tags=force)
    else:
        result = project.run("serve_job")
    assert not result.success
    headline = _message(result).splitlines()[0]
    assert f"ArtifactError: {kind}/" in headline and str(project.store.root) in headline
    assert os.strerror(code) in headline and "previous artifacts are untouched" in headline

    if kind in {"datasets", "models"}:
        assert _snapshot(project.instance) == before
        _assert_serving_intact(project.instance, project.store)
    else:  # selection ran, serving stopped: what is served is still the previous aggregation
        after = _snapshot(project.instance)
        assert after["aggregated_predictions"] == before["aggregated_predictions"]
    _assert_artifacts_verify(project.store, served)
    assert _record(project.instance, "trained_model", victim).run_id == model_before.run_id
    project.store.verify("models", model_before["model_key"], model_before["digest"])
    new = visible_artifacts(project.store) - visible
    assert all(k != kind for k, _ in new), f"a failed {kind} write became visible: {new}"
    assert not list((project.store.root / kind).glob(".tmp-*")), "staging left behind"
