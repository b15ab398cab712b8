"""Unit tests of the ingestion memoization rules (`ml_assets.core.reingest`), without Dagster."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml_assets.core.config import CandidateConfig, DatasetConfig, MemoizationConfig, SplitConfig
from ml_assets.core.keys import dataset_config_hash, memo_key
from ml_assets.core.reingest import (
    SECONDS_PER_DAY,
    Decision,
    IngestionState,
    SourceFingerprint,
    decide_ingestion,
    fingerprint_source,
)

NOW = 1_750_000_000.0
CODE = "1"
CONFIG = "cfg-hash"
MEMO = MemoizationConfig(freshness_days=14, min_row_change=0.10, content_change="any")
SIGNIFICANT = MEMO.model_copy(update={"content_change": "significant"})


def _previous(**changes: Any) -> IngestionState:
    state = IngestionState(
        ingested_at=NOW - 1 * SECONDS_PER_DAY,
        code_version=CODE,
        config_hash=CONFIG,
        records=1000,
        content_hash="content-a",
        cheap_key="cheap-a",
    )
    return dataclasses.replace(state, **changes)


def _current(records: int = 1000, content_hash: str = "content-a") -> SourceFingerprint:
    return SourceFingerprint("data.csv", [], records, content_hash, True)


def _decide(
    previous: IngestionState | None,
    current: SourceFingerprint,
    *,
    now: float = NOW,
    memo: MemoizationConfig = MEMO,
    code_version: str = CODE,
    config_hash: str = CONFIG,
) -> Decision:
    return decide_ingestion(
        previous, current, now=now, memo=memo, code_version=code_version, config_hash=config_hash
    )


# --- decide_ingestion -------------------------------------------------------------------------


def test_unchanged_fresh_source_is_skipped() -> None:
    decision = _decide(_previous(), _current())
    assert not decision.run
    assert "source unchanged" in decision.reason
    assert "1.0 of 14" in decision.reason


def test_never_ingested_runs() -> None:
    decision = _decide(None, _current())
    assert decision.run
    assert decision.reason == "never ingested"


def test_code_version_bump_runs_and_names_both_versions() -> None:
    decision = _decide(_previous(code_version="1"), _current(), code_version="2")
    assert decision.run
    assert "1" in decision.reason and "2" in decision.reason
    assert "code version" in decision.reason


def test_dataset_config_change_runs() -> None:
    decision = _decide(_previous(config_hash="old"), _current(), config_hash="new")
    assert decision.run
    assert "dataset settings changed" in decision.reason


def test_small_record_change_alone_is_skipped() -> None:
    # +5 % is below min_row_change; with content_change "significant" nothing else triggers.
    decision = _decide(_previous(), _current(1050, "content-b"), memo=SIGNIFICANT)
    assert not decision.run
    assert "insignificant content change" in decision.reason


@pytest.mark.parametrize(("records", "shown"), [(1200, "+20.0%"), (800, "-20.0%")])
def test_large_record_change_runs_and_names_the_numbers(records: int, shown: str) -> None:
    decision = _decide(_previous(), _current(records, "content-b"), memo=SIGNIFICANT)
    assert decision.run
    assert f"1000 → {records}" in decision.reason
    assert shown in decision.reason
    assert "10%" in decision.reason


def test_record_change_at_exactly_the_threshold_runs() -> None:
    decision = _decide(_previous(), _current(1100, "content-b"), memo=SIGNIFICANT)
    assert decision.run
    assert "1000 → 1100" in decision.reason


def test_content_change_with_same_count_runs_when_any_change_counts() -> None:
    decision = _decide(_previous(), _current(1000, "content-b"), memo=MEMO)
    assert decision.run
    assert decision.reason == "source content changed"


def test_content_change_with_same_count_is_skipped_when_only_significant_counts() -> None:
    decision = _decide(_previous(), _current(1000, "content-b"), memo=SIGNIFICANT)
    assert not decision.run
    assert "insignificant content change" in decision.reason


def test_expired_freshness_window_runs_and_names_the_age() -> None:
    previous = _previous(ingested_at=NOW - 15 * SECONDS_PER_DAY)
    decision = _decide(previous, _current())
    assert decision.run
    assert "freshness window expired" in decision.reason
    assert "15.0" in decision.reason and "14" in decision.reason


def test_fresh_ingestion_within_the_window_is_skipped() -> None:
    decision = _decide(_previous(ingested_at=NOW - 1 * SECONDS_PER_DAY), _current())
    assert not decision.run
    assert "fresh (1.0 of 14" in decision.reason


def test_freshness_uses_the_injected_clock() -> None:
    previous = _previous(ingested_at=NOW)
    assert not _decide(previous, _current(), now=NOW + 13.9 * SECONDS_PER_DAY).run
    assert _decide(previous, _current(), now=NOW + 14 * SECONDS_PER_DAY).run


def test_clock_gone_backwards_does_not_crash_and_skips() -> None:
    previous = _previous(ingested_at=NOW + 3 * SECONDS_PER_DAY)
    decision = _decide(previous, _current(), now=NOW)
    assert not decision.run
    assert "fresh (0.0 of 14" in decision.reason  # no negative age shown


def test_previous_ingestion_without_records_runs() -> None:
    decision = _decide(_previous(records=0), _current(0))
    assert decision.run
    assert "no records" in decision.reason


# --- fingerprint_source -----------------------------------------------------------------------


def _write_csv(path: Path, rows: int, *, offset: int = 0, trailing_newline: bool = True) -> Path:
    lines = ["a,b,label"] + [f"{i},{i * 2},{i % 3}" for i in range(offset, offset + rows)]
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    return path


def _bump_mtime(path: Path, seconds: int = 10) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_csv_records_are_lines_minus_header(tmp_path: Path, trailing_newline: bool) -> None:
    _write_csv(tmp_path / "data.csv", 7, trailing_newline=trailing_newline)
    fingerprint = fingerprint_source("data.csv", tmp_path)
    assert fingerprint.records == 7
    assert fingerprint.hashed
    assert len(fingerprint.files) == 1
    assert fingerprint.files[0][1] == (tmp_path / "data.csv").stat().st_size


def test_header_only_csv_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("a,b,label\n")
    assert fingerprint_source("empty.csv", tmp_path).records == 0


def test_parquet_records_come_from_metadata(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": range(11), "label": [i % 2 for i in range(11)]})
    frame.to_parquet(tmp_path / "data.parquet")
    fingerprint = fingerprint_source("data.parquet", tmp_path)
    assert fingerprint.records == 11
    assert fingerprint.content_hash


def test_glob_sums_records_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    _write_csv(tmp_path / "parts" / "a.csv", 3)
    _write_csv(tmp_path / "parts" / "b.csv", 4, offset=3)
    fingerprint = fingerprint_source("parts/*.csv", tmp_path)
    assert fingerprint.records == 7
    assert [Path(f[0]).name for f in fingerprint.files] == ["a.csv", "b.csv"]


def test_embedded_digits_has_1797_records(tmp_path: Path) -> None:
    first = fingerprint_source("sklearn_digits", tmp_path)
    assert first.records == 1797
    assert first.files == []
    assert first.hashed
    assert fingerprint_source("sklearn_digits", tmp_path).content_hash == first.content_hash


def test_unchanged_file_reuses_the_previous_hash(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data.csv", 5)
    first = fingerprint_source("data.csv", tmp_path)
    again = fingerprint_source("data.csv", tmp_path, (first.cheap_key, first.content_hash))
    assert not again.hashed
    assert again.content_hash == first.content_hash
    assert again.version == first.version
    # The hash really is carried over rather than recomputed.
    carried = fingerprint_source("data.csv", tmp_path, (first.cheap_key, "carried-over"))
    assert carried.content_hash == "carried-over"


def test_changed_file_is_rehashed(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", 5)
    first = fingerprint_source("data.csv", tmp_path)
    _write_csv(path, 5, offset=100)  # same record count, different bytes
    _bump_mtime(path)
    second = fingerprint_source("data.csv", tmp_path, (first.cheap_key, first.content_hash))
    assert second.hashed
    assert second.records == first.records
    assert second.cheap_key != first.cheap_key
    assert second.content_hash != first.content_hash
    assert second.version != first.version


def test_touched_file_is_rehashed_to_the_same_content(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", 5)
    first = fingerprint_source("data.csv", tmp_path)
    _bump_mtime(path)
    second = fingerprint_source("data.csv", tmp_path, (first.cheap_key, "stale"))
    assert second.hashed
    assert second.content_hash == first.content_hash


def test_full_hash_forces_hashing(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data.csv", 5)
    first = fingerprint_source("data.csv", tmp_path)
    forced = fingerprint_source(
        "data.csv", tmp_path, (first.cheap_key, "carried-over"), full_hash=True
    )
    assert forced.hashed
    assert forced.content_hash == first.content_hash


def test_fingerprint_metadata_names_records_and_hash(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data.csv", 5)
    fingerprint = fingerprint_source("data.csv", tmp_path)
    assert fingerprint.as_metadata() == {
        "source": "data.csv",
        "source_records": 5,
        "source_content_hash": fingerprint.content_hash,
        "source_cheap_key": fingerprint.cheap_key,
    }


# --- IngestionState ---------------------------------------------------------------------------


def test_ingestion_state_round_trips_through_metadata() -> None:
    state = _previous()
    metadata = state.as_metadata()
    assert set(metadata) == {
        "state_ingested_at",
        "state_code_version",
        "state_config_hash",
        "state_records",
        "state_content_hash",
        "state_cheap_key",
    }
    assert IngestionState.from_metadata({**metadata, "unrelated": 1}) == state


@pytest.mark.parametrize("missing", ["state_ingested_at", "state_records", "state_cheap_key"])
def test_ingestion_state_from_incomplete_metadata_is_none(missing: str) -> None:
    metadata = _previous().as_metadata()
    del metadata[missing]
    assert IngestionState.from_metadata(metadata) is None


def test_ingestion_state_from_malformed_metadata_is_none() -> None:
    metadata = {**_previous().as_metadata(), "state_records": "many"}
    assert IngestionState.from_metadata(metadata) is None
    assert IngestionState.from_metadata({}) is None


# --- dataset_config_hash ----------------------------------------------------------------------


def test_dataset_config_hash_is_stable() -> None:
    assert dataset_config_hash(DatasetConfig(), 0) == dataset_config_hash(DatasetConfig(), 0)


@pytest.mark.parametrize(
    ("dataset", "seed"),
    [
        (DatasetConfig(label="target"), 0),
        (DatasetConfig(label=["a", "b"]), 0),
        (DatasetConfig(split=SplitConfig(validation=0.3)), 0),
        (DatasetConfig(id="record_id"), 0),
        (DatasetConfig(source="data/*.csv"), 0),
        (DatasetConfig(), 1),
    ],
)
def test_dataset_config_hash_changes_with_settings(dataset: DatasetConfig, seed: int) -> None:
    assert dataset_config_hash(dataset, seed) != dataset_config_hash(DatasetConfig(), 0)


def _sha(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def test_stored_keys_and_versions_keep_their_encoding() -> None:
    """Existing homes store these values (metadata, data versions, artifact keys): another
    encoding would re-ingest, re-hash or retrain what did not change."""
    dataset = DatasetConfig()
    dumped = json.dumps([dataset.model_dump(), 7], sort_keys=True, default=str)
    assert dataset_config_hash(dataset, 7) == _sha(dumped, 16)
    source = SourceFingerprint("x.csv", [("x.csv", 10, 5)], 3, "abc", True)
    assert source.cheap_key == _sha('["x.csv", [["x.csv", 10, 5]], 3]', 24)
    assert source.version == _sha("3:abc", 24)
    candidate = CandidateConfig(name="a", model="knn", params={"n_neighbors": 3})
    body = '{"features":null,"model":"knn","params":{"n_neighbors":3}}'
    assert candidate.config_hash() == _sha(body, 16)
    assert memo_key("d", ["a", 1], 0.5) == _sha('["d",["a",1],0.5]', 24)
