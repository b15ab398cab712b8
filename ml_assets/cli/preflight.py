"""What a command that starts work checks before it writes anything: the Celery broker of
`ML_ASSETS_CELERY_BROKER` and the artifact store (the instance's Postgres: `cli/postgres.py`).

A wrong or unreachable one is one line naming the variable and what was tried (`UserError`,
exit 2): every step of every run would otherwise wait on a queue nobody can reach, or fail
when it writes its artifact.
"""

from __future__ import annotations

import os
import uuid
from typing import Final
from urllib.parse import urlsplit

from ml_assets.core.config import HOME_ENV, STORE_ENV, StoreLocationError, store_root
from ml_assets.core.workers import BROKER_ENV, BROKER_SCHEMES, broker_url
from ml_assets.errors import UserError, redacted

CONNECT_TIMEOUT_SECONDS: Final = 5


class BrokerError(UserError):
    """The configured broker cannot be used; the message names the variable."""


def check_broker(url: str) -> None:
    """Connect once, or raise `BrokerError` naming the variable and what was tried."""
    where = f"{BROKER_ENV}={redacted(url)}"
    if urlsplit(url).scheme not in BROKER_SCHEMES:
        raise BrokerError(
            f"{where}: expected a URL like amqp://guest:guest@127.0.0.1:5672// "
            "or redis://127.0.0.1:6379/0"
        )
    from kombu import Connection  # installed with dagster-celery

    try:
        with Connection(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_SECONDS)
    except Exception as error:  # kombu raises the transport's own errors
        reason = " ".join(str(error).split()) or type(error).__name__
        raise BrokerError(f"{where}: cannot connect: {reason}") from None


def check_configured_broker() -> str | None:
    """The broker when `ML_ASSETS_CELERY_BROKER` is set (checked), else None."""
    url = broker_url()
    if url is not None:
        check_broker(url)
    return url


def require_broker() -> str:
    """The checked broker: `ml-assets worker` has nothing to consume without one."""
    url = check_configured_broker()
    if url is None:
        raise BrokerError(
            f"{BROKER_ENV} is not set: name the broker the runs send their steps to, "
            "e.g. amqp://guest:guest@127.0.0.1:5672// or redis://127.0.0.1:6379/0"
        )
    return url


def check_store() -> None:
    """The artifact store's folder takes a file (or, not there yet, can be created), or
    `StoreLocationError` naming the variable that chose it. Writes nothing that stays."""
    root = store_root()
    where = (
        f"{STORE_ENV}={root}"
        if os.environ.get(STORE_ENV, "").strip()
        else f"the artifact store {root} (set {STORE_ENV} or {HOME_ENV} to put it elsewhere)"
    )
    if root.exists() and not root.is_dir():
        raise StoreLocationError(f"{where}: not a folder")
    if not root.exists():
        parent = next(p for p in root.parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise StoreLocationError(f"{where}: cannot be created: {parent} is not writable")
        return
    probe = root / f".probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise StoreLocationError(f"{where}: not writable: {reason}") from None
