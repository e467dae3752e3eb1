"""Composition root of the gateway: the only public door of the platform."""

from __future__ import annotations

from pathlib import Path

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.host import ServiceParts
from mlp_gateway.proxy import Forwarder, build_proxy_router
from mlp_gateway.settings import GatewaySettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build(settings: GatewaySettings, db: Database) -> ServiceParts:
    """Wire routing; token checks come from the host's auth middleware and interceptor."""
    forwarder = Forwarder(settings.upstreams(), settings.gateway_upstream_timeout_s)
    return ServiceParts(title="MLP platform API", routers=[build_proxy_router(forwarder)],
                        on_shutdown=[forwarder.close])


def main() -> None:
    """Console entry point ``mlp-gateway``."""
    bootstrap.run(GatewaySettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
