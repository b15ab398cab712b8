"""The Dagster instance on Postgres (`dagster-postgres`) when `ML_ASSETS_POSTGRES_URL` is set.

The project's `dagster.yaml` is the one instance file either way. Without the variable it is
linked into `$DAGSTER_HOME` as it is (SQLite under `.ml_assets/`); with it, `$DAGSTER_HOME`
gets that file plus a `storage: postgres:` section that reads the URL from the variable at each
load, so the password never lands in a file. The URL is tried before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from ml_assets.errors import UserError, redacted

POSTGRES_ENV: Final = "ML_ASSETS_POSTGRES_URL"
CONNECT_TIMEOUT_SECONDS: Final = 5
DRIVER_SCHEME: Final = "postgresql+psycopg2"
_PLAIN: Final = ("postgresql", "postgres")

# Runs, event log and schedules: everything Dagster's instance stores (`storage: postgres:`).
STORAGE_SECTION: Final = f"""
# Added by ml-assets because {POSTGRES_ENV} is set: the instance's runs, event log and schedules
# live in Postgres (read from the variable at each load).
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_ENV}
"""


class InstanceStorageError(UserError):
    """The configured instance storage cannot be used; the message names the variable."""


def postgres_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The URL from `ML_ASSETS_POSTGRES_URL`, or None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(POSTGRES_ENV, "").strip()
    return value or None


def dagster_url(url: str) -> str:
    """`url` with the driver dagster-postgres installs (psycopg2) named: SQLAlchemy 2.1 takes a
    bare `postgresql://` for psycopg 3, which is not installed."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=DRIVER_SCHEME)) if parts.scheme in _PLAIN else url


def check_postgres(url: str) -> None:
    """Connect once, or raise `InstanceStorageError` naming the variable and what was tried."""
    where = f"{POSTGRES_ENV}={redacted(url)}"
    if urlsplit(url).scheme not in (*_PLAIN, DRIVER_SCHEME):
        raise InstanceStorageError(
            f"{where}: expected a URL like postgresql://user@host:5432/database"
        )
    import psycopg2  # installed with dagster-postgres

    plain = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))  # libpq's own form
    try:
        connection = psycopg2.connect(plain, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg2.Error as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InstanceStorageError(f"{where}: cannot connect: {reason}") from None
    connection.close()


def instance_yaml(project_config: str) -> str:
    """The instance file for Postgres: the project's settings and the storage section."""
    return project_config.rstrip() + "\n" + STORAGE_SECTION
