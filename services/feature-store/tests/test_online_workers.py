"""Worker processes on the fast port (``MLP_FEATURE_STORE_ONLINE_WORKERS``): real processes, real sockets.

The service and two workers listen on the fast port with SO_REUSEPORT. Calls over many connections are
all answered, and ``/metrics`` of the service counts the workers' calls too. With the service's own
listener closed the workers still answer; a killed worker is started again; stopping the service stops
the workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import grpc
import httpx
import pytest

from mlp_core.testing.tokens import TestIssuer
from mlp_feature_store.api.fast_online import GET_ONLINE_FEATURES
from mlp_feature_store.main import Wiring, build_host
from mlp_feature_store.online_workers import OnlineWorkers
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

from .grpc_support import Running, free_port, strings, transforms
from .test_grpc import _define

PATH = "/api/v1/feature-store/projects/p1/online-features"
ROUTE = "/api/v1/feature-store/projects/{project}/online-features"


async def _until(check, timeout_s: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except (RuntimeError, AssertionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _read_both_ways(fast_port: int, token: str, calls: int) -> None:
    """``calls`` REST and ``calls`` gRPC reads, each on a connection of its own."""
    body = json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1", "u2"]}})
    request = pb.GetOnlineFeaturesRequest(project="p1", features=["stats:clicks"], entities={"user_id": strings("u2")})
    for _ in range(calls):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fast_port}") as client:
            answer = await client.post(PATH, content=body, headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["features"]["stats__clicks"]["values"] == [3, 5]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fast_port}") as channel:
            reply = await pb_grpc.FeatureStoreServiceStub(channel).GetOnlineFeatures(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
        assert list(reply.columns[1].values.int64_list_val.values) == [5]


async def test_workers_share_the_fast_port(test_issuer: TestIssuer, pg_url: str, redis_url: str) -> None:
    fast_port = free_port()
    settings = FeatureStoreSettings(
        database_url=pg_url, redis_url=redis_url, oidc_issuer=test_issuer.issuer, grpc_port=free_port(),
        kafka_bootstrap_servers="", feature_store_online_port=fast_port, feature_store_online_workers=3)
    collected: list[Wiring] = []
    host = build_host(settings, verifier=test_issuer.verifier(), collect=collected)
    workers = host.parts.probes["online-workers"].__self__  # type: ignore[attr-defined]
    assert isinstance(workers, OnlineWorkers) and workers.count == 2
    await host.start_background()
    http_stopped = False
    try:
        await host.start_http("127.0.0.1", 0, lifespan="off")
        await _until(workers.probe)
        first = dict(workers.listening)
        assert len(set(first.values())) == 2 and all(_alive(pid) for pid in first.values())
        assert host.grpc_server is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_server.port}") as channel:
            await _define(Running(host, collected[-1], pb_grpc.FeatureStoreServiceStub(channel), test_issuer))
        token = test_issuer.mint(scope="features:read", projects=["p1"])
        await _read_both_ways(fast_port, token, 12)

        def counted(rest: float, grpc_calls: float) -> None:
            name = settings.service_name
            assert host.registry.get_sample_value("mlp_http_requests_total", {
                "service": name, "method": "POST", "route": ROUTE, "status": "200"}) == rest
            assert host.registry.get_sample_value("mlp_grpc_requests_total", {
                "service": name, "method": GET_ONLINE_FEATURES, "code": "OK"}) == grpc_calls

        await _until(lambda: counted(12, 12), 10)  # every call counted once, whichever process served it

        await host.stop_http()  # the service's own listener closes; the workers still answer
        http_stopped = True
        await _read_both_ways(fast_port, token, 4)
        await _until(lambda: counted(16, 16), 10)

        victim = first[0]
        os.kill(victim, 9)

        def replaced() -> None:
            workers.probe()
            assert not _alive(victim) and workers.listening[0] != victim

        await _until(replaced, 90)
        assert workers.started == 3
        await _read_both_ways(fast_port, token, 4)
    finally:
        if not http_stopped:
            await host.stop_http()
        await host.stop_background()
    last = list(workers.listening.values())

    def stopped() -> None:
        assert not [pid for pid in last if _alive(pid)]

    await _until(stopped, 10)


def test_custom_transformations_are_refused_with_workers(test_issuer: TestIssuer, pg_url: str,
                                                        redis_url: str) -> None:
    settings = FeatureStoreSettings(database_url=pg_url, redis_url=redis_url, oidc_issuer=test_issuer.issuer,
                                    kafka_bootstrap_servers="", feature_store_online_port=free_port(),
                                    feature_store_online_workers=2)
    with pytest.raises(ValueError, match="built-in transformation functions"):
        build_host(settings, transforms(), verifier=test_issuer.verifier())
