"""The registry's one transport-agnostic entry point: REST, gRPC and background tasks all call this."""

from __future__ import annotations

from mlp_registry.domain.catalog import Catalog
from mlp_registry.domain.context import RegistryContext
from mlp_registry.domain.downloads import VersionDownloads
from mlp_registry.domain.housekeeping import Housekeeping
from mlp_registry.domain.lineage import LineageQueries
from mlp_registry.domain.releases import Releases
from mlp_registry.domain.uploads import VersionUploads


class RegistryService:
    """Groups the registry's use cases by area; each takes the caller as its first argument."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx
        self.catalog = Catalog(ctx)
        self.uploads = VersionUploads(ctx)
        self.downloads = VersionDownloads(ctx)
        self.releases = Releases(ctx)
        self.housekeeping = Housekeeping(ctx)
        self.lineage = LineageQueries(ctx)
