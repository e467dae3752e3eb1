"""Composition root: settings → migrated databases, regions, outbox publisher."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from mlp_core.errors import FailedPrecondition
from mlp_feature_store.main import build_service
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_feature_store.store.offline_tables import table_name

from .conftest import STATS, USER, Caller


def test_build_service_wires_regions_and_outbox(tmp_path, redis_url: str) -> None:
    settings = FeatureStoreSettings(
        database_url=f"sqlite:///{tmp_path}/main.db", redis_url=redis_url,
        feature_store_region_databases={"eu": f"sqlite:///{tmp_path}/eu.db"})
    service, db = build_service(settings)
    service.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", {**STATS, "residency_region": "eu"})])
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar() == 2
    # The EU view's table exists only in the EU database.
    eu = inspect(create_engine(f"sqlite:///{tmp_path}/eu.db"))
    assert eu.has_table(table_name("p1", "stats", 1)) and not inspect(db.engine).has_table(table_name("p1", "stats", 1))
    with pytest.raises(FailedPrecondition, match="'us'"):
        service.registry.apply(Caller(), "p1", [("feature_view", {**STATS, "name": "s2", "residency_region": "us"})])
