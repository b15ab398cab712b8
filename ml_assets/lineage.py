"""Reading what upstream assets recorded, so each step uses its upstream's recorded artifact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Failure


@dataclass(frozen=True)
class Record:
    """The metadata of one materialization, as plain values, with where it came from."""

    metadata: dict[str, Any]
    run_id: str
    timestamp: float
    data_version: str | None

    def __getitem__(self, name: str) -> Any:
        return self.metadata[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.metadata.get(name, default)


def latest_record(
    instance: DagsterInstance, key: AssetKey, partition: str | None = None
) -> Record | None:
    """The latest successful materialization of `key` (one partition of it), or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    entry = records[0].event_log_entry
    materialization = records[0].asset_materialization
    assert materialization is not None
    metadata = {name: value.value for name, value in materialization.metadata.items()}
    version = materialization.tags.get("dagster/data_version") if materialization.tags else None
    return Record(metadata, entry.run_id, entry.timestamp, version)


def require_record(instance: DagsterInstance, key: AssetKey, why: str) -> Record:
    record = latest_record(instance, key)
    if record is None:
        raise Failure(f"{key.to_user_string()} has never been materialized; {why}")
    return record
