"""Fixtures that give each test real components on this machine, isolated from other tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("MLP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("MLP_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _create_pg_database() -> tuple[str, str]:
    name = f"mlp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _drop_pg_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database as a context manager (for fixtures that need several)."""
    name, url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def pg_url_module() -> Iterator[str]:
    """A fresh PostgreSQL database shared by the tests of one module."""
    with pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path}/test.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """Runs the test once on SQLite and once on PostgreSQL (contract tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    with pg_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis logical database for this test, emptied before and after.

    Tests in one process use db 1..15 round-robin by worker id so that parallel workers don't collide.
    """
    import redis

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = 1 + (int(worker.removeprefix("gw") or 0) % 15)
    url = f"{REDIS_BASE_URL}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
