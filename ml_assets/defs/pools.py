"""Concurrency pools (named in `core/names.py`): the training pool's limit.

Every step of an asset in a pool claims a slot on the instance before it runs, however its run
was launched (sensor, UI, `dagster asset materialize`, schedule, in-process `execute_job`), and
the run queue holds a queued run while its pool is full (dagster.yaml: `concurrency: pools:`,
`granularity: op`). Pools without an explicit limit get `pools: default_limit` (1).

Fills a Dagster gap: dagster.yaml sets only the default limit; a named pool's limit is set
through the instance (the UI, `dagster instance concurrency set`, or this call), see
dagster-io/dagster#19793. Setting it from `training.max_concurrent` keeps one place to edit.
"""

from dagster import DagsterInstance

from ml_assets.core.names import TRAINING_POOL


def apply_pool_limits(instance: DagsterInstance, training_slots: int) -> None:
    """Give the training pool `training_slots` slots (`training.max_concurrent`); the other
    pools keep the instance's default limit. A no-op when the limit is already set, or when the
    instance's storage keeps no concurrency slots."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    info = storage.get_concurrency_info(TRAINING_POOL)
    if (
        info.limit == training_slots
        and info.slot_count == training_slots
        and not info.using_default_limit
    ):
        return  # every process start calls this: spare SQLite a write transaction
    storage.set_concurrency_slots(TRAINING_POOL, training_slots)
