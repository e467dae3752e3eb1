"""Fixtures of the feature store tests: real SQLite/PostgreSQL and Redis from mlp_core.testing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from mlp_core.db import Database

from mlp_feature_store.store.migrate import migrate_database

pytest_plugins = ["mlp_core.testing.fixtures"]


@dataclass(frozen=True)
class Caller:
    """A stand-in for mlp_core.auth.Principal in domain tests (same two methods)."""

    subject: str = "alice"
    scopes: frozenset[str] = frozenset({"features:read", "features:write"})
    projects: frozenset[str] = frozenset({"p1"})
    claims: dict[str, str] = field(default_factory=dict)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def can_access(self, project: str) -> bool:
        return "admin" in self.scopes or project in self.projects


@pytest.fixture
def db(any_db_url: str) -> Iterator[Database]:
    """A migrated database, once SQLite and once PostgreSQL."""
    migrate_database(any_db_url)
    database = Database(any_db_url)
    yield database
    database.dispose()
