"""The real servers some tests need (Postgres here; brokers in test_celery.py), as fixtures.

In CI (`CI=true`) a server that is not there fails the test that needs it; elsewhere the test is
skipped with the reason, so `make test` passes on a machine without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from ml_assets.errors import redacted

POSTGRES_SERVER = os.environ.get(
    "ML_ASSETS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


def _admin(statement: str) -> None:
    connection = psycopg2.connect(POSTGRES_SERVER, connect_timeout=5)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the server, dropped after the test."""
    name = f"ml_assets_test_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f"CREATE DATABASE {name}")
    except psycopg2.Error as error:
        unavailable(f"Postgres at {redacted(POSTGRES_SERVER)} is not reachable: {error}".strip())
    try:
        yield urlunsplit(urlsplit(POSTGRES_SERVER)._replace(path=f"/{name}"))
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
