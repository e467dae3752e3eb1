"""ServiceHost: problem+json on every error path, readiness, metrics, auth on every non-public route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
from fastapi import APIRouter
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict

from mlp_core.broker import free_port
from mlp_core.errors import FailedPrecondition, NotFound
from mlp_core.host import ServiceHost, ServiceParts
from mlp_core.settings import CoreSettings
from mlp_core.testing.tokens import TestIssuer


@asynccontextmanager
async def _grpc_host(issuer: TestIssuer, service: str, methods: dict[str, grpc.RpcMethodHandler]
                     ) -> AsyncIterator[tuple[ServiceHost, grpc.aio.Channel]]:
    """A host whose gRPC server serves ``methods`` of ``service`` (with the standard interceptors), and a channel."""
    handler = grpc.method_handlers_generic_handler(service, methods)

    def register(server: grpc.aio.Server) -> str:
        server.add_generic_rpc_handlers((handler,))
        return service

    port = free_port()
    settings = CoreSettings(service_name="test", oidc_issuer=issuer.issuer, grpc_port=port)
    host = ServiceHost(settings, ServiceParts(title="t", grpc_registrars=[register]), verifier=issuer.verifier())
    await host.start_background()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield host, channel
    finally:
        await host.stop_background()


class ThingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int


def _router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/test")

    @router.get("/missing")
    async def missing() -> None:
        raise NotFound("thing 'x' does not exist in project 'default'")

    @router.get("/precondition")
    async def precondition() -> None:
        raise FailedPrecondition("alias 'champion' points at this version")

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    @router.post("/things")
    async def create(thing: ThingCreate) -> dict[str, object]:
        return thing.model_dump()

    return router


def _host(issuer: TestIssuer, *, probes: dict | None = None, grpc_port: int = 0) -> ServiceHost:
    settings = CoreSettings(service_name="test", oidc_issuer=issuer.issuer, grpc_port=grpc_port)
    parts = ServiceParts(title="test", routers=[_router()], probes=probes or {})
    return ServiceHost(settings, parts, verifier=issuer.verifier())


@pytest.fixture
def client(test_issuer: TestIssuer):
    host = _host(test_issuer)
    transport = httpx.ASGITransport(app=host.app, raise_app_exceptions=False)
    token = test_issuer.mint(scope="features:read")
    return httpx.AsyncClient(transport=transport, base_url="http://svc",
                             headers={"Authorization": f"Bearer {token}"})


async def test_domain_errors_are_problem_json(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/test/missing")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"].endswith("/not-found") and "does not exist" in body["detail"]
    assert (await client.get("/api/v1/test/precondition")).status_code == 409


async def test_unexpected_error_hides_details(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/test/boom")
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/problem+json"
    assert "secret internal detail" not in resp.text and "Traceback" not in resp.text


async def test_validation_errors_name_the_field(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/test/things", json={"name": "a", "size": "big"})
    assert resp.status_code == 422
    body = resp.json()
    assert body["errors"][0]["loc"] == ["body", "size"]
    resp = await client.post("/api/v1/test/things", json={"name": "a", "size": 1, "owner": "root"})
    assert resp.status_code == 422, "unknown fields are refused"
    resp = await client.post("/api/v1/test/things", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/test/nope")
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"


async def test_public_routes_and_auth(test_issuer: TestIssuer) -> None:
    host = _host(test_issuer)
    transport = httpx.ASGITransport(app=host.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as anon:
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/openapi.json")).status_code == 200
        assert (await anon.get("/metrics")).status_code == 200
        refused = await anon.get("/api/v1/test/whoami")
        assert refused.status_code == 401
        token = test_issuer.mint(scope="registry:read features:read", projects=["a", "b"])
        ok = await anon.get("/api/v1/test/whoami", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert ok.json()["projects"] == ["a", "b"]
        metrics = (await anon.get("/metrics")).text
        assert 'mlp_http_requests_total{method="GET",route="/api/v1/test/whoami",service="test",status="200"}' in metrics


async def test_readyz_reports_each_failed_probe(test_issuer: TestIssuer) -> None:
    def broken() -> None:
        raise ConnectionError("redis down")

    host = _host(test_issuer, probes={"good": lambda: None, "redis": broken})
    transport = httpx.ASGITransport(app=host.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as anon:
        resp = await anon.get("/readyz")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert checks["good"] == "ok" and checks["redis"].startswith("failed: ConnectionError")


async def test_grpc_server_has_health_and_refuses_without_token(test_issuer: TestIssuer) -> None:
    port = free_port()
    host = _host(test_issuer, grpc_port=port)
    await host.start_background()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            # reflection is a non-health method: served, but only with a token
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            token = test_issuer.mint()
            responses = [r async for r in stub.ServerReflectionInfo(
                iter([req]), metadata=[("authorization", f"Bearer {token}")])]
            names = {s.name for s in responses[0].list_services_response.service}
            assert "grpc.health.v1.Health" in names
    finally:
        await host.stop_background()


async def test_trace_context_without_exporter_is_propagated_cheaply() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from mlp_core.telemetry import TraceContextMiddleware, current_trace_id

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"trace_id": current_trace_id()})

    app = TraceContextMiddleware(Starlette(routes=[Route("/echo", echo)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        given = await client.get("/echo", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert given.json() == {"trace_id": trace_id}
        fresh = [(await client.get("/echo")).json()["trace_id"] for _ in range(2)]
        assert all(t and len(t) == 32 and int(t, 16) for t in fresh) and fresh[0] != fresh[1]
        malformed = await client.get("/echo", headers={"traceparent": "00-zz-yy-01"})
        assert malformed.json()["trace_id"] not in (None, "zz")


async def test_problem_bodies_carry_the_callers_trace_id(client: httpx.AsyncClient) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    reply = await client.get("/api/v1/test/missing", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert reply.status_code == 404
    assert reply.json()["trace_id"] == trace_id


async def test_grpc_errors_become_status_codes_without_details(test_issuer: TestIssuer) -> None:
    async def missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise NotFound("model 'm' does not exist in project 'p'")

    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("secret internal detail")

    async def stream_boom(request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        raise RuntimeError("secret internal detail")

    md = [("authorization", f"Bearer {test_issuer.mint()}")]
    async with _grpc_host(test_issuer, "mlp.test.v1.Errors", {
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Boom": grpc.unary_unary_rpc_method_handler(boom),
        "StreamBoom": grpc.unary_stream_rpc_method_handler(stream_boom),
    }) as (host, channel):
        for method, code in (("Missing", grpc.StatusCode.NOT_FOUND), ("Boom", grpc.StatusCode.INTERNAL)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(f"/mlp.test.v1.Errors/{method}")(b"x", metadata=md)
            assert info.value.code() == code
            assert "secret" not in (info.value.details() or "")
        call = channel.unary_stream("/mlp.test.v1.Errors/StreamBoom")(b"x", metadata=md)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for item in call:
                got.append(item)
        assert got == [b"first"] and info.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (info.value.details() or "")
        metrics = generate_latest(host.registry).decode()
        assert 'code="NOT_FOUND"' in metrics and 'code="INTERNAL"' in metrics


async def test_grpc_calls_carry_the_callers_trace_context_without_an_exporter(test_issuer: TestIssuer) -> None:
    from mlp_core.telemetry import current_trace_id, tracing_exported

    assert not tracing_exported()  # this path is the one without recording spans
    seen: list[str | None] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(current_trace_id())
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext):
        seen.append(current_trace_id())
        yield request

    auth = ("authorization", f"Bearer {test_issuer.mint()}")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")
    # The caller's context is current too: if an earlier test installed an SDK tracer provider, the
    # (process-wide) client instrumentation sends the current context's traceparent, not ours.
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    caller = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        trace_id=int(trace_id, 16), span_id=0x00F067AA0BA902B7, is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))), otel_context.Context())
    async with _grpc_host(test_issuer, "mlp.test.v1.Trace", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream)}) as (_host, channel):
        token = otel_context.attach(caller)
        try:
            await channel.unary_unary("/mlp.test.v1.Trace/Echo")(b"x", metadata=[auth, parent])
        finally:
            otel_context.detach(token)
        token = otel_context.attach(otel_context.Context())
        try:
            await channel.unary_unary("/mlp.test.v1.Trace/Echo")(b"x", metadata=[auth])
            await channel.unary_unary("/mlp.test.v1.Trace/Echo")(b"x", metadata=[auth])
        finally:
            otel_context.detach(token)
        token = otel_context.attach(caller)
        try:
            [_ async for _ in channel.unary_stream("/mlp.test.v1.Trace/Stream")(b"x", metadata=[auth, parent])]
        finally:
            otel_context.detach(token)
    assert seen[0] == trace_id and seen[3] == trace_id
    # without one, each call gets a fresh trace of its own (nothing leaks from an earlier call)
    assert seen[1] and seen[2] and len({seen[1], seen[2], trace_id}) == 3


async def test_malformed_grpc_requests_are_invalid_argument(test_issuer: TestIssuer) -> None:
    """grpc.aio answers UNKNOWN with the decoder's exception when a request does not parse; ours say what."""
    seen: list[object] = []

    async def check(request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        seen.append(request)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def count(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        services = [r.service async for r in requests]
        seen.append(services)
        return health_pb2.HealthCheckResponse(status=len(services))

    decode, encode = health_pb2.HealthCheckRequest.FromString, health_pb2.HealthCheckResponse.SerializeToString
    md = [("authorization", f"Bearer {test_issuer.mint()}")]
    good = health_pb2.HealthCheckRequest(service="a").SerializeToString()
    async with _grpc_host(test_issuer, "mlp.test.v1.Parse", {
        "Check": grpc.unary_unary_rpc_method_handler(check, decode, encode),
        "Count": grpc.stream_unary_rpc_method_handler(count, decode, encode),
    }) as (host, channel):
        unary = channel.unary_unary("/mlp.test.v1.Parse/Check")
        answer = health_pb2.HealthCheckResponse.FromString(await unary(good, metadata=md))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING and len(seen) == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"\xff\xff\xff", metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "the request is not a valid grpc.health.v1.HealthCheckRequest message"
        streamed = channel.stream_unary("/mlp.test.v1.Parse/Count")
        answer = health_pb2.HealthCheckResponse.FromString(await streamed(iter([good, good]), metadata=md))
        assert answer.status == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await streamed(iter([good, b"\xff\xff\xff"]), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(seen) == 2  # neither bad call reached a handler's end
        assert 'code="INVALID_ARGUMENT"' in generate_latest(host.registry).decode()
