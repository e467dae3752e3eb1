"""Gateway test support: a real upstream service, the real gateway app, real tokens, PG and Redis."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn

from mlp_core.broker import free_port
from mlp_core.host import ServiceHost
from mlp_core.settings import CoreSettings
from mlp_core.testing.tokens import TestIssuer
from mlp_gateway.main import Gateway, build_gateway
from mlp_gateway.settings import GatewaySettings

sys.path.insert(0, str(Path(__file__).parent))  # upstream.py beside this file
from upstream import Upstream, build_upstream

ALL_SCOPES = "features:read features:write predict registry:read"


@asynccontextmanager
async def serve(app: Any, lifespan: str = "on") -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a random loopback port inside the test's event loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan=lifespan)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Service:
    """The stand-in service: its REST base URL, gRPC address and state."""

    url: str
    grpc_address: str
    state: Upstream
    host: ServiceHost


@pytest.fixture
async def service(test_issuer: TestIssuer) -> AsyncIterator[Service]:
    state = Upstream()
    settings = CoreSettings(service_name="feature-store", grpc_port=free_port(), oidc_issuer=test_issuer.issuer)
    host = build_upstream(settings, test_issuer.verifier(), state)
    async with serve(host.app) as url:
        yield Service(url, f"127.0.0.1:{settings.grpc_port}", state, host)


def gateway_settings(tmp_path: Path, pg_url: str, redis_url: str, issuer: str, service: Service | None,
                     **overrides: Any) -> GatewaySettings:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    upstream = service.url if service else dead
    grpc_upstream = service.grpc_address if service else "127.0.0.1:9"
    values: dict[str, Any] = dict(
        database_url=pg_url, redis_url=redis_url, state_dir=tmp_path / "state", kafka_bootstrap_servers="",
        oidc_issuer=issuer, grpc_port=free_port(), gateway_upstream_feature_store=upstream,
        gateway_upstream_serving=upstream, gateway_upstream_registry=dead,
        gateway_grpc_upstream_feature_store=grpc_upstream, gateway_grpc_upstream_registry="127.0.0.1:9",
        gateway_upstream_training=dead, gateway_upstream_experiments=dead, gateway_upstream_monitoring=dead,
        gateway_route_timeouts_s={"/api/v1/feature-store/slow": 0.5},
        gateway_audit_checkpoint_every=10, gateway_openapi_refresh_s=3600,
    )
    values.update(overrides)
    return GatewaySettings(**values)


@dataclass
class RunningGateway:
    """The gateway under test: an in-process REST client and a gRPC channel to its port."""

    gw: Gateway
    client: httpx.AsyncClient
    channel: grpc.aio.Channel
    settings: GatewaySettings

    def stub(self, method: str, kind: str = "unary_unary") -> Any:
        return getattr(self.channel, kind)(method)


@asynccontextmanager
async def running_gateway(settings: GatewaySettings, issuer: TestIssuer) -> AsyncIterator[RunningGateway]:
    gw = build_gateway(settings, verifier=issuer.verifier())
    await gw.host.start_background()
    try:
        port = await gw.host.start_http("127.0.0.1", 0, lifespan="off")  # the real edge, on a real socket
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client, \
                grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            yield RunningGateway(gw, client, channel, settings)
    finally:
        await gw.host.stop_http()
        await gw.host.stop_background()


@pytest.fixture
async def gateway(tmp_path: Path, pg_url: str, redis_url: str, test_issuer: TestIssuer,
                  service: Service) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service)
    async with running_gateway(settings, test_issuer) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
