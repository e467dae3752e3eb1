"""REST API of the experiments service."""

from __future__ import annotations

from fastapi import APIRouter

from mlp_core.auth import CurrentPrincipal
from mlp_core.settings import CoreSettings


def build_router(settings: CoreSettings) -> APIRouter:
    """Routes under ``/api/v1/experiments``; every one needs a valid token (enforced by the host)."""
    router = APIRouter(prefix="/api/v1/experiments", tags=["experiments"])

    @router.get("/whoami", summary="The caller as this service sees it")
    async def whoami(principal: CurrentPrincipal) -> dict[str, object]:
        return principal.describe() | {"service": settings.service_name}

    return router
