"""Scopes per route (RBAC), tenancy (BOLA), mass assignment, rate limits, body size and compression."""

from __future__ import annotations

import gzip

import grpc
import pytest
from gateway_support import RunningGateway, bearer, gateway_settings, md, running_gateway

from mlp_core.testing.tokens import TestIssuer
from mlp_gateway.policy import AUTHENTICATED, grpc_route, required_scope

FS = "/mlp.featurestore.v1.FeatureStoreService"


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/api/v1/feature-store/feature-views", "features:read"),
    ("POST", "/api/v1/feature-store/feature-views", "features:write"),
    ("DELETE", "/api/v1/feature-store/entities/e1", "features:write"),
    ("POST", "/api/v1/feature-store/projects/p1/online-features", "features:read"),
    ("POST", "/api/v1/feature-store/projects/p1/historical-features", "features:read"),
    ("POST", "/api/v1/feature-store/projects/p1/feature-views/v/push", "features:write"),
    ("GET", "/api/v1/registry/models", "registry:read"),
    ("POST", "/api/v1/registry/models", "registry:write"),
    ("POST", "/api/v1/registry/models/m/change-requests/7/approve", "registry:approve"),
    ("POST", "/api/v1/registry/change-requests/7/approve", "registry:approve"),  # the registry's real path
    ("POST", "/api/v1/registry/change-requests/7/reject", "registry:approve"),
    ("POST", "/api/v1/registry/change-requests/7/apply", "registry:write"),
    ("POST", "/api/v1/training/runs", "training:run"),
    ("POST", "/v2/models/iris/infer", "predict"),
    ("GET", "/v2/health/live", AUTHENTICATED),
    ("POST", "/v2/repository/models/iris/load", "admin"),
    ("GET", "/api/v1/monitoring/reports", "monitoring:read"),
    ("GET", "/api/v1/registry/whoami", AUTHENTICATED),
    ("GET", "/nowhere", None),
])
def test_rest_policy_table(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_grpc_policy_table() -> None:
    assert grpc_route("/inference.GRPCInferenceService/ModelInfer") == ("serving", "predict")
    assert grpc_route("/inference.GRPCInferenceService/ServerLive") == ("serving", AUTHENTICATED)
    assert grpc_route("/mlp.registry.v1.RegistryService/ApproveChangeRequest") == ("registry", "registry:approve")
    assert grpc_route("/mlp.registry.v1.RegistryService/GetModel") == ("registry", "registry:read")
    assert grpc_route("/mlp.registry.v1.RegistryService/CreateModel") == ("registry", "registry:write")
    assert grpc_route("/mlp.featurestore.v1.FeatureStoreService/ListThings") == ("feature-store", "features:read")
    assert grpc_route("/evil.Service/X") is None


async def test_missing_scope_is_403_on_rest(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    reader = test_issuer.mint(scope="features:read", projects=["p1"])
    reply = await gateway.client.post("/api/v1/feature-store/things", headers=bearer(reader),
                                      json={"name": "a", "project": "p1"})
    assert reply.status_code == 403
    assert reply.headers["content-type"] == "application/problem+json"
    assert "features:write" in reply.json()["detail"]
    approve = await gateway.client.post("/api/v1/registry/models/m/change-requests/1/approve",
                                        headers=bearer(test_issuer.mint(scope="registry:write")))
    assert approve.status_code == 403
    infer = await gateway.client.post("/v2/models/m/infer", headers=bearer(reader), json={})
    assert infer.status_code == 403


async def test_missing_scope_is_permission_denied_on_grpc(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    reader = test_issuer.mint(scope="features:read")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub(f"{FS}/WriteSlow")(b"x", metadata=md(reader), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub("/inference.GRPCInferenceService/ModelInfer")(b"", metadata=md(reader), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bola_other_projects_objects_are_404(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    alice = test_issuer.mint(sub="alice", scope="features:read features:write", projects=["project-a"])
    mallory = test_issuer.mint(sub="mallory", scope="features:read features:write", projects=["project-b"])
    created = await gateway.client.post("/api/v1/feature-store/things", headers=bearer(alice),
                                        json={"name": "secret", "project": "project-a"})
    thing_id = created.json()["id"]
    reply = await gateway.client.get(f"/api/v1/feature-store/things/{thing_id}", headers=bearer(mallory))
    assert reply.status_code == 404
    assert "secret" not in reply.text
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub(f"{FS}/GetThing")(thing_id.encode(), metadata=md(mallory), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    own = await gateway.client.get(f"/api/v1/feature-store/things/{thing_id}", headers=bearer(alice))
    assert own.status_code == 200


async def test_mass_assignment_unknown_fields_are_refused(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(sub="alice", scope="features:write", projects=["p1"])
    reply = await gateway.client.post("/api/v1/feature-store/things", headers=bearer(token),
                                      json={"name": "a", "project": "p1", "owner": "root", "id": "1"})
    assert reply.status_code == 422
    assert reply.headers["content-type"] == "application/problem+json"


async def test_rate_limit_is_429_with_retry_after(tmp_path, pg_url, redis_url, test_issuer: TestIssuer,
                                                  service) -> None:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                gateway_rate_limit_per_s=0.5, gateway_rate_limit_burst=3)
    async with running_gateway(settings, test_issuer) as gw:
        token = test_issuer.mint(scope="features:read", client_id="greedy")
        statuses = [(await gw.client.get("/api/v1/feature-store/whoami", headers=bearer(token))).status_code
                    for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await gw.client.get("/api/v1/feature-store/whoami", headers=bearer(token))
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["content-type"] == "application/problem+json"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub(f"{FS}/GetThing")(b"1", metadata=md(token), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = test_issuer.mint(scope="features:read", client_id="modest")
        assert (await gw.client.get("/api/v1/feature-store/whoami", headers=bearer(other))).status_code == 200


async def test_body_over_limit_is_413(tmp_path, pg_url, redis_url, test_issuer: TestIssuer, service) -> None:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                gateway_max_body_bytes=1024)
    async with running_gateway(settings, test_issuer) as gw:
        token = test_issuer.mint(scope="features:write", projects=["p1"])
        big = b'{"name":"' + b"a" * 2000 + b'","project":"p1"}'
        declared = await gw.client.post("/api/v1/feature-store/things", headers=bearer(token), content=big)
        assert declared.status_code == 413

        async def chunks():
            for _ in range(4):
                yield b"a" * 400

        chunked = await gw.client.post("/api/v1/feature-store/things", headers=bearer(token), content=chunks())
        assert chunked.status_code == 413
        assert chunked.headers["content-type"] == "application/problem+json"
        small = await gw.client.post("/api/v1/feature-store/things", headers=bearer(token),
                                     json={"name": "a", "project": "p1"})
        assert small.status_code == 201


async def test_compressed_bodies_are_refused(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:write", projects=["p1"])
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    for encoding in ("gzip", "deflate", "br", "identity, gzip"):
        reply = await gateway.client.post("/api/v1/feature-store/things", content=bomb,
                                          headers={**bearer(token), "Content-Encoding": encoding})
        assert reply.status_code == 415, encoding
