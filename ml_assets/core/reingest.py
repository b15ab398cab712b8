"""Memoization rules for ingestion: source fingerprints and the re-ingest decision (no Dagster).

A fingerprint has a cheap part (each file's size and mtime, record counts from Parquet metadata,
TFRecord framing or a line count for CSV) and a content hash; `dataset.vocabulary`, when set, is
one more file of the source. The full hash is computed only when the cheap part
changed since the previous fingerprint (or when asked), so observing a large unchanged source
costs a few `stat` calls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from ml_assets.core.config import MemoizationConfig, Settings
from ml_assets.core.keys import (
    INGESTION_CODE_VERSION,
    dataset_config_hash,
    file_sha256,
    short_digest,
)
from ml_assets.ml.datasets import (
    EMBEDDED_SOURCES,
    DatasetError,
    load_digits_frame,
    resolve_source_files,
    resolve_vocabulary,
    source_format,
)

SECONDS_PER_DAY: Final = 86_400.0


@dataclass(frozen=True)
class SourceFingerprint:
    source: str
    files: list[tuple[str, int, int]]  # (path, bytes, mtime_ns)
    records: int
    content_hash: str
    hashed: bool  # False when the hash was carried over from an identical cheap fingerprint

    # Both encodings are stored (ingestion metadata, the source's `DataVersion`): kept as they
    # are, an unchanged source keeps its key and version across upgrades.
    @property
    def cheap_key(self) -> str:
        return short_digest(json.dumps([self.source, self.files, self.records]))

    @property
    def version(self) -> str:
        """The observed source's `DataVersion`: record count and content."""
        return short_digest(f"{self.records}:{self.content_hash}")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_records": self.records,
            "source_content_hash": self.content_hash,
            "source_cheap_key": self.cheap_key,
        }


def _count_records(path: Path) -> int:
    kind = source_format(path)
    if kind == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    if kind == "tfrecord":
        from ml_assets.ml.tfrecord import count_records

        return count_records(path)
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)  # minus the header; quoted newlines make this an estimate


def fingerprint_source(
    source: str,
    base_dir: Path,
    previous: tuple[str, str] | None = None,
    *,
    full_hash: bool = False,
    vocabulary: str | None = None,
) -> SourceFingerprint:
    """Fingerprint `dataset.source` (and `dataset.vocabulary`).

    `previous` is the last fingerprint's (cheap_key, content_hash): when the cheap key is the same,
    its hash is reused instead of reading every byte again (unless `full_hash`).
    """
    vocab_path = resolve_vocabulary(vocabulary, base_dir)
    extra = [] if vocab_path is None else [vocab_path]
    if source in EMBEDDED_SOURCES:
        frame = load_digits_frame()
        embedded = hashlib.sha256(frame.to_numpy().tobytes())
        for path in extra:
            embedded.update(file_sha256(path).encode())
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in extra]
        return SourceFingerprint(source, files, len(frame), embedded.hexdigest(), True)
    paths = resolve_source_files(source, base_dir)
    try:
        files = []
        for path in [*paths, *extra]:
            stat = path.stat()
            files.append((str(path), stat.st_size, stat.st_mtime_ns))
        records = sum(_count_records(p) for p in paths)
        cheap = SourceFingerprint(source, files, records, "", False)
        if previous is not None and not full_hash and previous[0] == cheap.cheap_key:
            return SourceFingerprint(source, files, records, previous[1], False)
        digest = hashlib.sha256()
        for path in [*paths, *extra]:
            digest.update(file_sha256(path).encode())
    except OSError as error:  # unreadable, or gone since the glob matched it
        where = error.filename or source
        raise DatasetError(
            f"dataset.source {source!r}: cannot read {where}: {error.strerror or error}"
        ) from None
    except pa.ArrowException as error:  # the record count comes from a Parquet footer
        raise DatasetError(
            f"dataset.source {source!r}: not a readable Parquet file: {error}"
        ) from None
    return SourceFingerprint(source, files, records, digest.hexdigest(), True)


@dataclass(frozen=True)
class IngestionState:
    """What the last real ingestion recorded (read back from its materialization)."""

    ingested_at: float
    code_version: str
    config_hash: str
    records: int
    content_hash: str
    cheap_key: str

    def as_metadata(self) -> dict[str, Any]:
        """Plain values; the asset shows `state_ingested_at` as a timestamp."""
        return {f"state_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> IngestionState | None:
        """Read back from plain values or from the stored metadata values (a timestamp value
        yields its epoch seconds)."""

        def field(name: str) -> Any:
            value = metadata[f"state_{name}"]
            # A Dagster `MetadataValue` (e.g. a timestamp) holds the plain value in `.value`.
            return getattr(value, "value", value)

        try:
            return cls(
                ingested_at=float(field("ingested_at")),
                code_version=str(field("code_version")),
                config_hash=str(field("config_hash")),
                records=int(field("records")),
                content_hash=str(field("content_hash")),
                cheap_key=str(field("cheap_key")),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str


def decide_ingestion(
    previous: IngestionState | None,
    current: SourceFingerprint,
    *,
    now: float,
    memo: MemoizationConfig,
    code_version: str,
    config_hash: str,
) -> Decision:
    """Re-ingest, or reuse the last ingestion? The rules in order (README, "Memoization")."""
    if previous is None:
        return Decision(True, "never ingested")
    if previous.code_version != code_version:
        return Decision(True, f"code version {previous.code_version} → {code_version}")
    if previous.config_hash != config_hash:
        return Decision(True, "dataset settings changed")
    if previous.records == 0:
        return Decision(True, "previous ingestion had no records")
    delta = (current.records - previous.records) / previous.records
    if abs(delta) >= memo.min_row_change:
        return Decision(
            True,
            f"record count {previous.records} → {current.records} "
            f"({delta:+.1%}, |change| ≥ {memo.min_row_change:.0%})",
        )
    content_changed = current.content_hash != previous.content_hash
    if content_changed and memo.content_change == "any":
        return Decision(True, "source content changed")
    age_days = (now - previous.ingested_at) / SECONDS_PER_DAY
    if age_days >= memo.freshness_days:
        return Decision(
            True, f"freshness window expired ({age_days:.1f} ≥ {memo.freshness_days} days)"
        )
    detail = "insignificant content change" if content_changed else "source unchanged"
    return Decision(
        False, f"fresh ({max(age_days, 0.0):.1f} of {memo.freshness_days} days), {detail}"
    )


def observe_source(
    settings: Settings, base_dir: Path, previous: IngestionState | None
) -> SourceFingerprint:
    """Fingerprint `dataset.source`, reusing the last ingestion's content hash while the cheap
    part of the fingerprint is unchanged."""
    return fingerprint_source(
        settings.dataset.source,
        base_dir,
        None if previous is None else (previous.cheap_key, previous.content_hash),
        vocabulary=settings.dataset.vocabulary,
    )


def ingestion_decision(
    settings: Settings, base_dir: Path, previous: IngestionState | None, now: float
) -> tuple[Decision, SourceFingerprint]:
    """Whether ingestion must run now, and the source as observed (shared by the asset, the
    schedule and `ml-assets run`); a source that cannot be read raises `DatasetError`."""
    current = observe_source(settings, base_dir, previous)
    decision = decide_ingestion(
        previous,
        current,
        now=now,
        memo=settings.memoization,
        code_version=INGESTION_CODE_VERSION,
        config_hash=dataset_config_hash(settings.dataset, settings.training.seed),
    )
    return decision, current
