"""Routing through the gateway: REST paths unchanged, identity headers stripped, clean upstream failures,
the gRPC byte proxy (unary, streaming, deadlines, cancellation) and the merged OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from gateway_support import RunningGateway, Service, bearer, gateway_settings, md, running_gateway

from mlp_core.edge import Edge, EdgeConfig
from mlp_core.errors import NotFound
from mlp_core.grpc_edge import GrpcCall, GrpcRoutes
from mlp_core.testing.tokens import TestIssuer

FS = "/mlp.featurestore.v1.FeatureStoreService"


async def test_rest_call_is_forwarded_with_path_and_token(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read features:write", projects=["p1"])
    created = await gateway.client.post("/api/v1/feature-store/things", headers=bearer(token),
                                        json={"name": "a", "project": "p1"})
    assert created.status_code == 201, created.text
    thing = created.json()
    got = await gateway.client.get(f"/api/v1/feature-store/things/{thing['id']}", headers=bearer(token))
    assert got.status_code == 200
    assert got.json() == thing


async def test_whoami_of_service_through_gateway(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(sub="alice", scope="features:read", projects=["p1"])
    reply = await gateway.client.get("/api/v1/feature-store/whoami", headers=bearer(token))
    assert reply.status_code == 200
    assert reply.json()["subject"] == "alice"
    assert reply.json()["service"] == "feature-store"


async def test_spoofed_identity_headers_are_stripped(gateway: RunningGateway, test_issuer: TestIssuer,
                                                    service: Service) -> None:
    token = test_issuer.mint(scope="features:read")
    spoof = {"X-User-Id": "root", "X-Forwarded-Client-Cert": "By=spiffe://evil", "X-Forwarded-User": "root",
             "X-Tenant": "other", "X-MLP-Principal": "admin", "Forwarded": "for=1.2.3.4", "X-Real-IP": "1.2.3.4",
             "DPoP": "junk", "Cookie": "session=1"}
    reply = await gateway.client.get("/api/v1/feature-store/headers", headers={**bearer(token), **spoof})
    assert reply.status_code == 200
    seen = {k.lower() for k in reply.json()}
    for name in spoof:
        assert name.lower() not in seen
    assert reply.json()["authorization"] == f"Bearer {token}"


async def test_upstream_down_is_503_problem(tmp_path, pg_url, redis_url, test_issuer: TestIssuer) -> None:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, None)
    async with running_gateway(settings, test_issuer) as gw:
        reply = await gw.client.get("/api/v1/feature-store/things/1", headers=bearer(test_issuer.mint()))
        assert reply.status_code == 503
        assert reply.headers["content-type"] == "application/problem+json"
        assert "feature-store" in reply.json()["detail"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub(f"{FS}/GetThing")(b"1", metadata=md(test_issuer.mint()), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_slow_upstream_is_504_with_route_timeout(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    reply = await gateway.client.get("/api/v1/feature-store/slow", headers=bearer(test_issuer.mint()))
    assert reply.status_code == 504
    assert reply.json()["type"].endswith("deadline-exceeded")


async def test_upstream_500_becomes_502_without_internals(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    reply = await gateway.client.get("/api/v1/feature-store/boom", headers=bearer(test_issuer.mint()))
    assert reply.status_code == 502
    assert "secret" not in reply.text and "Traceback" not in reply.text


async def test_unknown_service_is_404(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="admin")
    reply = await gateway.client.get("/api/v1/no-such-service/x", headers=bearer(token))
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/problem+json"


async def test_dot_segments_are_not_routed(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    reply = await gateway.client.get("/api/v1/feature-store/%2e%2e/registry/models", headers=bearer(token))
    assert reply.status_code == 404


async def test_grpc_unary_and_streams_are_proxied(gateway: RunningGateway, test_issuer: TestIssuer,
                                                  service: Service) -> None:
    token = test_issuer.mint(scope="features:read features:write", projects=["p1"], sub="bob")
    created = await gateway.client.post("/api/v1/feature-store/things", headers=bearer(token),
                                        json={"name": "a", "project": "p1"})
    thing_id = created.json()["id"]
    reply = await gateway.stub(f"{FS}/GetThing")(thing_id.encode(), metadata=(*md(token), ("x-user-id", "root")))
    assert reply == f"{thing_id}|p1|bob".encode()
    assert "x-user-id" not in service.state.grpc_metadata[-1]
    items = [r async for r in gateway.stub(f"{FS}/ListThings", "unary_stream")(b"t", metadata=md(token))]
    assert items == [b"t-0", b"t-1", b"t-2"]

    async def requests():
        for _ in range(4):
            yield b"x"

    stored = await gateway.stub(f"{FS}/PutThings", "stream_unary")(requests(), metadata=md(token))
    assert stored == b"stored 4"


async def test_grpc_deadline_is_passed_on_and_cancels_upstream(gateway: RunningGateway, test_issuer: TestIssuer,
                                                               service: Service) -> None:
    token = test_issuer.mint(scope="features:write")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub(f"{FS}/WriteSlow")(b"deadline", metadata=md(token), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if "deadline" in service.state.cancelled:
            break
        await asyncio.sleep(0.05)
    assert "deadline" in service.state.cancelled

    # A cancelled client call, streaming or unary: grpc.aio sends RST_STREAM, the gateway cancels upstream.
    # (The unary case needs channels without OpenTelemetry's client interceptor: mlp_core.grpc.)
    for kind, payload in (("stream_stream", b"cancel"), ("unary_unary", b"unary-cancel")):
        request = iter([payload]) if kind == "stream_stream" else payload
        call = gateway.stub(f"{FS}/WriteSlow", kind)(request, metadata=md(token), timeout=10)
        await asyncio.sleep(0.3)
        call.cancel()
        for _ in range(50):
            if payload.decode() in service.state.cancelled:
                break
            await asyncio.sleep(0.05)
        assert payload.decode() in service.state.cancelled, kind


async def test_grpc_unknown_method_is_unimplemented(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub("/evil.Service/Do")(b"", metadata=md(test_issuer.mint(scope="admin")), timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED)


async def test_openapi_is_merged_from_upstreams(gateway: RunningGateway) -> None:
    await gateway.gw.openapi.refresh()
    doc = (await gateway.client.get("/openapi.json")).json()
    assert "/api/v1/feature-store/things" in doc["paths"]
    assert "/api/v1/feature-store/things/{thing_id}" in doc["paths"]
    assert "ThingCreate" in doc["components"]["schemas"]
    assert "bearerAuth" in doc["components"]["securitySchemes"]


async def test_tritonclient_http_health_through_gateway(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    """An unmodified tritonclient.http client with an Authorization header works through the gateway."""
    import tritonclient.http as httpclient

    token = test_issuer.mint(scope="predict")
    url = str(gateway.client.base_url).rstrip("/")  # the gateway's public port (its edge)

    def check() -> tuple[bool, bool]:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            return (client.is_server_live(headers=bearer(token)), client.is_server_live())
        finally:
            client.close()

    live_with, live_without = await asyncio.to_thread(check)
    assert live_with is True
    assert live_without is False


@pytest.mark.parametrize("size", [0, 1000, 300_000])
@pytest.mark.parametrize("chunked", [False, True])
async def test_small_and_large_answers_pass_byte_for_byte(gateway: RunningGateway, test_issuer: TestIssuer,
                                                          size: int, chunked: bool) -> None:
    token = test_issuer.mint(scope="features:read")
    reply = await gateway.client.get(f"/api/v1/feature-store/big?size={size}&chunked={str(chunked).lower()}",
                                     headers=bearer(token))
    assert reply.status_code == 200
    assert reply.content == bytes(i % 251 for i in range(size))
    assert reply.headers["content-type"] == "application/octet-stream"
    if not chunked:
        assert reply.headers["x-size"] == str(size)
        assert reply.headers["content-length"] == str(size)


async def test_head_is_forwarded_without_body(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    reply = await gateway.client.head("/api/v1/feature-store/whoami", headers=bearer(token))
    assert reply.status_code in (200, 405)
    assert reply.content == b""


async def test_trace_context_reaches_the_service(gateway: RunningGateway, test_issuer: TestIssuer,
                                                 service: Service) -> None:
    token = test_issuer.mint(scope="features:read")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = await gateway.client.get("/api/v1/feature-store/headers", headers={
        **bearer(token), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "tracestate": "vendor=x"})
    assert reply.status_code == 200
    seen = reply.json()
    assert seen["traceparent"].split("-")[1] == trace_id
    assert seen["tracestate"] == "vendor=x"
    # without one, the gateway starts a trace and passes it on
    reply = await gateway.client.get("/api/v1/feature-store/headers", headers=bearer(token))
    version, new_trace, _parent, _flags = reply.json()["traceparent"].split("-")
    assert version == "00" and len(new_trace) == 32 and int(new_trace, 16) != 0


async def test_routes_outside_the_proxy_templates_still_reach_the_router(gateway: RunningGateway,
                                                                         test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    redirect = await gateway.client.get("/api/v1/feature-store", headers=bearer(token))
    assert redirect.status_code in (307, 404)
    options = await gateway.client.options("/api/v1/feature-store/whoami", headers=bearer(token))
    assert options.status_code == 405


async def test_grpc_online_reads_go_to_the_feature_stores_fast_port(
        tmp_path: Path, pg_url: str, redis_url: str, test_issuer: TestIssuer, service: Service) -> None:
    """With an online upstream, GetOnlineFeatures goes there over h2c (mlp_core.grpc_edge); other methods don't."""
    seen: list[dict[bytes, bytes]] = []

    async def online(call: GrpcCall) -> bytes:
        seen.append(dict(call.metadata))
        if call.message == b"missing":
            raise NotFound("project 'nope' not found")
        return b"fast:" + call.message

    edge = Edge(EdgeConfig(lambda _m, _p: None, grpc=GrpcRoutes({f"{FS}/GetOnlineFeatures": online})))
    port = await edge.start("127.0.0.1", 0)
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                gateway_upstream_feature_store_online=f"http://127.0.0.1:{port}")
    token = test_issuer.mint(scope="features:read features:write", projects=["p1"], sub="bob")
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        async with running_gateway(settings, test_issuer) as gw:
            reply = await gw.stub(f"{FS}/GetOnlineFeatures")(b"req", metadata=(*md(token), ("traceparent", trace)))
            assert reply == b"fast:req"
            assert seen[-1][b"authorization"] == f"Bearer {token}".encode()
            assert seen[-1][b"traceparent"] == trace.encode()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await gw.stub(f"{FS}/GetOnlineFeatures")(b"missing", metadata=md(token))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "project 'nope' not found"
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the gateway's own checks still come first
                await gw.stub(f"{FS}/GetOnlineFeatures")(b"req", metadata=[])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(seen) == 2
            before = len(service.state.grpc_metadata)
            with contextlib.suppress(grpc.aio.AioRpcError):  # no such thing: answered by the service's main port
                await gw.stub(f"{FS}/GetThing")(b"1", metadata=md(token))
            assert len(service.state.grpc_metadata) == before + 1 and len(seen) == 2
    finally:
        await edge.close()
