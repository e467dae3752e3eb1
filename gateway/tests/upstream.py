"""A stand-in platform service built the way every service is (mlp_core ServiceHost), for gateway tests.

REST under /api/v1/feature-store (objects owned by projects, extra=forbid bodies), an Open Inference
Protocol health route under /v2, and a bytes-level gRPC service named like the feature store's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from mlp_core.auth import CurrentPrincipal, current_principal
from mlp_core.errors import NotFound, PermissionDenied
from mlp_core.host import ServiceHost, ServiceParts
from mlp_core.settings import CoreSettings

GRPC_SERVICE = "mlp.featurestore.v1.FeatureStoreService"


class ThingCreate(BaseModel):
    """A request body that refuses unknown fields (mass assignment)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    project: str


class Thing(BaseModel):
    """A stored object of one project."""

    id: str
    name: str
    project: str
    owner: str


class Upstream:
    """State the tests look at: stored things, headers seen, cancelled gRPC calls."""

    def __init__(self) -> None:
        self.things: dict[str, Thing] = {}
        self.ids = itertools.count(1)
        self.seen_headers: list[dict[str, str]] = []
        self.cancelled: list[str] = []
        self.grpc_metadata: list[dict[str, str]] = []

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/api/v1/feature-store", tags=["things"])

        @router.post("/things", status_code=201, response_model=Thing)
        async def create(body: ThingCreate, principal: CurrentPrincipal) -> Thing:
            if not principal.can_access(body.project):
                raise PermissionDenied(f"no access to project '{body.project}'")
            thing = Thing(id=str(next(self.ids)), name=body.name, project=body.project, owner=principal.subject)
            self.things[thing.id] = thing
            return thing

        @router.get("/things/{thing_id}", response_model=Thing)
        async def get(thing_id: str, principal: CurrentPrincipal) -> Thing:
            thing = self.things.get(thing_id)
            if thing is None or not principal.can_access(thing.project):
                raise NotFound(f"no thing {thing_id!r}")
            return thing

        @router.get("/headers", include_in_schema=False)
        async def headers(request: Request) -> dict[str, str]:
            seen = dict(request.headers)
            self.seen_headers.append(seen)
            return seen

        @router.get("/slow", include_in_schema=False)
        async def slow() -> dict[str, str]:
            await asyncio.sleep(5)
            return {"status": "late"}

        @router.get("/big", include_in_schema=False)
        async def big(size: int = 300_000, chunked: bool = False) -> Response:
            body = bytes(i % 251 for i in range(size))
            if chunked:  # no Content-Length: the gateway must stream it

                async def parts() -> AsyncIterator[bytes]:
                    for at in range(0, size, 50_000):
                        yield body[at:at + 50_000]

                return StreamingResponse(parts(), media_type="application/octet-stream")
            return Response(body, media_type="application/octet-stream", headers={"x-size": str(size)})

        @router.get("/boom", include_in_schema=False)
        async def boom() -> dict[str, str]:
            raise RuntimeError("secret internal detail")

        return router

    def v2_router(self) -> APIRouter:
        router = APIRouter(prefix="/v2", tags=["inference"])

        @router.get("/health/live", include_in_schema=False)
        async def live() -> dict[str, bool]:
            return {"live": True}

        @router.get("/health/ready", include_in_schema=False)
        async def ready() -> dict[str, bool]:
            return {"ready": True}

        return router

    # -- gRPC ------------------------------------------------------------------------------

    def registrar(self, server: grpc.aio.Server) -> str:
        handlers = {
            "GetThing": grpc.unary_unary_rpc_method_handler(self._get_thing),
            "ListThings": grpc.unary_stream_rpc_method_handler(self._list_things),
            "PutThings": grpc.stream_unary_rpc_method_handler(self._put_things),
            "WriteSlow": grpc.unary_unary_rpc_method_handler(self._write_slow),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers),))
        return GRPC_SERVICE

    async def _get_thing(self, request: bytes, context: Any) -> bytes:
        self.grpc_metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        principal = current_principal()
        thing = self.things.get(request.decode())
        if thing is None or not principal.can_access(thing.project):
            raise NotFound("no such thing")
        return f"{thing.id}|{thing.project}|{principal.subject}".encode()

    async def _list_things(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"{request.decode()}-{i}".encode()

    async def _put_things(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        count = sum([1 async for _ in requests])
        return f"stored {count}".encode()

    async def _write_slow(self, request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            self.cancelled.append(request.decode())
            raise
        return b"late"


def build_upstream(settings: CoreSettings, verifier: Any, state: Upstream) -> ServiceHost:
    """A ServiceHost like a real service: auth middleware + interceptor from mlp_core."""
    parts = ServiceParts(title="feature-store (test)", routers=[state.router(), state.v2_router()],
                         grpc_registrars=[state.registrar])
    return ServiceHost(settings, parts, verifier=verifier)
