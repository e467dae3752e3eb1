"""Residency: each region has its own offline and online store; data stays in its view's region."""

from __future__ import annotations

from dataclasses import dataclass

from mlp_core.errors import FailedPrecondition
from mlp_feature_store.store.base import OfflineStore, OnlineStore


@dataclass(frozen=True)
class RegionStores:
    """The stores of one residency region."""

    offline: OfflineStore
    online: OnlineStore


class Regions:
    """Region name → stores; a region with no configured store is refused."""

    def __init__(self, stores: dict[str, RegionStores]) -> None:
        self._stores = dict(stores)

    @property
    def names(self) -> list[str]:
        """Configured region names."""
        return sorted(self._stores)

    def get(self, region: str) -> RegionStores:
        """The stores of ``region``; ``FailedPrecondition`` if it has none configured."""
        try:
            return self._stores[region]
        except KeyError:
            raise FailedPrecondition(
                f"residency region '{region}' has no configured store (configured: {self.names}); "
                "configure MLP_FEATURE_STORE_REGIONS or choose another region") from None
