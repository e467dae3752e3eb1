"""mlp_core.edge on its own: a router's handlers, no fallback, the app fallback, failures and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from mlp_core.edge import Connection, Edge, EdgeConfig, Handler, Request, UpstreamPool, response_head
from mlp_core.errors import BadGateway, DomainError, InvalidArgument
from mlp_core.telemetry import HttpMetrics


async def _echo(request: Request, conn: Connection) -> int:
    body = json.dumps({"method": request.method, "path": request.path, "query": request.query.decode(),
                       "body": request.body_bytes().decode()}).encode()
    conn.send(response_head(200, [(b"content-type", b"application/json")], length=len(body),
                            close=not request.keep) + body)
    return 200


async def _refuse(request: Request, conn: Connection) -> int:
    return conn.problem(InvalidArgument("no, thanks"), request.path, None, request.keep)


async def _crash(request: Request, conn: Connection) -> int:
    raise RuntimeError("secret internal detail")


def _router(method: str, path: str) -> tuple[Handler, str] | None:
    routes: dict[str, tuple[Handler, str]] = {"/echo": (_echo, "/echo"), "/refuse": (_refuse, "/refuse"),
                                              "/crash": (_crash, "/crash")}
    return routes.get(path)


@contextlib.asynccontextmanager
async def _edge(**config: object) -> AsyncIterator[tuple[Edge, str]]:
    edge = Edge(EdgeConfig(_router, **config))  # type: ignore[arg-type]
    port = await edge.start("127.0.0.1", 0)
    try:
        yield edge, f"http://127.0.0.1:{port}"
    finally:
        await edge.close()


async def test_handlers_answer_and_unrouted_paths_are_404_without_a_fallback() -> None:
    registry = CollectorRegistry()
    async with _edge(service="svc", metrics=HttpMetrics(registry)) as (_, url), httpx.AsyncClient(base_url=url) as c:
        echoed = await c.post("/echo?x=1", content=b"hello")
        assert echoed.status_code == 200
        assert echoed.json() == {"method": "POST", "path": "/echo", "query": "x=1", "body": "hello"}
        refused = await c.get("/refuse")
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["detail"] == "no, thanks"
        missing = await c.get("/elsewhere")
        assert missing.status_code == 404 and missing.json()["instance"] == "/elsewhere"
    metrics = generate_latest(registry).decode()
    assert 'mlp_http_requests_total{method="POST",route="/echo",service="svc",status="200"} 1.0' in metrics
    assert 'route="/refuse",service="svc",status="422"' in metrics


async def test_a_crashing_handler_drops_the_connection_without_a_traceback() -> None:
    async with _edge() as (_, url):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing said
        writer.close()
        async with httpx.AsyncClient(base_url=url) as c:  # and the edge goes on serving
            assert (await c.post("/echo", content=b"again")).json()["body"] == "again"


async def test_bodies_over_the_limit_are_413() -> None:
    async with _edge(max_body_bytes=100) as (_, url), httpx.AsyncClient(base_url=url) as c:
        assert (await c.post("/echo", content=b"x" * 100)).status_code == 200
        assert (await c.post("/echo", content=b"x" * 101)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * 40

        assert (await c.post("/echo", content=chunks())).status_code == 413


async def _app_server(app: Starlette, socket: str) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, uds=socket, log_config=None, lifespan="off",
                                           proxy_headers=True, forwarded_allow_ips="*"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


async def test_other_paths_go_to_the_app_on_its_socket() -> None:
    async def whoami(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"client": request.client.host if request.client else None,
                             "body": (await request.body()).decode(), "host": request.headers["host"]})

    async def stream(request: StarletteRequest) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield bytes([i]) * 100_000

        return StreamingResponse(parts())

    app = Starlette(routes=[Route("/whoami", whoami, methods=["POST"]), Route("/stream", stream)])
    with tempfile.TemporaryDirectory() as folder:
        socket = str(Path(folder) / "app.sock")
        server, task = await _app_server(app, socket)
        try:
            async with _edge(fallback_uds=socket) as (_, url), httpx.AsyncClient(base_url=url) as c:
                seen = (await c.post("/whoami", content=b"data", headers={"x-forwarded-for": "6.6.6.6"})).json()
                # the edge says who the client really is; what the client claimed is dropped
                assert seen == {"client": "127.0.0.1", "body": "data", "host": url.removeprefix("http://")}
                streamed = await c.get("/stream")
                assert streamed.content == b"".join(bytes([i]) * 100_000 for i in range(5))
                assert (await c.post("/echo", content=b"routed")).json()["body"] == "routed"  # routes first
        finally:
            server.should_exit = True
            await task


async def test_exchange_rewrites_upstream_failures() -> None:
    async def boom(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"secret": "internal detail"}, status_code=500)

    def rewrite(service: str, status: int) -> DomainError:
        return BadGateway(f"the {service} service failed (HTTP {status})")

    with tempfile.TemporaryDirectory() as folder:
        socket = str(Path(folder) / "up.sock")
        server, task = await _app_server(Starlette(routes=[Route("/boom", boom)]), socket)
        pool = UpstreamPool(uds=socket)

        async def forward(request: Request, conn: Connection) -> int:
            data = b"GET /boom HTTP/1.1\r\nhost: up\r\n\r\n"
            return await conn.exchange(pool, data, "GET", "up", request.path, None, 5.0, request.keep,
                                       rewrite=rewrite)

        edge = Edge(EdgeConfig(lambda method, path: (forward, "/forward")))
        port = await edge.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                reply = await c.get("/anything")
                assert reply.status_code == 502
                assert "secret" not in reply.text and reply.json()["detail"] == "the up service failed (HTTP 500)"
        finally:
            await edge.close()
            pool.close()
            server.should_exit = True
            await task


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    async with _edge(max_connections=2) as (edge, url):
        port = int(url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        while len(edge.connections) < 2:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the third: closed before a byte
        writer.close()
        for _, w in held:
            w.close()
        while edge.connections:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=url) as c:  # room again
            assert (await c.post("/echo", content=b"ok")).status_code == 200


def test_upstream_addresses() -> None:
    assert UpstreamPool.for_url("http://svc:8112/").authority == b"svc:8112"
    assert UpstreamPool.for_url("http://svc").port == 80
    ipv6 = UpstreamPool.for_url("http://[::1]:82")
    assert (ipv6.host, ipv6.port, ipv6.authority) == ("::1", 82, b"[::1]:82")
    for bad in ("https://svc:443", "svc:80", "http://"):
        with pytest.raises(ValueError):
            UpstreamPool.for_url(bad)
