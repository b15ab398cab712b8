"""What a command that starts work checks before it writes anything: the Celery broker of
`ML_ASSETS_CELERY_BROKER` and the artifact store (the instance's Postgres: `cli/postgres.py`).

A wrong or unreachable one is one line naming the variable and what was tried (`UserError`,
exit 2): every step of every run would otherwise wait on a queue nobody can reach, or fail
when it writes its artifact.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ml_assets.core.config import HOME_ENV, STORE_ENV, StoreLocationError, store_location
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
    """The artifact store takes a file (a folder not there yet: can be created), or
    `StoreLocationError` naming the variable that chose it. Leaves nothing behind."""
    location = store_location()
    chosen = bool(os.environ.get(STORE_ENV, "").strip())
    where = (
        f"{STORE_ENV}={redacted(location.describe())}"
        if chosen
        else f"the artifact store {location.local} (set {STORE_ENV} or {HOME_ENV} to put it "
        "elsewhere)"
    )
    if location.remote is not None:
        _check_object_store(location.remote, where)
        where = f"{where}: its local cache {location.local} (set {HOME_ENV} to move it)"
    _check_folder(location.local, where)


def _check_object_store(url: str, where: str) -> None:
    from ml_assets.storage.remote import open_filesystem

    try:
        fs, base = open_filesystem(url)
    except ImportError as error:  # fsspec says which package: "Install s3fs to access S3"
        raise StoreLocationError(f"{where}: {error}") from None
    except ValueError as error:  # a protocol fsspec does not know
        raise StoreLocationError(f"{where}: {error}") from None
    probe = f"{base}/.probe-{uuid.uuid4().hex}"
    step = "write"
    try:
        fs.pipe_file(probe, b"")
        step = "read"
        fs.cat_file(probe)
        step = "list"
        fs.invalidate_cache(base)
        fs.ls(base, detail=False)
        step = "delete"
        fs.rm_file(probe)
    except Exception as error:  # each object store raises its own client's errors
        reason = " ".join(str(error).split()) or type(error).__name__
        left = f"; remove {probe} by hand" if step != "write" else ""
        raise StoreLocationError(
            f"{where}: cannot {step} there (the store writes, reads, lists and deletes): "
            f"{reason}{left}"
        ) from None


def _check_folder(root: Path, where: str) -> None:
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
