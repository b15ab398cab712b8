"""Fault family: security. A planted pickle in the store, the README's warning that models are
pickles, and the UI binding of `make dev` (docs/RELIABILITY.md, rows 9a-9c)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ml_assets.cli import build_parser, dev_command
from ml_assets.storage.artifacts import read_model
from ml_assets.storage.store import MANIFEST, ArtifactError
from ml_assets_tests.conftest import Project
from ml_assets_tests.faults import REPO, _message, _model_file, _record, _small

# --- 9. security ---------------------------------------------------------------------------


class _Planted:
    """A pickle that creates a file when loaded: what an attacker with store access plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _rewrite_manifest(path: Path) -> None:
    """Make the artifact self-consistent again, as an attacker who can write the store would."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name in manifest["files"]:
        data = (path / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST).write_bytes(json.dumps(manifest, sort_keys=True).encode())


def test_planted_pickle_is_never_loaded_because_its_digest_differs_from_the_record(
    project: Project, tmp_path: Path
) -> None:
    _small(project)
    assert project.workflow().success
    victim = _record(project.instance, "model_selection")["selected"][0]
    record = _record(project.instance, "trained_model", victim)
    marker = tmp_path / "pwned"
    artifact = Path(record["path"])
    _model_file(artifact).write_bytes(pickle.dumps(_Planted(marker)))
    _rewrite_manifest(artifact)
    project.store.verify("models", record["model_key"])  # intact by its own manifest...

    with pytest.raises(ArtifactError, match="does not match the recorded"):
        read_model(project.store, record["model_key"], record["digest"])  # ...not by the record
    result = project.run("serve_job")
    assert result.success, _message(result)
    assert victim not in _record(project.instance, "model_selection")["selected"]
    assert not marker.exists(), "the planted pickle ran"

    import joblib  # the control: the planted file really is a payload that runs on load

    joblib.load(_model_file(artifact))
    assert marker.exists()


def test_readme_says_models_are_pickles_and_the_store_must_be_trusted() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "joblib pickles" in readme
    assert "only after the SHA-256" in readme
    assert "the store itself must be trusted" in readme


def _make_dev(*args: str) -> str:
    result = subprocess.run(
        ["make", "-n", "dev", "VENV=/nonexistent-venv", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "ml-assets dev" in x]
    return line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_ui_binds_localhost_unless_told_otherwise() -> None:
    assert " --host 127.0.0.1 " in _make_dev()
    assert " --host 0.0.0.0 " in _make_dev("DEV_HOST=0.0.0.0")
    args = build_parser().parse_args(["dev"])
    command = dev_command("dagster", args.host, args.port)
    assert command[command.index("-h") + 1] == "127.0.0.1"
