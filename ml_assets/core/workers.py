"""Steps on Celery workers: the broker and result backend, from the environment. Dagster-free.

`ML_ASSETS_CELERY_BROKER` (`amqp://…` or `redis://…`) turns it on; unset, every step runs in its
run's own process (the default). `ML_ASSETS_CELERY_BACKEND` names where results go; by default
the broker itself for Redis, and RabbitMQ's reply queues (`rpc://`) for AMQP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ml_assets.core.names import SERVING_QUEUE

BROKER_ENV: Final = "ML_ASSETS_CELERY_BROKER"
BACKEND_ENV: Final = "ML_ASSETS_CELERY_BACKEND"
# Prefixes the queues' names, so deployments sharing a broker (staging and production, or two
# teams) never execute each other's steps.
NAMESPACE_ENV: Final = "ML_ASSETS_CELERY_NAMESPACE"
DEFAULT_NAMESPACE: Final = "ml_assets"
BROKER_SCHEMES: Final = ("amqp", "pyamqp", "redis", "rediss")


_SETTINGS: Final[Mapping[str, Any]] = {
    # One step per worker process at a time, taken only when that process is free.
    "worker_prefetch_multiplier": 1,
    # Acknowledged when the step ends: a worker host that dies mid-step leaves its step to the
    # broker, which hands it to another worker. A worker *process* killed mid-step (SIGKILL,
    # out of memory) fails the step instead ("WorkerLostError"), and with it the run.
    "task_acks_late": True,
    "task_reject_on_worker_lost": False,
    "broker_connection_retry_on_startup": True,
}
_TRANSPORT_OPTIONS: Final[Mapping[str, Any]] = {
    # dagster-celery's own defaults (this key replaces its whole dict)…
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    # …and, for Redis, how long an unacknowledged step waits before another worker is given it:
    # with late acknowledgement, a fit longer than Redis's default hour would run twice.
    "visibility_timeout": 24 * 3600,
}


def queue_name(queue: str, environ: Mapping[str, str] | None = None) -> str:
    """The broker's name of one of the project's queues (`core/names.py`): `<namespace>.<queue>`."""
    namespace = (os.environ if environ is None else environ).get(NAMESPACE_ENV, "").strip()
    return f"{namespace or DEFAULT_NAMESPACE}.{queue}"


def celery_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Celery settings shared by the executor (which sends) and `ml-assets worker` (which
    consumes): they must agree. A step with no queue tag (the checks) goes to the serving
    queue, not to Celery's default, which no `ml-assets worker` listens on."""
    return {
        **_SETTINGS,
        "task_default_queue": queue_name(SERVING_QUEUE, environ),
        "broker_transport_options": dict(_TRANSPORT_OPTIONS),
    }


def broker_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The broker from `ML_ASSETS_CELERY_BROKER`, or None: steps run in their run's process."""
    value = (os.environ if environ is None else environ).get(BROKER_ENV, "").strip()
    return value or None


def backend_url(broker: str, environ: Mapping[str, str] | None = None) -> str:
    """Where step results go: `ML_ASSETS_CELERY_BACKEND`, else the Redis broker itself, else
    RabbitMQ's reply queues."""
    value = (os.environ if environ is None else environ).get(BACKEND_ENV, "").strip()
    if value:
        return value
    return broker if urlsplit(broker).scheme in ("redis", "rediss") else "rpc://"
