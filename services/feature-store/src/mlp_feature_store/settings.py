"""Settings of the feature store (env ``MLP_FEATURE_STORE_*``) on top of the shared ``CoreSettings``."""

from __future__ import annotations

from pydantic import Field

from mlp_core.settings import CoreSettings


class FeatureStoreSettings(CoreSettings):
    """Residency regions map to their own offline database and online Redis; 'default' uses the core URLs."""

    service_name: str = "feature-store"
    feature_store_region_databases: dict[str, str] = Field(
        default_factory=dict, description="region → SQLAlchemy URL of its offline store (JSON in env)")
    feature_store_region_redis: dict[str, str] = Field(
        default_factory=dict, description="region → Redis URL of its online store (JSON in env)")
    feature_store_default_region: str = "default"
    feature_store_materialize_settle_s: float = Field(
        default=5.0, ge=0, description="rows ingested this recently wait for the next incremental run")
    feature_store_registry_cache_s: float = Field(
        default=2.0, ge=0, description="how long online reads reuse a resolved feature list (other replicas' "
                                       "applies become visible within this time)")
    feature_store_push_topic: str = Field(
        default="mlp.feature-store.features-pushed", description="Kafka topic of push-ingestion events")
    feature_store_online_port: int = Field(
        default=0, ge=0, le=65535, description="serve POST .../online-features and gRPC GetOnlineFeatures (h2c) "
        "also on this port, without the ASGI stack and grpc.aio (same checks and answers; 0: only on the main ports)")
    feature_store_online_workers: int = Field(
        default=1, ge=1, le=64, description="processes serving the online port (SO_REUSEPORT): the service "
        "and this many minus one workers; one per core for the most reads per second")
    feature_store_consumers: bool = Field(
        default=True, description="run the Kafka consumers (push ingestion, lineage) when Kafka is configured")

    def region_urls(self) -> dict[str, tuple[str, str]]:
        """Region → (database URL, Redis URL); the default region falls back to the core URLs."""
        regions = {self.feature_store_default_region: (self.resolved_database_url, self.redis_url)}
        for region, db_url in self.feature_store_region_databases.items():
            regions[region] = (db_url, self.feature_store_region_redis.get(region, self.redis_url))
        return regions
