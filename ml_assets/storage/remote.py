"""The artifact store on an object store (`ML_ASSETS_STORE=s3://bucket/prefix`, any fsspec URL),
used through a verified local cache on each machine.

An artifact is what the local store (`store.py`) makes of it: files plus a `MANIFEST.json` of
their SHA-256s, whose own SHA-256 is the digest the instance records. On the object store, which
has no rename:

    <kind>/<key>/objects/<sha256>   each file's bytes, named by their hash (never other bytes)
    <kind>/<key>/MANIFEST.json      the publication, written last
    <kind>/<key>.entry.json         GC bookkeeping, written after the manifest, deleted first

- **Publishing.** An artifact is built and verified in the local cache, its objects uploaded,
  then its manifest: until the manifest is there, readers see no artifact; once it is, every
  object it names is there (objects are named by content, so no writer changes one under it).
  The first intact publication of a key wins: a later writer adopts it (its digest is what gets
  recorded), and a damaged one is replaced.
- **Reading.** A local copy is used only when it is the published one (same manifest digest);
  otherwise the artifact is downloaded into a private folder, every file checked against the
  manifest (and the manifest against the digest the instance recorded), and only then moved into
  the cache by one rename. A copy still cached whose publication was lost is published again.
- **Bookkeeping and GC** live on the object store, so every machine's hits count and one
  collection serves them all; it also drops unused local copies and abandoned uploads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from ml_assets.core.config import StoreLocation
from ml_assets.errors import redacted
from ml_assets.storage.store import (
    KINDS,
    MANIFEST,
    Artifact,
    ArtifactError,
    ArtifactStore,
    CacheEntry,
    GcReport,
    check_file,
    manifest_files,
)

OBJECTS: Final = "objects"


def open_filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of `url`; ImportError names the missing package."""
    from fsspec.core import url_to_fs

    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        # Fail in seconds, not minutes, when the endpoint does not answer (botocore's defaults:
        # 60 s per connection attempt, retried).
        options["config_kwargs"] = {"connect_timeout": 5, "retries": {"max_attempts": 2}}
    fs, path = url_to_fs(url, **options)
    return fs, str(path).rstrip("/")


