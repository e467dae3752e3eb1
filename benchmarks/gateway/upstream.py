"""The service behind the gateway in the benchmark: a ServiceHost (token checks on) with one cheap route."""

from __future__ import annotations

from fastapi import APIRouter

from mlp_core.host import ServiceHost, ServiceParts
from mlp_core.settings import CoreSettings


def main() -> None:
    """Serve ``GET /api/v1/feature-store/ping`` on ``MLP_HTTP_PORT``."""
    router = APIRouter(prefix="/api/v1/feature-store")

    @router.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "ok"}

    settings = CoreSettings(service_name="feature-store", grpc_port=0)
    host = ServiceHost(settings, ServiceParts(title="bench upstream", routers=[router]))
    host.run()


if __name__ == "__main__":
    main()
