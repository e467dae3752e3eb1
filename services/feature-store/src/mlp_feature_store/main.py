"""Composition root: builds stores, the domain service and the host (REST, gRPC, outbox relay)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from mlp_core.db import Database
from mlp_core.host import ServiceHost, ServiceParts
from mlp_feature_store.api.rest import build_router
from mlp_feature_store.domain.regions import Regions, RegionStores
from mlp_feature_store.domain.service import FeatureStoreService
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.events.publisher import OutboxPublisher
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_feature_store.store.migrate import migrate_database
from mlp_feature_store.store.offline_sql import SqlOfflineStore
from mlp_feature_store.store.online_redis import RedisOnlineStore
from mlp_feature_store.store.registry_sql import SqlRegistryStore
from mlp_feature_store.store.runs_sql import SqlRunStore

API_PREFIX = "/api/v1/feature-store"


def build_service(settings: FeatureStoreSettings, transforms: TransformRegistry | None = None
                  ) -> tuple[FeatureStoreService, Database]:
    """Migrate every database, then wire stores and services; returns the service and the main database."""
    main_db = Database(settings.resolved_database_url)
    databases = {settings.resolved_database_url: main_db}
    regions: dict[str, RegionStores] = {}
    for region, (db_url, redis_url) in settings.region_urls().items():
        if db_url not in databases:
            databases[db_url] = Database(db_url)
        regions[region] = RegionStores(SqlOfflineStore(databases[db_url]), RedisOnlineStore.from_url(redis_url))
    for url in databases:
        migrate_database(url)
    service = FeatureStoreService.build(
        SqlRegistryStore(main_db), SqlRunStore(main_db), Regions(regions), OutboxPublisher(main_db),
        transforms, settle_s=settings.feature_store_materialize_settle_s)
    return service, main_db


def build_host(settings: FeatureStoreSettings) -> ServiceHost:
    """The ``ServiceHost`` with the feature store's router and readiness probe."""
    service, db = build_service(settings)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(build_router(service))
    parts = ServiceParts(title="MLP feature store", routers=[api], probes={"database": db.ping},
                         on_shutdown=[db.dispose])
    return ServiceHost(settings, parts)


def main() -> None:
    """Console-script entry point (``mlp-feature-store``)."""
    settings = FeatureStoreSettings()
    asyncio.run(build_host(settings).serve())


if __name__ == "__main__":
    main()
