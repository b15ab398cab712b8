"""Where a run's steps execute: in the run's own process (the default), or on Celery workers
(`dagster-celery`) when `ML_ASSETS_CELERY_BROKER` names a broker.

Steps go to the queue their op tag names (`core/names.py`: training, serving), so each queue's
workers scale on their own; `ml-assets worker` (cli/worker.py) consumes them. The run's own
process orchestrates: it claims pool slots, sends each step and waits for its result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from dagster import (
    ExecutorDefinition,
    executor,
    in_process_executor,
    multiple_process_executor_requirements,
)
from dagster._core.execution.retries import RetryMode

from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_tag
from ml_assets.core.workers import backend_url, broker_url, celery_settings, queue_name


def _celery_config(broker: str) -> dict[str, Any]:
    """The executor's config: the one source of what both sides build their Celery app from."""
    return {"broker": broker, "backend": backend_url(broker), "config_source": celery_settings()}


def celery_app_args(broker: str) -> dict[str, Any]:
    """The Celery app both sides build: the executor sends with it, a worker consumes with it."""
    from dagster_celery.executor import CeleryExecutor

    # Step retries are the jobs' retry policies, not the executor's.
    return CeleryExecutor(retries=RetryMode.DISABLED, **_celery_config(broker)).app_args()


def _orchestrating_celery_executor() -> ExecutorDefinition:
    from dagster_celery.core_execution_loop import core_celery_execution_loop
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

    # dagster-celery registers its task again for every step it sends; Celery keeps the first
    # (the same function) and warns each time.
    warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")

    class OrchestratingCeleryExecutor(CeleryExecutor):
        """dagster-celery's executor, plus what the project needs of the run's own process.

        It records itself as the run's process (`ml_assets/state/runs.py`: a run whose process
        died is failed), since the steps, and with them the store resource that records it
        for in-process runs, execute elsewhere. When the run ends it gives back the run's pool
        slots: a step whose worker process was killed never reports its end, so Dagster would
        keep its slot (run monitoring frees it too, but only under the daemon)."""

        def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
            run, instance = plan_context.dagster_run, plan_context.instance
            instance.add_run_tags(run.run_id, {PROCESS_TAG: process_tag()})
            try:
                yield from core_celery_execution_loop(
                    plan_context, execution_plan, step_execution_fn=_submit_to_namespace
                )
            finally:
                storage = instance.event_log_storage
                if storage.supports_global_concurrency_limits:
                    storage.free_concurrency_slots_for_run(run.run_id)

    def _submit_to_namespace(
        app: Any, context: Any, step: Any, queue: str, priority: int, known_state: Any
    ) -> Any:
        """dagster-celery's submission, to the deployment's own queue: a step's tag names the
        queue (`training`); the broker's queue is `<namespace>.training` (core/workers.py)."""
        if not queue.startswith(queue_name("")):  # the default queue is named already
            queue = queue_name(queue)
        return _submit_task(app, context, step, queue, priority, known_state)

    @executor(
        name="celery",
        config_schema=CELERY_CONFIG,
        requirements=multiple_process_executor_requirements(),
    )
    def celery(init_context: Any) -> OrchestratingCeleryExecutor:
        config = init_context.executor_config
        return OrchestratingCeleryExecutor(
            retries=RetryMode.from_config(config["retries"]),
            broker=config.get("broker"),
            backend=config.get("backend"),
            include=config.get("include"),
            config_source=config.get("config_source"),
        )

    return celery


def build_executor() -> ExecutorDefinition:
    """In-process unless `ML_ASSETS_CELERY_BROKER` is set (read when the definitions load, so
    the daemon, `dagster dev`, runs and workers must share the environment)."""
    broker = broker_url()
    if broker is None:
        return in_process_executor
    return _orchestrating_celery_executor().configured(_celery_config(broker))


def in_celery_worker() -> bool:
    """True inside a step that a Celery worker executes (its run's process is elsewhere)."""
    import sys

    if "celery" not in sys.modules:
        return False
    from celery._state import get_current_task  # `celery.current_task` is a proxy: never None

    task = get_current_task()
    return task is not None and bool(task.request.id)
