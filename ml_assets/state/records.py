"""What the instance recorded of each asset: its latest materialization's metadata, read back.

The instance is the one record of what landed: a step reads its upstream's key and digest here,
then loads (and verifies) that very artifact from the store.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    EventLogRecord,
    Failure,
)

from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    BATCH_AGGREGATED_PREDICTIONS,
    INGESTED_DATASET,
    MODEL_SELECTION,
    SERVING_REQUESTS,
    TRAINED_MODEL,
)
from ml_assets.core.reingest import IngestionState


@dataclass(frozen=True)
class Record:
    """The metadata of one materialization, as plain values, with where it came from."""

    metadata: dict[str, Any]
    run_id: str
    timestamp: float
    data_version: str | None
    storage_id: int = 0  # the materialization's event id: which landing this record is

    def __getitem__(self, name: str) -> Any:
        return self.metadata[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.metadata.get(name, default)


# The artifact each asset's materialization names: (store kind, the metadata field holding its
# key). Each such materialization also records the artifact's `digest`.
_ARTIFACT_FIELDS: Final = {
    INGESTED_DATASET: ("datasets", "dataset_key"),
    TRAINED_MODEL: ("models", "model_key"),
    MODEL_SELECTION: ("selections", "selection_key"),
    AGGREGATED_PREDICTIONS: ("aggregated", "aggregated_key"),
    SERVING_REQUESTS: ("requests", "requests_key"),
    BATCH_AGGREGATED_PREDICTIONS: ("aggregated", "aggregated_key"),
}
_PREDICTIONS_FIELD: Final = ("predictions", "predictions_key")  # every predictions_rank_<i>


def recorded_artifact(key: AssetKey, record: Record) -> tuple[str, str, str] | None:
    """(kind, key, digest) of the artifact `record` names in the store; None when it names
    none (a serving rank that had no model to serve)."""
    if key in _ARTIFACT_FIELDS:
        kind, field = _ARTIFACT_FIELDS[key]
    elif key.path[-1].startswith(("predictions_rank_", "batch_predictions_rank_")):
        kind, field = _PREDICTIONS_FIELD
    else:
        return None
    if field not in record.metadata:
        return None
    return kind, str(record[field]), str(record["digest"])


def latest_record(
    instance: DagsterInstance, key: AssetKey, partition: str | None = None
) -> Record | None:
    """The latest successful materialization of `key` (one partition of it), or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return _record(records[0]) if records else None


def latest_records(
    instance: DagsterInstance, key: AssetKey, partitions: Collection[str]
) -> dict[str, Record]:
    """The latest materialization of each of `partitions` that has one, in two queries however
    many partitions there are (`candidates_sensor` plans every candidate on every tick)."""
    if not partitions:
        return {}
    ids = instance.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, set(partitions)
    )
    if not ids:
        return {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.partition is not None:
            found[materialization.partition] = _record(record)
    return found


def _record(event: EventLogRecord) -> Record:
    entry = event.event_log_entry
    materialization = event.asset_materialization
    assert materialization is not None
    metadata = {name: value.value for name, value in materialization.metadata.items()}
    version = materialization.tags.get("dagster/data_version") if materialization.tags else None
    return Record(metadata, entry.run_id, entry.timestamp, version, event.storage_id)


def require_record(instance: DagsterInstance, key: AssetKey, why: str) -> Record:
    record = latest_record(instance, key)
    if record is None:
        raise Failure(f"{key.to_user_string()} has never been materialized; {why}")
    return record


def last_ingestion(instance: DagsterInstance) -> tuple[Record | None, IngestionState | None]:
    """The latest `ingested_dataset` materialization and the ingestion state it recorded (what
    the re-ingest rules compare the source with); (None, None) before the first ingestion."""
    record = latest_record(instance, INGESTED_DATASET)
    return record, None if record is None else IngestionState.from_metadata(record.metadata)
