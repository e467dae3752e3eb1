"""The public edge at the HTTP/1.1 level: raw sockets, so framing, limits and connection handling show."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from gateway_support import RunningGateway, bearer, gateway_settings, running_gateway

from mlp_core import edge
from mlp_core.testing.tokens import TestIssuer


def _port(gateway: RunningGateway) -> int:
    return int(str(gateway.client.base_url).rsplit(":", 1)[1].rstrip("/"))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    else:
        body = b""
    return status, headers, body


@asynccontextmanager
async def _connect(gateway: RunningGateway) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    try:
        yield reader, writer
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def _get(path: str, token: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n{extra}\r\n".encode()


async def test_malformed_request_is_400_problem_and_closed(gateway: RunningGateway) -> None:
    async with _connect(gateway) as (reader, writer):
        writer.write(b"GET /api/v1/feature-store/whoami HTTP/1.1\r\nHost gw\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert status == 400
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 400
        assert await _closed(reader)


async def test_oversized_head_is_431(gateway: RunningGateway) -> None:
    async with _connect(gateway) as (reader, writer):
        writer.write(b"GET /api/v1/feature-store/whoami HTTP/1.1\r\nHost: gw\r\n"
                     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80)) + b"\r\n")
        status, _, _ = await _read_response(reader)
        assert status == 431
        assert await _closed(reader)


async def test_upgrade_is_refused(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    async with _connect(gateway) as (reader, writer):
        writer.write(_get("/api/v1/feature-store/whoami", token,
                          "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        status, _, body = await _read_response(reader)
        assert status == 400
        assert "upgrade" in json.loads(body)["detail"].lower()


async def test_pipelined_requests_are_answered_in_order(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read features:write", projects=["p1"])
    async with _connect(gateway) as (reader, writer):
        body = b'{"name":"piped","project":"p1"}'
        writer.write(_get("/api/v1/feature-store/big?size=10", token)
                     + _get("/api/v1/feature-store/whoami", "not-a-token")
                     + f"POST /api/v1/feature-store/things HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}"
                       f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                     + _get("/healthz", token))
        answers = [await _read_response(reader) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 401, 201, 200]
        assert answers[0][2] == bytes(range(10))
        assert json.loads(answers[2][2])["name"] == "piped"
        assert json.loads(answers[3][2])["status"] == "ok"


async def test_expect_continue_gets_100_then_the_answer(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:write", projects=["p1"])
    body = b'{"name":"expect","project":"p1"}'
    async with _connect(gateway) as (reader, writer):
        writer.write(f"POST /api/v1/feature-store/things HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        status, _, answer = await _read_response(reader)
        assert status == 201
        assert json.loads(answer)["name"] == "expect"


async def test_expect_continue_over_the_limit_is_413_without_reading_the_body(
        tmp_path: Path, pg_url: str, redis_url: str, test_issuer: TestIssuer, service) -> None:
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                gateway_max_body_bytes=1024)
    async with running_gateway(settings, test_issuer) as gw, _connect(gw) as (reader, writer):
        token = test_issuer.mint(scope="features:write", projects=["p1"])
        writer.write(f"POST /api/v1/feature-store/things HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n".encode())
        status, _, body = await _read_response(reader)
        assert status == 413
        assert json.loads(body)["status"] == 413
        assert await _closed(reader)


async def test_http10_request_is_answered_and_closed(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    async with _connect(gateway) as (reader, writer):
        writer.write(f"GET /api/v1/feature-store/whoami HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        status, headers, body = await _read_response(reader)
        assert status == 200
        assert headers.get("connection") == "close"
        assert json.loads(body)["service"] == "feature-store"
        assert await _closed(reader)


async def test_slow_request_head_is_cut(gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "HEAD_TIMEOUT_S", 0.3)
    async with _connect(gateway) as (reader, writer):
        writer.write(b"GET /api/v1/feature-store/whoami HTTP/1.1\r\nHost: gw\r\n")  # and then nothing
        assert await _closed(reader)


async def test_client_leaving_mid_stream_does_not_hurt_the_gateway(gateway: RunningGateway,
                                                                   test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope="features:read")
    for _ in range(3):
        async with _connect(gateway) as (reader, writer):
            writer.write(_get("/api/v1/feature-store/big?size=2000000&chunked=true", token))
            await reader.readexactly(1000)
    assert (await gateway.client.get("/api/v1/feature-store/whoami", headers=bearer(token))).status_code == 200
    pool = gateway.gw.routes.pools["feature-store"]
    assert all(not c.closed for c in pool.idle)


async def test_own_routes_pass_to_the_app_with_the_client_address(gateway: RunningGateway,
                                                                  test_issuer: TestIssuer) -> None:
    assert (await gateway.client.get("/healthz")).json()["status"] == "ok"
    token = test_issuer.mint(scope="features:read")
    await gateway.client.get("/api/v1/feature-store/whoami", headers=bearer(token))
    metrics = (await gateway.client.get("/metrics")).text
    assert 'mlp_http_requests_total{method="GET",route="/api/v1/{service}/{path:path}",service="gateway",' \
           'status="200"}' in metrics


class _ForgetfulUpstream:
    """An HTTP/1.1 server that answers the first request of a connection, keeps it open, and closes it
    without an answer when a second request arrives (a service closing an idle kept-alive connection
    just as the gateway reuses it)."""

    def __init__(self) -> None:
        self.connections = 0  # that carried a call under test (the gateway also fetches /openapi.json)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        self.connections += head.startswith(b"GET /api/v1/feature-store/anything ")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
                     b'{"ok":true}')
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()


async def test_kept_alive_connection_closed_by_the_service_is_retried_once(
        tmp_path: Path, pg_url: str, redis_url: str, test_issuer: TestIssuer) -> None:
    upstream = _ForgetfulUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, None,
                                gateway_upstream_feature_store=f"http://127.0.0.1:{port}")
    try:
        async with running_gateway(settings, test_issuer) as gw:
            token = test_issuer.mint(scope="features:read")
            for _ in range(5):
                reply = await gw.client.get("/api/v1/feature-store/anything", headers=bearer(token))
                assert reply.status_code == 200, reply.text
                assert reply.json() == {"ok": True}
            assert upstream.connections == 5  # calls 2-5 each met a dead connection, then a fresh one
    finally:
        server.close()
        await server.wait_closed()


async def test_a_slow_body_may_take_longer_than_the_head_limit_but_not_stall(
        gateway: RunningGateway, test_issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "HEAD_TIMEOUT_S", 0.3)
    monkeypatch.setattr(edge, "BODY_IDLE_TIMEOUT_S", 0.5)
    token = test_issuer.mint(scope="features:write", projects=["p1"])
    body = b'{"name":"' + b"s" * 200_000 + b'","project":"p1"}'
    head = (f"POST /api/v1/feature-store/things HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    async with _connect(gateway) as (reader, writer):
        writer.write(head)
        for at in range(0, len(body), 70_000):  # 0.6 s in all, never 0.5 s without progress
            await asyncio.sleep(0.2)
            writer.write(body[at:at + 70_000])
        status, _, answer = await _read_response(reader)
        assert status == 201
        assert json.loads(answer)["name"] == "s" * 200_000
    async with _connect(gateway) as (reader, writer):
        writer.write(head + body[:70_000])  # and then nothing more
        assert await _closed(reader)


async def test_online_reads_go_to_the_feature_stores_fast_port(
        tmp_path: Path, pg_url: str, redis_url: str, test_issuer: TestIssuer, service) -> None:
    seen: list[bytes] = []

    async def online_port(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n"
                     b'{"fast":true}')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(online_port, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                gateway_upstream_feature_store_online=f"http://127.0.0.1:{port}")
    try:
        async with running_gateway(settings, test_issuer) as gw:
            token = test_issuer.mint(scope="features:read")
            reply = await gw.client.post("/api/v1/feature-store/projects/p1/online-features",
                                         headers=bearer(token), json={"features": ["v:f"]})
            assert reply.status_code == 200 and reply.json() == {"fast": True}
            assert seen == [b'POST /api/v1/feature-store/projects/p1/online-features HTTP/1.1 {"features":["v:f"]}']
            # everything else of the feature store still goes to its main port
            assert (await gw.client.get("/api/v1/feature-store/whoami", headers=bearer(token))).json()[
                "service"] == "feature-store"
            assert len(seen) == 1
    finally:
        server.close()
        await server.wait_closed()
