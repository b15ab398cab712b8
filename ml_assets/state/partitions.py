"""Dynamic partitions: one `trained_model` partition per candidate in `ml_assets.yaml`, and one
request-batch partition per file in `serving.requests`."""

from __future__ import annotations

from collections.abc import Iterable

from dagster import DagsterInstance, DynamicPartitionsDefinition

from ml_assets.core.names import BATCH_PARTITIONS, CANDIDATES_PARTITIONS

candidates_partitions = DynamicPartitionsDefinition(name=CANDIDATES_PARTITIONS)
# One partition per request batch file (`serving.requests`), named by the file's name.
batch_partitions = DynamicPartitionsDefinition(name=BATCH_PARTITIONS)


def partition_changes(
    existing: Iterable[str], wanted: Iterable[str], configured: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(to add, to remove): each `wanted` name that has no partition, and each partition whose
    candidate is no longer `configured` (an invalid candidate keeps its partition: its history
    stays visible)."""
    have = set(existing)
    added = [name for name in wanted if name not in have]
    removed = sorted(have - set(configured))
    return added, removed


def sync_candidate_partitions(
    instance: DagsterInstance, names: list[str]
) -> tuple[list[str], list[str]]:
    """Make the partitions equal to `names`; returns (added, removed)."""
    added, removed = partition_changes(
        instance.get_dynamic_partitions(CANDIDATES_PARTITIONS), names, names
    )
    if added:
        instance.add_dynamic_partitions(CANDIDATES_PARTITIONS, added)
    for name in removed:
        instance.delete_dynamic_partition(CANDIDATES_PARTITIONS, name)
    return added, removed
