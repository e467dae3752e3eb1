"""A real feature-store host (REST + grpc.aio, real tokens) for gRPC and event tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from mlp_core.host import ServiceHost
from mlp_core.testing.tokens import TestIssuer
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.main import Wiring, build_host
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_protos.mlp.common.v1 import value_pb2
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transforms() -> TransformRegistry:
    registry = TransformRegistry()
    registry.register("ratio", lambda cols: {"ratio": [
        None if a is None or not b else a / b for a, b in zip(cols["stats:clicks"], cols["stats:views"], strict=True)]})
    return registry


@dataclass
class Running:
    host: ServiceHost
    wiring: Wiring
    stub: pb_grpc.FeatureStoreServiceStub
    issuer: TestIssuer

    def auth(self, scope: str = "features:read features:write", projects: list[str] | None = None
             ) -> list[tuple[str, str]]:
        token = self.issuer.mint(scope=scope, projects=projects or ["p1"])
        return [("authorization", f"Bearer {token}")]


@asynccontextmanager
async def running_host(issuer: TestIssuer, db_url: str, redis_url: str, **settings: Any) -> AsyncIterator[Running]:
    """Start the host's gRPC server and background tasks; yields a stub on a channel to it."""
    port = free_port()
    config = FeatureStoreSettings(database_url=db_url, redis_url=redis_url, oidc_issuer=issuer.issuer,
                                  grpc_port=port, feature_store_materialize_settle_s=0,
                                  **{"kafka_bootstrap_servers": "", **settings})
    collected: list[Wiring] = []
    host = build_host(config, transforms(), verifier=issuer.verifier(), collect=collected)
    await host.start_background()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Running(host, collected[-1], pb_grpc.FeatureStoreServiceStub(channel), issuer)
    finally:
        await host.stop_background()


def strings(*values: str) -> value_pb2.RepeatedValue:
    return value_pb2.RepeatedValue(values=[value_pb2.Value(string_val=v) for v in values])


def ints(*values: int) -> value_pb2.RepeatedValue:
    return value_pb2.RepeatedValue(values=[value_pb2.Value(int64_val=v) for v in values])
