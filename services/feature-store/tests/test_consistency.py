"""Events commit with their state change; erasure reaches quarantine; concurrent applies give 409."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from mlp_core.db import Database
from mlp_core.errors import Conflict
from mlp_core.events import DEFAULT_TABLES
from mlp_feature_store.domain.events import DomainEvent
from mlp_feature_store.domain.ingestion import rows_to_batch
from mlp_feature_store.domain.regions import Regions, RegionStores
from mlp_feature_store.domain.service import FeatureStoreService
from mlp_feature_store.events.publisher import OutboxSink
from mlp_feature_store.store.migrate import migrate_database
from mlp_feature_store.store.offline_sql import SqlOfflineStore
from mlp_feature_store.store.online_redis import RedisOnlineStore
from mlp_feature_store.store.registry_sql import SqlRegistryStore
from mlp_feature_store.store.runs_sql import SqlRunStore
from mlp_feature_store.store.schema import definitions

from .conftest import STATS, USER, Caller

NOW = datetime.now(UTC).isoformat()


class FlakySink(OutboxSink):
    """Writes the outbox row, then fails when told to: the whole transaction must roll back."""

    fail = False

    def add(self, tx: Any, event: DomainEvent) -> None:
        super().add(tx, event)
        if self.fail:
            raise RuntimeError("outbox write failed")


def _service(db: Database, redis_url: str, sink: OutboxSink) -> FeatureStoreService:
    regions = Regions({"default": RegionStores(SqlOfflineStore(db, sink), RedisOnlineStore.from_url(redis_url))})
    return FeatureStoreService.build(SqlRegistryStore(db, sink), SqlRunStore(db, sink), regions, settle_s=0,
                                     cache_s=0)


def _count(db: Database, table: Any) -> int:
    with db.session() as s:
        return int(s.execute(select(func.count()).select_from(table)).scalar_one())


def test_events_commit_and_roll_back_with_the_change(db: Database, redis_url: str) -> None:
    sink = FlakySink()
    fs = _service(db, redis_url, sink)
    sink.fail = True
    with pytest.raises(RuntimeError):
        fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
    assert _count(db, definitions) == 0 and _count(db, DEFAULT_TABLES.outbox) == 0
    sink.fail = False
    fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
    assert _count(db, definitions) == 2 and _count(db, DEFAULT_TABLES.outbox) == 2
    rows = [{"user_id": "u1", "clicks": 1, "event_timestamp": NOW}]
    sink.fail = True
    with pytest.raises(RuntimeError):
        fs.ingestion.ingest(Caller(), "p1", "stats", [rows_to_batch(rows)])
    assert _count(db, DEFAULT_TABLES.outbox) == 2
    sink.fail = False
    fs.ingestion.ingest(Caller(), "p1", "stats", [rows_to_batch(rows)])
    assert _count(db, DEFAULT_TABLES.outbox) == 3  # ingestion-completed
    fs.materialization.materialize(Caller(), "p1", "stats")
    fs.compliance.erase(Caller(), "p1", "user", {"user_id": "u1"})
    with db.session() as s:
        types = list(s.execute(select(DEFAULT_TABLES.outbox.c.event_type).order_by(DEFAULT_TABLES.outbox.c.id)).scalars())
    assert types[-2:] == ["mlp.feature-store.materialization-completed", "mlp.feature-store.entity-erased"]


def test_erasure_deletes_quarantined_rows_of_the_entity(applied) -> None:  # type: ignore[no-untyped-def]
    rows = [{"user_id": "u1", "clicks": -1, "event_timestamp": NOW},      # range violation
            {"user_id": "u1", "clicks": "many", "event_timestamp": NOW},  # type violation
            {"user_id": "u2", "clicks": -5, "event_timestamp": NOW},
            {"user_id": "u1", "clicks": 4, "event_timestamp": NOW}]
    result = applied.ingestion.ingest(Caller(), "p1", "stats", [rows_to_batch(rows)])
    assert result.rows_quarantined == 3
    offline = applied.registry.regions.get("default").offline
    record = applied.compliance.erase(Caller(), "p1", "user", {"user_id": "u1"})
    left = offline.quarantined(result.run_id)
    assert [r["row"]["user_id"] for r in left] == ["u2"]
    assert record["offline_rows"] == 1 and '"quarantined_rows": 2' in record["detail"]


def test_concurrent_applies_of_the_same_definition_give_conflict(pg_url: str, redis_url: str) -> None:
    migrate_database(pg_url)
    db = Database(pg_url)
    try:
        fs = _service(db, redis_url, OutboxSink())
        offline = fs.registry.regions.get("default").offline
        barrier = threading.Barrier(2, timeout=10)
        original = offline.ensure_table

        def racing_ensure_table(layout: Any) -> None:
            barrier.wait()  # both applies have planned "create" before either writes
            original(layout)

        offline.ensure_table = racing_ensure_table  # type: ignore[method-assign]
        outcomes: list[str] = []

        def apply() -> None:
            try:
                fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
                outcomes.append("ok")
            except Conflict as exc:
                assert exc.status == 409
                outcomes.append("conflict")
            except Exception as exc:  # anything else would be a 500
                outcomes.append(f"error: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=apply) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["conflict", "ok"], outcomes
        assert _count(db, definitions) == 2
        # and a retry after the conflict is simply "unchanged"
        offline.ensure_table = original  # type: ignore[method-assign]
        assert {c.action for c in fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
                } == {"unchanged"}
    finally:
        db.dispose()
