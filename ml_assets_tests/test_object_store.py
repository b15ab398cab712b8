"""The artifact store on an object store (`ML_ASSETS_STORE=s3://…`), against a real S3 endpoint:
moto's server on this machine (no network, no AWS account).

What the local store guarantees holds here too: nothing half-published is ever seen, every file
is checked against its SHA-256 before use, GC never deletes what is protected, and a second
machine (another home and cache) reuses what the first one published.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance

from ml_assets.core.config import STORE_ENV
from ml_assets.core.names import TRAINED_MODEL
from ml_assets.state.records import latest_record
from ml_assets.storage.remote import MirroredStore
from ml_assets.storage.store import MANIFEST, ArtifactError
from ml_assets_tests.faults import run_cli

BUCKET = "ml-assets-test"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 server on a free port, with one empty bucket; the AWS variables point at it."""
    pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[dev]') is not installed")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield from _serving_bucket(monkeypatch, host, port)
    finally:
        # moto keeps its buckets in this process across servers: start the next test empty.
        urllib.request.urlopen(
            urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
        ).close()
        server.stop()


def _serving_bucket(monkeypatch: pytest.MonkeyPatch, host: str, port: int) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec's cache would keep the last server's client
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield fs


def _store(tmp_path: Path, machine: str, clock: list[float] | None = None) -> MirroredStore:
    now = clock or [1_000_000.0]
    return MirroredStore(tmp_path / machine / "cache", f"s3://{BUCKET}/store", lambda: now[0])


def _write(text: str) -> Any:
    def write(directory: Path) -> None:
        (directory / "model.bin").write_text(text)
        (directory / "training.json").write_text(json.dumps({"text": text}))

    return write


def _object(artifact: Any, name: str) -> str:
    """The object holding one file of a published artifact (named by its SHA-256)."""
    sha256 = hashlib.sha256(artifact.file(name).read_bytes()).hexdigest()
    return f"{BUCKET}/store/{artifact.kind}/{artifact.key}/objects/{sha256}"


def test_what_one_machine_publishes_another_reads_verified(s3: Any, tmp_path: Path) -> None:
    first = _store(tmp_path, "a")
    written = first.put("models", "m1", _write("weights"))
    assert s3.exists(f"{BUCKET}/store/models/m1/{MANIFEST}") and s3.exists(
        _object(written, "model.bin")
    )
    second = _store(tmp_path, "b")  # another machine: an empty cache
    assert second.present("models", "m1", written.digest)
    read = second.verify("models", "m1", written.digest)
    assert read.digest == written.digest and read.file("model.bin").read_text() == "weights"
    assert read.path.is_relative_to(tmp_path / "b" / "cache")
    assert not second.present("models", "m1", "0" * 64)  # another recorded digest


def test_a_half_published_artifact_is_not_seen(s3: Any, tmp_path: Path) -> None:
    """Objects without their manifest (a writer killed mid-upload) are no artifact at all."""
    s3.pipe_file(f"{BUCKET}/store/models/m2/objects/{'0' * 64}", b"half")
    store = _store(tmp_path, "a")
    assert not store.present("models", "m2")
    with pytest.raises(ArtifactError, match=r"models/m2: artifact missing or incomplete"):
        store.verify("models", "m2")
    # The next writer publishes it whole.
    artifact = store.put("models", "m2", _write("whole"))
    assert _store(tmp_path, "b").verify("models", "m2", artifact.digest).bytes == artifact.bytes


def test_an_altered_object_is_refused_before_anything_loads_it(s3: Any, tmp_path: Path) -> None:
    artifact = _store(tmp_path, "a").put("models", "m3", _write("weights"))
    s3.pipe_file(_object(artifact, "model.bin"), b"WEIGHTS")  # same size, other bytes
    reader = _store(tmp_path, "b")
    with pytest.raises(ArtifactError, match=r"models/m3: file model.bin fails its SHA-256"):
        reader.verify("models", "m3", artifact.digest)
    assert not (tmp_path / "b" / "cache" / "models" / "m3").exists(), "nothing lands in the cache"
    # The next put (a step building it again) reads the publication back and repairs it.
    assert _store(tmp_path, "c").put("models", "m3", _write("weights")).digest == artifact.digest
    assert reader.verify("models", "m3", artifact.digest).file("model.bin").read_text() == (
        "weights"
    )


def test_the_first_publication_of_a_key_wins(s3: Any, tmp_path: Path) -> None:
    """A model's files differ run to run (its run id, its fit time): a second writer of the
    key adopts what the first published, so every record of the key names one digest."""
    first = _store(tmp_path, "a").put("models", "m5", _write("first"))
    second = _store(tmp_path, "b").put("models", "m5", _write("second"))
    assert second.digest == first.digest
    assert second.file("model.bin").read_text() == "first"
    assert _store(tmp_path, "c").verify("models", "m5", first.digest).digest == first.digest


