"""The feature store's transport-agnostic entry point: REST, gRPC and event handlers all call this."""

from __future__ import annotations

from dataclasses import dataclass

from mlp_feature_store.domain.compliance import ComplianceService
from mlp_feature_store.domain.ingestion import IngestionService
from mlp_feature_store.domain.materialize import MaterializationService
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService
from mlp_feature_store.domain.retrieval import RetrievalService
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.store.base import RegistryStore, RunStore


@dataclass
class FeatureStoreService:
    """The parts of the feature store, built together from stores (see ``build``)."""

    registry: RegistryService
    retrieval: RetrievalService
    ingestion: IngestionService
    materialization: MaterializationService
    compliance: ComplianceService

    @classmethod
    def build(cls, registry_store: RegistryStore, runs: RunStore, regions: Regions,
              transforms: TransformRegistry | None = None, settle_s: float = 5.0,
              cache_s: float = 2.0) -> FeatureStoreService:
        """Wire the services over the given stores (the stores carry the event sink)."""
        transforms = transforms or TransformRegistry()
        registry = RegistryService(registry_store, regions, transforms)
        return cls(
            registry=registry,
            retrieval=RetrievalService(registry, regions, transforms, cache_s),
            ingestion=IngestionService(registry, regions),
            materialization=MaterializationService(registry, regions, runs, settle_s),
            compliance=ComplianceService(registry, regions, runs),
        )
