"""Fixtures of the feature store tests: real SQLite/PostgreSQL and Redis from mlp_core.testing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from mlp_core.db import Database
from mlp_feature_store.store.migrate import migrate_database


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


@pytest.fixture
def fs(db: Database, redis_url: str):  # type: ignore[no-untyped-def]
    """A FeatureStoreService on a real database and Redis, with one region 'default' and a recorder."""
    from mlp_feature_store.domain.events import RecordingSink
    from mlp_feature_store.domain.regions import Regions, RegionStores
    from mlp_feature_store.domain.service import FeatureStoreService
    from mlp_feature_store.domain.transforms import TransformRegistry
    from mlp_feature_store.store.offline_sql import SqlOfflineStore
    from mlp_feature_store.store.online_redis import RedisOnlineStore
    from mlp_feature_store.store.registry_sql import SqlRegistryStore
    from mlp_feature_store.store.runs_sql import SqlRunStore

    transforms = TransformRegistry()
    transforms.register("ratio", lambda cols: {"ratio": [
        None if a is None or not b else a / b for a, b in zip(cols["stats:clicks"], cols["stats:views"])]})
    online = RedisOnlineStore.from_url(redis_url)
    events = RecordingSink()
    regions = Regions({"default": RegionStores(SqlOfflineStore(db, events), online)})
    service = FeatureStoreService.build(SqlRegistryStore(db, events), SqlRunStore(db, events), regions, transforms,
                                        settle_s=0, cache_s=0)
    service.events = events  # type: ignore[attr-defined]
    yield service
    online.client.close()


USER = {"name": "user", "join_keys": [{"name": "user_id", "dtype": "string"}]}
STATS = {
    "name": "stats", "entities": ["user"], "ttl_seconds": 3600, "owner": "team-a", "tags": {"domain": "ads"},
    "features": [{"name": "clicks", "dtype": "int64"}, {"name": "views", "dtype": "int64"},
                 {"name": "email", "dtype": "string", "pii": True}],
    "expectations": [{"kind": "range", "feature": "clicks", "min": 0}],
}


@pytest.fixture
def applied(fs):  # type: ignore[no-untyped-def]
    """The user entity and the stats view applied in project p1."""
    fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
    return fs