def test_a_cached_copy_whose_publication_was_lost_is_published_again(
    s3: Any, tmp_path: Path
) -> None:
    writer = _store(tmp_path, "a")
    artifact = writer.put("models", "m6", _write("weights"))
    s3.rm(f"{BUCKET}/store/models/m6", recursive=True)  # an upload that failed, or GC
    s3.rm_file(f"{BUCKET}/store/models/m6.entry.json")
    assert not _store(tmp_path, "b").present("models", "m6", artifact.digest)
    assert writer.verify("models", "m6", artifact.digest).digest == artifact.digest
    assert _store(tmp_path, "b").verify("models", "m6", artifact.digest).digest == artifact.digest


def test_a_download_keeps_the_copy_another_process_just_cached(s3: Any, tmp_path: Path) -> None:
    artifact = _store(tmp_path, "a").put("models", "m7", _write("weights"))
    one, other = _store(tmp_path, "b"), _store(tmp_path, "b")  # two processes, one cache
    cached = one.verify("models", "m7", artifact.digest).file("model.bin")
    inode = cached.stat().st_ino
    manifest = s3.cat_file(f"{BUCKET}/store/models/m7/{MANIFEST}")
    other._download("models", "m7", manifest)  # what a second reader at the same time does
    assert cached.stat().st_ino == inode, "the copy being read was not replaced"


def test_gc_on_the_object_store_keeps_what_is_protected_or_recent(s3: Any, tmp_path: Path) -> None:
    clock = [time.time()]
    store = _store(tmp_path, "a", clock)
    for key in ("old", "served", "recent"):
        store.put("models", key, _write(key))
    s3.pipe_file(f"{BUCKET}/store/models/abandoned/objects/{'0' * 64}", b"half")
    clock[0] += 10 * 86400
    store.touch("models", "recent")
    other = _store(tmp_path, "b", clock)  # GC from another machine sees the same hits
    report = other.collect_garbage(7 * 86400, protected={("models", "served")})
    assert report.deleted == [("models", "old")]
    assert not s3.exists(f"{BUCKET}/store/models/old/{MANIFEST}")
    assert not s3.exists(f"{BUCKET}/store/models/abandoned"), "an abandoned upload is removed"
    assert {e.key for e in other.entries()} == {"served", "recent"}
    with pytest.raises(ArtifactError):
        _store(tmp_path, "c").verify("models", "old")
    # The collecting machine's own unused copies go too; the writer's copy of "old" was not
    # collected there (another machine), and its next use publishes it again.
    store.collect_garbage(7 * 86400, protected={("models", "served")})
    assert not (tmp_path / "a" / "cache" / "models" / "old").exists()
    assert (tmp_path / "a" / "cache" / "models" / "served").exists()


@pytest.mark.e2e
def test_a_second_machine_reuses_the_models_the_first_published(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homes (instances, caches) on one S3 store: the second trains nothing."""
    config = tmp_path / "ml_assets.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": {"source": "sklearn_digits"},
                "candidates": [
                    {"name": "lr", "model": "logistic_regression"},
                    {"name": "knn", "model": "knn"},
                ],
            }
        )
    )
    monkeypatch.setenv(STORE_ENV, f"s3://{BUCKET}/shared")
    first = run_cli(["run", "--mode", "sync"], tmp_path / "a", config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(s3.ls(f"{BUCKET}/shared/models")) == 4  # two models, two entry files
    second = run_cli(["run", "--mode", "sync"], tmp_path / "b", config)
    assert second.returncode == 0, second.stdout + second.stderr
    with DagsterInstance.from_config(str(tmp_path / "b" / "dagster")) as instance:
        for name in ("lr", "knn"):
            record = latest_record(instance, TRAINED_MODEL, name)
            assert record is not None and record["memoized"] is True, name
    assert not (tmp_path / "a" / "store").exists() and (tmp_path / "b" / "store-cache").is_dir()


def test_an_object_store_nobody_can_reach_fails_at_start_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[dev]') is not installed")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(STORE_ENV, f"s3://{BUCKET}/store")
    config = tmp_path / "ml_assets.yaml"
    config.write_text("candidates:\n  - {name: nb, model: gaussian_nb}\n")
    result = run_cli(["run"], tmp_path / "home", config)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {STORE_ENV}=s3://{BUCKET}/store: cannot write there"), line
    assert "127.0.0.1:1" in line
    assert not (tmp_path / "home").exists(), "nothing is written before the store answers"
