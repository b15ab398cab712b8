"""The artifact store on an object store (`ML_ASSETS_STORE=s3://bucket/prefix`, any fsspec URL),
used through a verified local cache on each machine.

Same layout and guarantees as the local store (`store.py`): `<kind>/<key>/` holds the files and
their `MANIFEST.json`, whose SHA-256 is the artifact's digest. What differs, because an object
store has no rename:

- **Publishing.** An artifact is built and verified in the local cache first, then uploaded: its
  files, then the manifest, last. The manifest is the publication: until it is there, readers see
  no artifact; once it is, every file it lists is. Replacing a damaged artifact takes its manifest
  away first. Writers of one key write the same content (keys are content hashes).
- **Reading.** `verify` uses the local copy when intact; otherwise it downloads the artifact into
  a private staging folder, publishes it in the cache by one rename, and checks every file's
  SHA-256 (and the recorded digest) before anything loads it.
- **Bookkeeping and GC** live on the object store (`<key>.entry.json`), so every machine's hits
  count and one collection serves them all; a deleted artifact loses its manifest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ml_assets.core.config import StoreLocation
from ml_assets.core.keys import file_sha256
from ml_assets.storage.store import (
    KINDS,
    MANIFEST,
    Artifact,
    ArtifactError,
    ArtifactStore,
    CacheEntry,
    manifest_files,
)


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

    def _remote(self, kind: str, key: str, name: str | None = None) -> str:
        self._check(kind, key)
        return f"{self.base}/{kind}/{key}" + (f"/{name}" if name else "")

    def _remote_entry(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key}.entry.json"

    def _remote_manifest(self, kind: str, key: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._remote(kind, key, MANIFEST))
        except FileNotFoundError:
            return None
        return data

    # --- writing -------------------------------------------------------------------------

    def put(self, kind: str, key: str, write: Callable[[Path], object]) -> Artifact:
        """Build and verify the artifact in the local cache, then publish it: files first, the
        manifest last (an intact published copy of the same key is kept as it is)."""
        local = self.cache.put(kind, key, write)
        try:
            self._publish(local)
        except OSError as error:
            raise ArtifactError(
                f"{kind}/{key}: cannot write the artifact to {self.url}: {error} "
                "(the previous artifacts are untouched)"
            ) from error
        return local

    def _publish(self, local: Artifact) -> None:
        kind, key = local.kind, local.key
        published = self._remote_manifest(kind, key)
        # Published already (another writer of the same key, or a damaged copy a reader refused,
        # which is why this artifact was built again): kept if intact.
        same = published is not None and hashlib.sha256(published).hexdigest() == local.digest
        if same and published is not None and self._remote_intact(kind, key, published):
            self.touch(kind, key)
            return
        if published is not None:  # damaged or other content: unpublish before replacing
            self.fs.rm_file(self._remote(kind, key, MANIFEST))
        for file in sorted(local.path.iterdir()):
            if file.name != MANIFEST:
                self.fs.put_file(str(file), self._remote(kind, key, file.name))
        self.fs.put_file(str(local.path / MANIFEST), self._remote(kind, key, MANIFEST))
        now = self.clock()
        self._write_remote_entry(kind, key, created_at=now, last_hit_at=now)

    def _remote_intact(self, kind: str, key: str, manifest: bytes) -> bool:
        """Every file the manifest lists is there with its SHA-256 (read back: rare, on put)."""
        try:
            for name, (sha256, _) in manifest_files(kind, key, manifest).items():
                digest = hashlib.sha256()
                with self.fs.open(self._remote(kind, key, name), "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                if digest.hexdigest() != sha256:
                    return False
        except (FileNotFoundError, ArtifactError):
            return False
        return True

    def _remote_files_complete(self, kind: str, key: str, manifest: bytes) -> bool:
        self.fs.invalidate_cache(self._remote(kind, key))  # listings cached by another step
        try:
            for name, (_, size) in manifest_files(kind, key, manifest).items():
                if self.fs.info(self._remote(kind, key, name))["size"] != size:
                    return False
        except (FileNotFoundError, ArtifactError):
            return False
        return True

    # --- reading -------------------------------------------------------------------------

    def path(self, kind: str, key: str) -> Path:
        return self.cache.path(kind, key)

    def verify(self, kind: str, key: str, digest: str | None = None) -> Artifact:
        """The artifact from the local cache, downloaded first when missing or damaged there;
        every file checked against the manifest (and the manifest against `digest`)."""
        try:
            return self.cache.verify(kind, key, digest)
        except ArtifactError:
            pass
        manifest = self._remote_manifest(kind, key)
        if manifest is None:
            raise ArtifactError(f"{kind}/{key}: artifact missing or incomplete ({self.url})")
        actual = hashlib.sha256(manifest).hexdigest()
        if digest is not None and actual != digest:
            raise ArtifactError(
                f"{kind}/{key}: manifest hash {actual[:12]}… does not match the recorded "
                f"{digest[:12]}…; refusing to use it ({self.url})"
            )
        self._download(kind, key, manifest)
        return self.cache.verify(kind, key, digest)

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
                try:
                    self.fs.get_file(self._remote(kind, key, name), str(file))
                except FileNotFoundError:
                    raise ArtifactError(
                        f"{kind}/{key}: file {name} is missing ({self.url})"
                    ) from None
                if file.stat().st_size != size or file_sha256(file) != sha256:
                    raise ArtifactError(
                        f"{kind}/{key}: file {name} fails its SHA-256 check (truncated or "
                        f"altered in {self.url})"
                    )
            (staging / MANIFEST).write_bytes(manifest)
            if final.exists():
                self.cache._discard(final)  # a damaged local copy
            with contextlib.suppress(OSError):  # another reader published the same copy
                staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def present(self, kind: str, key: str, digest: str | None = None) -> bool:
        """True when the local copy is intact, or the object store has the manifest (matching
        `digest`) and every file it lists at its size. Files are hashed when a step loads them,
        not here: planning asks on every sensor tick."""
        if self.cache.present(kind, key, digest):
            return True
        manifest = self._remote_manifest(kind, key)
        if manifest is None:
            return False
        if digest is not None and hashlib.sha256(manifest).hexdigest() != digest:
            return False
        return self._remote_files_complete(kind, key, manifest)

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
            body = json.loads(self.fs.cat_file(self._remote_entry(kind, key)))
            created, hit = float(body["created_at"]), float(body["last_hit_at"])
        except (OSError, ValueError, KeyError, TypeError):
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
            self.fs.invalidate_cache(f"{self.base}/{kind}")
            try:
                listed = self.fs.ls(f"{self.base}/{kind}", detail=True)
            except FileNotFoundError:
                continue
            for info in sorted(listed, key=lambda i: str(i["name"])):
                name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
                if info["type"] == "directory" and not name.startswith("."):
                    with contextlib.suppress(ValueError):  # not a key this store writes
                        entry = self.entry(kind, name)
                        if entry is not None:
                            yield entry

    def _discard(self, path: Path) -> None:
        kind, key = path.parent.name, path.name
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._remote(kind, key, MANIFEST))  # unpublished first
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._remote(kind, key), recursive=True)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._remote_entry(kind, key))
        if path.exists():
            self.cache._discard(path)


def open_store(location: StoreLocation, clock: Callable[[], float] = time.time) -> ArtifactStore:
    """The store `location` names: a folder, or an object store through a local cache."""
    if location.remote is None:
        return ArtifactStore(location.local, clock)
    return MirroredStore(location.local, location.remote, clock)
