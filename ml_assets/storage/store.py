"""The content-addressed artifact store: atomic writes, integrity checks and garbage collection.

An artifact is a directory `<root>/<kind>/<key>/` holding its files and a `MANIFEST.json` that
lists each file's SHA-256. The artifact's digest is the SHA-256 of that manifest, so one recorded
digest vouches for every file. Keys are memo keys (content hashes of what produced the artifact),
so the store is also the memoization cache. Each entry has a sidecar `<key>.entry.json` with
`created_at` and `last_hit_at`, which garbage collection reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ml_assets.core.keys import file_sha256

MANIFEST: Final = "MANIFEST.json"
KINDS: Final = ("datasets", "models", "selections", "predictions", "aggregated", "requests")
_KEY_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or fails its hash; the message says which and why."""


# (artifact directory, digest) → the stat signature of its files when this process verified it.
_VERIFIED: dict[tuple[str, str | None], tuple[tuple[str, int, int, int], ...]] = {}


def manifest_files(kind: str, key: str, raw: bytes) -> dict[str, tuple[str, int]]:
    """name → (sha256, bytes) from a manifest; anything malformed is an `ArtifactError`."""
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        return {
            str(name): (str(info["sha256"]), int(info["bytes"])) for name, info in files.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ArtifactError(
            f"{kind}/{key}: manifest is malformed (not the JSON this store writes)"
        ) from None


def check_file(kind: str, key: str, file: Path, sha256: str, size: int, where: str = "") -> None:
    """`file` has the size and SHA-256 its manifest lists, or an `ArtifactError` naming it."""
    if file.stat().st_size != size or file_sha256(file) != sha256:
        raise ArtifactError(
            f"{kind}/{key}: file {file.name} fails its SHA-256 check (truncated or altered{where})"
        )


@dataclass(frozen=True)
class Artifact:
    kind: str
    key: str
    path: Path
    digest: str
    bytes: int

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    key: str
    created_at: float
    last_hit_at: float
    bytes: int


@dataclass(frozen=True)
class GcReport:
    deleted: list[tuple[str, str]]
    kept_protected: int
    kept_recent: int
    bytes_freed: int
    dry_run: bool


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Artifacts under one root; `clock` is injectable for tests of time-based rules."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.clock = clock

    # --- paths ---------------------------------------------------------------------------

    def _check(self, kind: str, key: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
        if not _KEY_PATTERN.fullmatch(key):
            raise ValueError(f"invalid artifact key {key!r}")

    def path(self, kind: str, key: str) -> Path:
        self._check(kind, key)
        return self.root / kind / key

    def _entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.entry.json"

    # --- writing -------------------------------------------------------------------------

    def put(self, kind: str, key: str, write: Callable[[Path], object]) -> Artifact:
        """Write an artifact atomically: `write` fills a private directory, then one rename.

        An intact artifact already at `key` is kept (same key, same content); a damaged one is
        replaced.
        """
        final = self.path(kind, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            return self._put(kind, key, final, write)
        except OSError as error:
            raise ArtifactError(
                f"{kind}/{key}: cannot write the artifact under {self.root}: "
                f"{error.strerror or error} (the previous artifacts are untouched)"
            ) from error

    def _put(self, kind: str, key: str, final: Path, write: Callable[[Path], object]) -> Artifact:
        staging = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            write(staging)
            files = sorted(p for p in staging.iterdir() if p.is_file())
            manifest = {
                "kind": kind,
                "key": key,
                "files": {
                    p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files
                },
            }
            (staging / MANIFEST).write_bytes(json.dumps(manifest, sort_keys=True).encode())
            for p in staging.iterdir():
                with p.open("rb") as handle:
                    os.fsync(handle.fileno())
            if final.exists():
                try:
                    existing = self.verify(kind, key)
                except ArtifactError:
                    self._discard(final)
                else:
                    self.touch(kind, key)
                    return existing
            try:
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
                # Another writer of the same key got there first: same key, same content.
                existing = self.verify(kind, key)
                self.touch(kind, key)
                return existing
            _fsync_dir(final.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        now = self.clock()
        self._write_entry(kind, key, created_at=now, last_hit_at=now)
        return self.verify(kind, key)

    def _discard(self, path: Path) -> None:
        trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # --- reading -------------------------------------------------------------------------

    def verify(self, kind: str, key: str, digest: str | None = None) -> Artifact:
        """The artifact, after checking every file against its manifest (and `digest`)."""
        path = self.path(kind, key)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{kind}/{key}: artifact missing or incomplete ({path})")
        raw = manifest_path.read_bytes()
        actual = hashlib.sha256(raw).hexdigest()
        if digest is not None and actual != digest:
            raise ArtifactError(
                f"{kind}/{key}: manifest hash {actual[:12]}… does not match the recorded "
                f"{digest[:12]}…; refusing to use it"
            )
        total = 0
        for name, (sha256, size) in manifest_files(kind, key, raw).items():
            file = path / name
            if not file.is_file():
                raise ArtifactError(f"{kind}/{key}: file {name} is missing")
            check_file(kind, key, file, sha256, size)
            total += size
        return Artifact(kind, key, path, actual, total)

    def present(self, kind: str, key: str, digest: str | None = None) -> bool:
        """True when `verify` would pass, hashing only what this process has not yet verified
        as it is: planning asks on every sensor tick, and a model can be hundreds of MB.

        An artifact verified before is re-hashed only when one of its files changed size, mtime
        or inode; a same-size rewrite that also restores the mtime goes unnoticed here (the step
        that reads the artifact still verifies it).
        """
        path = self.path(kind, key)
        try:
            signature = tuple(
                sorted(
                    (p.name, s.st_size, s.st_mtime_ns, s.st_ino)
                    for p in path.iterdir()
                    for s in [p.stat()]
                )
            )
        except OSError:
            return False
        remembered = (str(path), digest)
        if _VERIFIED.get(remembered) == signature:
            return True
        try:
            self.verify(kind, key, digest)
        except ArtifactError:
            return False
        _VERIFIED[remembered] = signature
        return True

    def find(self, kind: str, key: str) -> tuple[Artifact | None, str | None]:
        """An intact cached artifact, or None and the reason it is a miss."""
        try:
            return self.verify(kind, key), None
        except ArtifactError as error:
            return None, str(error)

    # --- cache bookkeeping ---------------------------------------------------------------

    def _write_entry(self, kind: str, key: str, *, created_at: float, last_hit_at: float) -> None:
        body = {"created_at": created_at, "last_hit_at": last_hit_at}
        _write_atomic(self._entry_path(kind, key), json.dumps(body).encode())

    def entry(self, kind: str, key: str) -> CacheEntry | None:
        path = self._entry_path(kind, key)
        artifact = self.path(kind, key)
        if not artifact.is_dir():
            return None
        size = sum(p.stat().st_size for p in artifact.iterdir() if p.is_file())
        try:
            body = json.loads(path.read_text())
            created, hit = float(body["created_at"]), float(body["last_hit_at"])
        except (OSError, ValueError, KeyError, TypeError):
            # No or unreadable bookkeeping: treat it as just created, so GC waits a full period.
            now = self.clock()
            self._write_entry(kind, key, created_at=now, last_hit_at=now)
            created = hit = now
        return CacheEntry(kind, key, created, hit, size)

    def touch(self, kind: str, key: str) -> None:
        """Record a cache hit (keeps `created_at`)."""
        current = self.entry(kind, key)
        now = self.clock()
        created = current.created_at if current else now
        self._write_entry(
            kind,
            key,
            created_at=created,
            last_hit_at=max(now, current.last_hit_at if current else now),
        )

    def entries(self, kinds: Iterable[str] = KINDS) -> Iterator[CacheEntry]:
        for kind in kinds:
            base = self.root / kind
            if not base.is_dir():
                continue
            for path in sorted(base.iterdir()):
                if path.is_dir() and _KEY_PATTERN.fullmatch(path.name):
                    entry = self.entry(kind, path.name)
                    if entry is not None:
                        yield entry

    def collect_garbage(
        self,
        retention_seconds: float,
        protected: set[tuple[str, str]],
        *,
        dry_run: bool = False,
        keep_hit_since: float | None = None,
    ) -> GcReport:
        """Delete entries not hit for `retention_seconds`, except `protected` (kind, key) pairs
        and entries created or hit at or after `keep_hit_since` (used by runs in progress).

        An entry hit "in the future" (the clock went backwards) is never deleted. Staging
        directories left by a killed writer are removed once older than the retention too, but
        never one touched since `keep_hit_since` (a run in progress may still be writing it).
        """
        now = self.clock()
        if not dry_run:
            stale = now - retention_seconds
            self._remove_stale_staging(
                stale if keep_hit_since is None else min(stale, keep_hit_since)
            )
        deleted: list[tuple[str, str]] = []
        kept_protected = kept_recent = freed = 0
        for entry in list(self.entries()):
            if (entry.kind, entry.key) in protected:
                kept_protected += 1
                continue
            in_use = (
                keep_hit_since is not None
                and max(entry.created_at, entry.last_hit_at) >= keep_hit_since
            )
            age = now - entry.last_hit_at
            if in_use or age < retention_seconds or entry.last_hit_at > now:
                kept_recent += 1
                continue
            deleted.append((entry.kind, entry.key))
            freed += entry.bytes
            if not dry_run:
                self._discard(self.path(entry.kind, entry.key))
                with contextlib.suppress(FileNotFoundError):
                    self._entry_path(entry.kind, entry.key).unlink()
        return GcReport(deleted, kept_protected, kept_recent, freed, dry_run)

    def _remove_stale_staging(self, older_than: float) -> None:
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            for path in base.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < older_than:
                        shutil.rmtree(path, ignore_errors=True)