class MirroredStore(ArtifactStore):
    """An object store as the shared truth, `cache` (a local `ArtifactStore`) as this machine's
    verified copy of what it read or wrote."""

    def __init__(
        self,
        cache_root: Path,
        url: str,
        clock: Callable[[], float] = time.time,
        filesystem: tuple[Any, str] | None = None,
    ) -> None:
        super().__init__(cache_root, clock)
        self.url = url.rstrip("/")
        self.cache = ArtifactStore(cache_root, clock)
        self.fs, self.base = filesystem or open_filesystem(url)
        self._listed: dict[str, set[str]] = {}  # kind → published keys, listed once per store

    # --- names and errors ----------------------------------------------------------------

    def _remote(self, kind: str, key: str, name: str | None = None) -> str:
        self._check(kind, key)
        return f"{self.base}/{kind}/{key}" + (f"/{name}" if name else "")

    def _object(self, kind: str, key: str, sha256: str) -> str:
        return self._remote(kind, key, f"{OBJECTS}/{sha256}")

    def _remote_entry(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key}.entry.json"

    @contextlib.contextmanager
    def _remote_errors(self, kind: str, key: str, action: str) -> Iterator[None]:
        """The object store's own errors (botocore's, gcsfs's…) as an `ArtifactError` naming
        the artifact and the store; a missing object stays `FileNotFoundError`."""
        try:
            yield
        except (ArtifactError, FileNotFoundError):
            raise
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ArtifactError(
                f"{kind}/{key}: cannot {action} {redacted(self.url)}: {reason}"
            ) from error

    def _remote_manifest(self, kind: str, key: str) -> bytes | None:
        with self._remote_errors(kind, key, "read"):
            try:
                data: bytes = self.fs.cat_file(self._remote(kind, key, MANIFEST))
            except FileNotFoundError:
                return None
        return data

    # --- writing -------------------------------------------------------------------------

    def put(self, kind: str, key: str, write: Callable[[Path], object]) -> Artifact:
        """Build and verify the artifact in the local cache, then publish it, unless an intact
        publication of the key is there already: that one is kept, and returned."""
        local = self.cache.put(kind, key, write)
        with self._remote_errors(kind, key, "write the artifact to"):
            published = self._remote_manifest(kind, key)
            if published is not None and self._remote_intact(kind, key, published):
                self.touch(kind, key)
                if hashlib.sha256(published).hexdigest() == local.digest:
                    return local
                self._download(kind, key, published)  # the first publication wins
                return self.cache.verify(kind, key, hashlib.sha256(published).hexdigest())
            self._publish(local)
        return local

    def _publish(self, local: Artifact) -> None:
        kind, key = local.kind, local.key
        manifest = (local.path / MANIFEST).read_bytes()
        for name, (sha256, _) in manifest_files(kind, key, manifest).items():
            self.fs.put_file(str(local.path / name), self._object(kind, key, sha256))
        self.fs.pipe_file(self._remote(kind, key, MANIFEST), manifest)
        now = self.clock()
        self._write_remote_entry(kind, key, created_at=now, last_hit_at=now)
        self._listed.get(kind, set()).add(key)

    def _remote_intact(self, kind: str, key: str, manifest: bytes) -> bool:
        """Every object the manifest names is there with its SHA-256 (read back: on put only)."""
        try:
            for sha256, _ in manifest_files(kind, key, manifest).values():
                digest = hashlib.sha256()
                with self.fs.open(self._object(kind, key, sha256), "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                if digest.hexdigest() != sha256:
                    return False
        except (FileNotFoundError, ArtifactError):
            return False
        return True

    # --- reading -------------------------------------------------------------------------

    def path(self, kind: str, key: str) -> Path:
        return self.cache.path(kind, key)

    def verify(self, kind: str, key: str, digest: str | None = None) -> Artifact:
        """The published artifact from the local cache, downloaded first when the cache does
        not hold that very publication; every file checked against the manifest (and the
        manifest against `digest`)."""
        manifest = self._remote_manifest(kind, key)
        if manifest is None:
            try:
                local = self.cache.verify(kind, key, digest)
            except ArtifactError:
                raise ArtifactError(
                    f"{kind}/{key}: artifact missing or incomplete ({redacted(self.url)})"
                ) from None
            with self._remote_errors(kind, key, "write the artifact to"):
                self._publish(local)  # cached here, unpublished since (a failed upload, GC)
            return local
        actual = hashlib.sha256(manifest).hexdigest()
        if digest is not None and actual != digest:
            raise ArtifactError(
                f"{kind}/{key}: manifest hash {actual[:12]}… does not match the recorded "
                f"{digest[:12]}…; refusing to use it ({redacted(self.url)})"
            )
        with contextlib.suppress(ArtifactError):
            artifact = self.cache.verify(kind, key, actual)
            self.cache.touch(kind, key)  # the local copy's own GC clock
            return artifact
        self._download(kind, key, manifest)
        return self.cache.verify(kind, key, actual)

    def _download(self, kind: str, key: str, manifest: bytes) -> None:
        """Into a private folder, each file checked against the manifest, then into the cache
        by one rename: an altered or missing object never lands there."""
        final = self.cache.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name, (sha256, size) in manifest_files(kind, key, manifest).items():
                file = staging / name
                with self._remote_errors(kind, key, "read"):
                    try:
                        self.fs.get_file(self._object(kind, key, sha256), str(file))
                    except FileNotFoundError:
                        raise ArtifactError(
                            f"{kind}/{key}: file {name} is missing ({redacted(self.url)})"
                        ) from None
                check_file(kind, key, file, sha256, size, f" in {redacted(self.url)}")
            (staging / MANIFEST).write_bytes(manifest)
            self._replace_cached(kind, key, staging, hashlib.sha256(manifest).hexdigest())
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _replace_cached(self, kind: str, key: str, staging: Path, digest: str) -> None:
        """Move a verified download into the cache, unless another process of this machine put
        the same publication there meanwhile (it may be reading it)."""
        final = self.cache.path(kind, key)
        if final.exists():
            try:
                self.cache.verify(kind, key, digest)
                return
            except ArtifactError:
                with contextlib.suppress(FileNotFoundError):
                    self.cache._discard(final)  # another publication, or damaged
        with contextlib.suppress(OSError):  # another process renamed the same copy in first
            staging.rename(final)
        now = self.clock()
        self.cache._write_entry(kind, key, created_at=now, last_hit_at=now)

    def _published(self, kind: str) -> set[str]:
        """Keys with bookkeeping on the object store (published; written after the manifest,
        deleted before it): one listing per kind for the life of this store object."""
        if kind not in self._listed:
            keys: set[str] = set()
            with self._remote_errors(kind, "listing", "list"):
                self.fs.invalidate_cache(f"{self.base}/{kind}")
                with contextlib.suppress(FileNotFoundError):
                    for path in self.fs.ls(f"{self.base}/{kind}", detail=False):
                        name = str(path).rstrip("/").rsplit("/", 1)[-1]
                        if name.endswith(".entry.json"):
                            keys.add(name.removesuffix(".entry.json"))
            self._listed[kind] = keys
        return self._listed[kind]

    def present(self, kind: str, key: str, digest: str | None = None) -> bool:
        """True when the key is published and its manifest matches `digest`, with the cached
        copy intact or every object there at its size. Files are hashed when a step loads
        them, not here: planning asks on every sensor tick (one listing per kind, then one
        read per artifact not cached here)."""
        if key not in self._published(kind):
            return False
        if self.cache.present(kind, key, digest):
            return True
        manifest = self._remote_manifest(kind, key)
        if manifest is None:
            return False
        if digest is not None and hashlib.sha256(manifest).hexdigest() != digest:
            return False
        with self._remote_errors(kind, key, "read"):
            try:
                for sha256, size in manifest_files(kind, key, manifest).values():
                    if self.fs.info(self._object(kind, key, sha256))["size"] != size:
                        return False
            except (FileNotFoundError, ArtifactError):
                return False
        return True

    def find(self, kind: str, key: str) -> tuple[Artifact | None, str | None]:
        try:
            return self.verify(kind, key), None
        except ArtifactError as error:
            return None, str(error)

    # --- cache bookkeeping ---------------------------------------------------------------

    def _write_remote_entry(
        self, kind: str, key: str, *, created_at: float, last_hit_at: float
    ) -> None:
        body = {"created_at": created_at, "last_hit_at": last_hit_at}
        with self._remote_errors(kind, key, "write to"):
            self.fs.pipe_file(self._remote_entry(kind, key), json.dumps(body).encode())

    def entry(self, kind: str, key: str) -> CacheEntry | None:
        manifest = self._remote_manifest(kind, key)
        if manifest is None:
            return None
        try:
            size = sum(s for _, s in manifest_files(kind, key, manifest).values())
        except ArtifactError:
            size = 0
        try:
            with self._remote_errors(kind, key, "read"):
                body = json.loads(self.fs.cat_file(self._remote_entry(kind, key)))
            created, hit = float(body["created_at"]), float(body["last_hit_at"])
        except (FileNotFoundError, ArtifactError, ValueError, KeyError, TypeError):
            now = self.clock()  # no bookkeeping: as just created, so GC waits a full period
            self._write_remote_entry(kind, key, created_at=now, last_hit_at=now)
            created = hit = now
        return CacheEntry(kind, key, created, hit, size)

    def touch(self, kind: str, key: str) -> None:
        current = self.entry(kind, key)
        if current is None:
            return
        now = self.clock()
        self._write_remote_entry(
            kind, key, created_at=current.created_at, last_hit_at=max(now, current.last_hit_at)
        )

    def entries(self, kinds: Iterable[str] = KINDS) -> Iterator[CacheEntry]:
        for kind in kinds:
            self._listed.pop(kind, None)  # GC wants the listing of now
            for key in sorted(self._published(kind)):
                with contextlib.suppress(ValueError):  # not a key this store writes
                    entry = self.entry(kind, key)
                    if entry is not None:
                        yield entry

    def _discard(self, path: Path) -> None:
        """Unpublish (bookkeeping first, then the manifest), then remove the objects and this
        machine's copy."""
        kind, key = path.parent.name, path.name
        with self._remote_errors(kind, key, "delete from"):
            for target in (self._remote_entry(kind, key), self._remote(kind, key, MANIFEST)):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(target)
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self._remote(kind, key), recursive=True)
        self._listed.get(kind, set()).discard(key)
        if path.exists():
            with contextlib.suppress(FileNotFoundError):
                self.cache._discard(path)

    def collect_garbage(
        self,
        retention_seconds: float,
        protected: set[tuple[str, str]],
        *,
        dry_run: bool = False,
        keep_hit_since: float | None = None,
    ) -> GcReport:
        """The local store's rules over the object store's entries (the report), then over
        this machine's cached copies; uploads abandoned before their manifest are removed once
        older than the retention."""
        report = super().collect_garbage(
            retention_seconds, protected, dry_run=dry_run, keep_hit_since=keep_hit_since
        )
        self.cache.collect_garbage(
            retention_seconds, protected, dry_run=dry_run, keep_hit_since=keep_hit_since
        )
        if not dry_run:
            stale = self.clock() - retention_seconds
            self._remove_abandoned_uploads(
                stale if keep_hit_since is None else min(stale, keep_hit_since)
            )
        return report

    def _remove_abandoned_uploads(self, older_than: float) -> None:
        for kind in KINDS:
            published = self._published(kind)
            with self._remote_errors(kind, "uploads", "list"):
                try:
                    listed = self.fs.ls(f"{self.base}/{kind}", detail=True)
                except FileNotFoundError:
                    continue
                for info in listed:
                    key = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
                    if info["type"] != "directory" or key in published:
                        continue
                    folder = f"{self.base}/{kind}/{key}"
                    self.fs.invalidate_cache(folder)
                    found = self.fs.find(folder, detail=True)
                    times = [_modified(meta) for meta in found.values()]
                    if times and None not in times and max(t or 0.0 for t in times) < older_than:
                        self.fs.rm(folder, recursive=True)


def _modified(info: dict[str, Any]) -> float | None:
    """When an object was last written, as fsspec filesystems report it (None: not said)."""
    value = info.get("LastModified", info.get("mtime"))
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def open_store(location: StoreLocation, clock: Callable[[], float] = time.time) -> ArtifactStore:
    """The store `location` names: a folder, or an object store through a local cache."""
    if location.remote is None:
        return ArtifactStore(location.local, clock)
    return MirroredStore(location.local, location.remote, clock)
