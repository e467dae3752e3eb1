"""AuthInterceptor on a real grpc.aio server with the health service and a tiny bytes service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mlp_core.auth import AuthInterceptor, current_principal, principal_from_context
from mlp_core.testing.tokens import TestIssuer, bad_token_names, bad_tokens

BAD_NAMES = bad_token_names()
SERVICE = "mlp.test.Echo"


def _who() -> bytes:
    p = current_principal()
    return f"{p.subject}|{','.join(sorted(p.scopes))}".encode()


async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    assert principal_from_context(context) is current_principal()
    return _who()


async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield _who()


async def unary_stream_write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(_who())


async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    count = sum([1 async for _ in requests])
    return _who() + f"|{count}".encode()


async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _who()


@pytest.fixture
async def channel(test_issuer: TestIssuer) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(test_issuer.verifier())])
    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "UnaryStreamWrite": grpc.unary_stream_rpc_method_handler(unary_stream_write),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _requests() -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"x"


async def test_health_is_public(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_all_four_kinds_see_the_principal(channel: grpc.aio.Channel, test_issuer: TestIssuer) -> None:
    meta = md(test_issuer.mint(sub="carol", scope="predict"))
    uu = channel.unary_unary(f"/{SERVICE}/UnaryUnary")
    assert await uu(b"x", metadata=meta) == b"carol|predict"
    us = channel.unary_stream(f"/{SERVICE}/UnaryStream")
    assert [r async for r in us(b"x", metadata=meta)] == [b"carol|predict"] * 2
    usw = channel.unary_stream(f"/{SERVICE}/UnaryStreamWrite")
    assert [r async for r in usw(b"x", metadata=meta)] == [b"carol|predict"]
    su = channel.stream_unary(f"/{SERVICE}/StreamUnary")
    assert await su(_requests(), metadata=meta) == b"carol|predict|3"
    ss = channel.stream_stream(f"/{SERVICE}/StreamStream")
    assert [r async for r in ss(_requests(), metadata=meta)] == [b"carol|predict"] * 3


@pytest.mark.parametrize("method", ["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream"])
async def test_missing_token_refused_for_every_kind(channel: grpc.aio.Channel, method: str) -> None:
    # Request-streaming calls are opened without a request iterator: a client still writing after the
    # server refused gets a client-side INTERNAL from grpc core, which would hide the status under test.
    if method == "UnaryUnary":
        call = channel.unary_unary(f"/{SERVICE}/{method}")(b"x")
    elif method == "UnaryStream":
        call = channel.unary_stream(f"/{SERVICE}/{method}")(b"x")
    elif method == "StreamUnary":
        call = channel.stream_unary(f"/{SERVICE}/{method}")()
    else:
        call = channel.stream_stream(f"/{SERVICE}/{method}")()
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in (await call.details() or "")


async def test_unknown_method_without_token_is_unauthenticated(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/mlp.test.Nope/Nothing")(b"x")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_token_refused(channel: grpc.aio.Channel, test_issuer: TestIssuer, name: str) -> None:
    token = bad_tokens(test_issuer)[name]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x", metadata=md(token))
    allowed = {grpc.StatusCode.UNAUTHENTICATED}
    if name == "oversized":  # grpc core may refuse metadata over its 8 KiB soft limit before we see it
        allowed.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert info.value.code() in allowed
    assert token not in (info.value.details() or "")
    assert not [p for p in test_issuer.requests if p.startswith("/evil")]


async def test_principal_does_not_leak_between_calls(channel: grpc.aio.Channel, test_issuer: TestIssuer) -> None:
    uu = channel.unary_unary(f"/{SERVICE}/UnaryUnary")
    a = await uu(b"x", metadata=md(test_issuer.mint(sub="a", scope="s1")))
    b = await uu(b"x", metadata=md(test_issuer.mint(sub="b", scope="s2")))
    assert (a, b) == (b"a|s1", b"b|s2")
