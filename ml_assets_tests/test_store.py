"""Unit tests for the content-addressed artifact store (`ml_assets/store.py`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import ml_assets.storage.store
from ml_assets.storage.store import MANIFEST, ArtifactError, ArtifactStore, file_sha256

DAY = 86_400.0


class Clock:
    """A settable clock for time-based rules."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _writer(files: dict[str, bytes]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        for name, data in files.items():
            (directory / name).write_bytes(data)

    return write


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", clock=clock)


def _dir_bytes(path: Path) -> int:
    """What deleting an artifact directory frees: its payload files and its manifest."""
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _visible(store: ArtifactStore, kind: str) -> list[str]:
    return sorted(p.name for p in (store.root / kind).iterdir())


def test_put_verify_round_trip(store: ArtifactStore) -> None:
    artifact = store.put("models", "k1", _writer({"a.txt": b"hello", "b.bin": b"\x00" * 10}))
    assert artifact.path == store.root / "models" / "k1"
    assert artifact.file("a.txt").read_bytes() == b"hello"
    assert artifact.bytes == 5 + 10  # payload files; the manifest is not counted
    manifest_bytes = (artifact.path / MANIFEST).read_bytes()
    assert artifact.digest == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    assert manifest["files"]["a.txt"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    again = store.verify("models", "k1", digest=artifact.digest)
    assert again == artifact
    found, reason = store.find("models", "k1")
    assert found == artifact
    assert reason is None
    # Staging directories are gone; only the artifact and its entry sidecar are visible.
    assert _visible(store, "models") == ["k1", "k1.entry.json"]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_digest_mismatch_refused(store: ArtifactStore) -> None:
    store.put("models", "k1", _writer({"a.txt": b"hello"}))
    with pytest.raises(ArtifactError, match="refusing to use it"):
        store.verify("models", "k1", digest="0" * 64)


def _damage_truncate(path: Path) -> None:
    (path / "a.txt").write_bytes(b"hel")


def _damage_alter(path: Path) -> None:
    (path / "a.txt").write_bytes(b"jello")  # same size, other content


def _damage_delete(path: Path) -> None:
    (path / "a.txt").unlink()


def _damage_manifest(path: Path) -> None:
    (path / MANIFEST).unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_damage_truncate, "fails its SHA-256 check"),
        (_damage_alter, "fails its SHA-256 check"),
        (_damage_delete, "file a.txt is missing"),
        (_damage_manifest, "missing or incomplete"),
    ],
)
def test_damaged_artifact_detected(
    store: ArtifactStore, damage: Callable[[Path], None], expected: str
) -> None:
    artifact = store.put("models", "k1", _writer({"a.txt": b"hello"}))
    damage(artifact.path)
    with pytest.raises(ArtifactError, match=expected):
        store.verify("models", "k1")
    found, reason = store.find("models", "k1")
    assert found is None
    assert reason is not None
    assert "models/k1" in reason
    assert expected in reason


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_alter, _damage_delete, _damage_manifest]
)
def test_present_notices_damage_after_a_cached_check(
    store: ArtifactStore, damage: Callable[[Path], None]
) -> None:
    artifact = store.put("models", "k1", _writer({"a.txt": b"hello"}))
    assert store.present("models", "k1")
    assert store.present("models", "k1", artifact.digest)
    assert not store.present("models", "k1", "0" * 64)
    damage(artifact.path)
    for path in artifact.path.iterdir():  # a rewrite moves the mtime, even on coarse clocks
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not store.present("models", "k1")
    assert not store.present("models", "never-written")


