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

    def region_urls(self) -> dict[str, tuple[str, str]]:
        """Region → (database URL, Redis URL); the default region falls back to the core URLs."""
        regions = {self.feature_store_default_region: (self.resolved_database_url, self.redis_url)}
        for region, db_url in self.feature_store_region_databases.items():
            regions[region] = (db_url, self.feature_store_region_redis.get(region, self.redis_url))
        return regions
