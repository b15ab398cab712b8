"""Partitions: one dynamic partition of `trained_model` per candidate in `ml_assets.yaml`."""

from __future__ import annotations

from typing import Final

from dagster import DagsterInstance, DynamicPartitionsDefinition

CANDIDATES_PARTITIONS_NAME: Final = "candidates"
candidates_partitions = DynamicPartitionsDefinition(name=CANDIDATES_PARTITIONS_NAME)


def sync_candidate_partitions(
    instance: DagsterInstance, names: list[str]
) -> tuple[list[str], list[str]]:
    """Make the partitions equal to `names`; returns (added, removed)."""
    existing = set(instance.get_dynamic_partitions(CANDIDATES_PARTITIONS_NAME))
    added = [n for n in names if n not in existing]
    removed = sorted(existing - set(names))
    if added:
        instance.add_dynamic_partitions(CANDIDATES_PARTITIONS_NAME, added)
    for name in removed:
        instance.delete_dynamic_partition(CANDIDATES_PARTITIONS_NAME, name)
    return added, removed