def test_present_hashes_an_unchanged_artifact_once(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("models", "k1", _writer({"a.txt": b"hello", "b.txt": b"world"}))
    hashed: list[str] = []
    real = ml_assets.storage.store.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(ml_assets.storage.store, "file_sha256", counting)
    other_object = ArtifactStore(store.root)  # the cache is per process, not per object
    assert store.present("models", "k1") and other_object.present("models", "k1")
    assert sorted(hashed) == ["a.txt", "b.txt"]


@pytest.mark.parametrize(
    "manifest",
    ['{"version": 1}', "[]", '{"files": {"a.txt": "x"}}', '{"files": {"a.txt": {}}}'],
)
def test_malformed_manifest_is_refused(store: ArtifactStore, manifest: str) -> None:
    artifact = store.put("models", "k1", _writer({"a.txt": b"hello"}))
    (artifact.path / MANIFEST).write_text(manifest)
    with pytest.raises(ArtifactError, match="manifest is malformed"):
        store.verify("models", "k1")
    assert not store.present("models", "k1")


def test_concurrent_writers_of_one_key_both_succeed(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs writing the same key at once: the second rename finds the first's artifact
    (same key, same content) and returns it instead of failing."""
    real_rename = os.rename
    raced: list[str] = []

    def rename_after_a_rival(source: str | Path, target: str | Path) -> None:
        if not raced and Path(target).name == "k1":
            raced.append("rival")
            monkeypatch.setattr(ml_assets.storage.store.os, "rename", real_rename)
            store.put("models", "k1", _writer({"a.txt": b"hello"}))  # lands first
        real_rename(source, target)

    monkeypatch.setattr(ml_assets.storage.store.os, "rename", rename_after_a_rival)
    artifact = store.put("models", "k1", _writer({"a.txt": b"hello"}))
    assert raced == ["rival"]
    assert artifact.file("a.txt").read_bytes() == b"hello"
    assert store.verify("models", "k1") == artifact
    assert _visible(store, "models") == ["k1", "k1.entry.json"]


def test_missing_artifact_is_a_miss(store: ArtifactStore) -> None:
    found, reason = store.find("datasets", "never-written")
    assert found is None
    assert reason is not None
    assert "missing" in reason


def test_put_existing_intact_key_keeps_it(store: ArtifactStore, clock: Clock) -> None:
    first = store.put("models", "k1", _writer({"a.txt": b"first"}))
    created = store.entry("models", "k1")
    assert created is not None
    clock.now += 100
    second = store.put("models", "k1", _writer({"a.txt": b"second"}))
    assert second == first
    assert (first.path / "a.txt").read_bytes() == b"first"
    entry = store.entry("models", "k1")
    assert entry is not None
    assert entry.created_at == created.created_at
    assert entry.last_hit_at == clock.now  # a put that reuses the entry counts as a hit
    assert _visible(store, "models") == ["k1", "k1.entry.json"]


def test_put_over_corrupt_key_replaces_it(store: ArtifactStore) -> None:
    first = store.put("models", "k1", _writer({"a.txt": b"first"}))
    (first.path / "a.txt").write_bytes(b"corrupted")
    second = store.put("models", "k1", _writer({"a.txt": b"fresh"}))
    assert (second.path / "a.txt").read_bytes() == b"fresh"
    assert second.digest != first.digest
    assert store.verify("models", "k1").digest == second.digest
    assert _visible(store, "models") == ["k1", "k1.entry.json"]


def test_failing_writer_leaves_nothing_visible(store: ArtifactStore) -> None:
    def write(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        store.put("models", "k1", write)
    assert _visible(store, "models") == []
    assert store.find("models", "k1")[0] is None
    assert store.entry("models", "k1") is None


def test_failing_writer_keeps_previous_intact_artifact(store: ArtifactStore) -> None:
    first = store.put("models", "k1", _writer({"a.txt": b"first"}))

    def write(directory: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.put("models", "k1", write)
    assert store.verify("models", "k1") == first
    assert _visible(store, "models") == ["k1", "k1.entry.json"]


def test_clock_sets_created_and_last_hit(store: ArtifactStore, clock: Clock) -> None:
    clock.now = 5_000.0
    store.put("models", "k1", _writer({"a.txt": b"x"}))
    entry = store.entry("models", "k1")
    assert entry is not None
    assert (entry.created_at, entry.last_hit_at) == (5_000.0, 5_000.0)
    clock.now = 7_500.0
    store.touch("models", "k1")
    entry = store.entry("models", "k1")
    assert entry is not None
    assert (entry.created_at, entry.last_hit_at) == (5_000.0, 7_500.0)
    # A clock that goes backwards never moves last_hit_at back.
    clock.now = 6_000.0
    store.touch("models", "k1")
    entry = store.entry("models", "k1")
    assert entry is not None
    assert entry.last_hit_at == 7_500.0


def test_entries_lists_artifacts_of_every_kind(store: ArtifactStore) -> None:
    store.put("models", "m1", _writer({"a": b"1"}))
    store.put("datasets", "d1", _writer({"a": b"22"}))
    listed = {(e.kind, e.key) for e in store.entries()}
    assert listed == {("models", "m1"), ("datasets", "d1")}


def _three_entries(store: ArtifactStore, clock: Clock) -> None:
    clock.now = 0.0
    store.put("models", "old", _writer({"a": b"x" * 100}))
    store.put("models", "old-protected", _writer({"a": b"y" * 100}))
    clock.now = 25 * DAY
    store.put("models", "recent", _writer({"a": b"z" * 100}))
    clock.now = 31 * DAY


def test_gc_deletes_only_old_unprotected(store: ArtifactStore, clock: Clock) -> None:
    _three_entries(store, clock)
    size_old = _dir_bytes(store.path("models", "old"))
    report = store.collect_garbage(30 * DAY, protected={("models", "old-protected")})
    assert report.deleted == [("models", "old")]
    assert report.kept_protected == 1
    assert report.kept_recent == 1
    assert report.bytes_freed == size_old
    assert report.dry_run is False
    assert store.find("models", "old")[0] is None
    assert store.find("models", "old-protected")[0] is not None
    assert store.find("models", "recent")[0] is not None
    assert _visible(store, "models") == [
        "old-protected",
        "old-protected.entry.json",
        "recent",
        "recent.entry.json",
    ]


def test_gc_respects_touch(store: ArtifactStore, clock: Clock) -> None:
    _three_entries(store, clock)
    clock.now = 20 * DAY
    store.touch("models", "old")
    clock.now = 31 * DAY
    report = store.collect_garbage(30 * DAY, protected=set())
    assert ("models", "old") not in report.deleted
    assert report.deleted == [("models", "old-protected")]


def test_gc_dry_run_reports_without_deleting(store: ArtifactStore, clock: Clock) -> None:
    _three_entries(store, clock)
    before = _visible(store, "models")
    size_old = _dir_bytes(store.path("models", "old"))
    report = store.collect_garbage(30 * DAY, protected={("models", "old-protected")}, dry_run=True)
    assert report.dry_run is True
    assert report.deleted == [("models", "old")]
    assert report.bytes_freed == size_old
    assert _visible(store, "models") == before
    assert store.find("models", "old")[0] is not None


def test_gc_never_deletes_future_hits(store: ArtifactStore, clock: Clock) -> None:
    clock.now = 100 * DAY
    store.put("models", "future", _writer({"a": b"x"}))
    clock.now = 0.0  # the clock went backwards
    report = store.collect_garbage(0.5, protected=set())
    assert report.deleted == []
    assert report.kept_recent == 1
    assert report.bytes_freed == 0
    assert store.find("models", "future")[0] is not None


def test_gc_bytes_freed_sums_deleted_entries(store: ArtifactStore, clock: Clock) -> None:
    clock.now = 0.0
    a = store.put("models", "a", _writer({"f": b"1" * 1000}))
    b = store.put("predictions", "b", _writer({"f": b"2" * 50, "g": b"3" * 7}))
    expected = _dir_bytes(a.path) + _dir_bytes(b.path)
    assert expected > a.bytes + b.bytes == 1057  # manifests are freed too
    clock.now = 10 * DAY
    report = store.collect_garbage(DAY, protected=set())
    assert sorted(report.deleted) == [("models", "a"), ("predictions", "b")]
    assert report.bytes_freed == expected
    assert list(store.entries()) == []


@pytest.mark.parametrize("key", ["../x", "a/b", "", "UPPER", ".hidden", "x" * 129])
def test_invalid_key_rejected(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.put("models", key, _writer({"a": b"1"}))
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.path("models", key)
    assert not (store.root / "x").exists()
    assert not store.root.exists() or list(store.root.rglob("*")) == []


@pytest.mark.parametrize("kind", ["model", "../models", "tmp"])
def test_invalid_kind_rejected(store: ArtifactStore, kind: str) -> None:
    with pytest.raises(ValueError, match="unknown artifact kind"):
        store.put(kind, "k1", _writer({"a": b"1"}))
    assert not store.root.exists()
