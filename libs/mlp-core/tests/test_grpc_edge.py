"""mlp_core.grpc_edge: unary gRPC over h2c on the edge's port.

Three layers: a real grpc.aio client against an ``Edge`` with test routes (what services see); a client
speaking HTTP/2 by hand on a raw socket (frames, flow control, refusals and connection errors the gRPC
library never produces); and the HPACK decoder against the ``hpack`` package's encoder (property test).
Every socket read has a timeout, so a server that hangs fails the test instead of blocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc
import hpack
import httpx
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.hpack import INDEX_NONE
from hpack.table import HeaderTable
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from mlp_core import grpc_edge
from mlp_core.edge import Connection, Edge, EdgeConfig, Handler, Request, Router, response_head
from mlp_core.errors import DomainError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from mlp_core.grpc_edge import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    GrpcCall,
    GrpcHandler,
    GrpcRoutes,
    HeaderDecoder,
    HeaderError,
    frame,
    parse_timeout,
    status_block,
)
from mlp_core.telemetry import GrpcMetrics

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x3, 0x4, 0x5
READ_TIMEOUT_S = 5.0
SECRET = "secret internal detail in /srv/app/handler.py"
ERRORS: dict[str, type[DomainError]] = {cls.__name__: cls for cls in
                                        (InvalidArgument, NotFound, Unauthenticated, PermissionDenied)}


def _pattern(n: int) -> bytes:
    """``n`` bytes that are not all alike, so a reordered or shifted answer does not compare equal."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# -- the server under test -----------------------------------------------------------------------------


@dataclass
class Probe:
    """What the test routes saw: calls, and whether the hanging handler started and was cancelled."""

    calls: list[GrpcCall] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def _routes(probe: Probe) -> dict[str, GrpcHandler]:
    async def echo(call: GrpcCall) -> bytes:
        probe.calls.append(call)
        return call.message

    async def meta(call: GrpcCall) -> bytes:
        return json.dumps({"method": call.method, "peer": call.peer,
                           "metadata": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in call.metadata],
                           "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x")
                           }).encode()

    async def fail(call: GrpcCall) -> bytes:
        spec = json.loads(call.message)
        raise ERRORS[spec["error"]](spec["detail"])

    async def crash(call: GrpcCall) -> bytes:
        raise RuntimeError(SECRET)

    async def hang(call: GrpcCall) -> bytes:
        probe.started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends this call
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        return b"unreachable"

    async def big(call: GrpcCall) -> bytes:
        return _pattern(int(call.message))

    async def size(call: GrpcCall) -> bytes:
        return str(len(call.message)).encode()

    async def inner_cancel(call: GrpcCall) -> bytes:
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.cancel()
        return await task  # type: ignore[no-any-return]  # raises CancelledError: not the caller's cancel

    return {"/t.E/Echo": echo, "/t.E/Meta": meta, "/t.E/Fail": fail, "/t.E/Crash": crash, "/t.E/Hang": hang,
            "/t.E/Big": big, "/t.E/Size": size, "/t.E/InnerCancel": inner_cancel}


async def _ping(request: Request, conn: Connection) -> int:
    body = b"pong " + request.body_bytes()
    conn.send(response_head(200, [(b"content-type", b"text/plain")], length=len(body),
                            close=not request.keep) + body)
    return 200


def _router(method: str, path: str) -> tuple[Handler, str] | None:
    return (_ping, "/ping") if path == "/ping" else None


@dataclass
class Served:
    edge: Edge
    port: int
    probe: Probe
    registry: CollectorRegistry

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def _serve(*, grpc_on: bool = True, max_message_bytes: int = 64 * 1024 * 1024,
                 router: Router = _router) -> AsyncIterator[Served]:
    probe, registry = Probe(), CollectorRegistry()
    routes = GrpcRoutes(_routes(probe), service="svc", metrics=GrpcMetrics(registry),
                        max_message_bytes=max_message_bytes) if grpc_on else None
    edge = Edge(EdgeConfig(router, grpc=routes))
    port = await edge.start("127.0.0.1", 0)
    try:
        yield Served(edge, port, probe, registry)
    finally:
        await edge.close()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with _serve() as s:
        yield s


async def _rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# -- grpc.aio client -----------------------------------------------------------------------------------


async def test_echo_round_trip_carries_metadata_method_peer_and_trace(served: Served) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(served.target) as channel:
        assert await channel.unary_unary("/t.E/Echo")(b"hello \x00\xff") == b"hello \x00\xff"
        assert await channel.unary_unary("/t.E/Echo")(b"") == b""  # an empty message both ways
        seen = json.loads(await channel.unary_unary("/t.E/Meta")(
            b"", timeout=30, metadata=[("authorization", "Bearer abc.def"), ("x-request-id", "r-1"),
                                       ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]))
    assert seen["method"] == "/t.E/Meta" and seen["peer"] == "127.0.0.1"
    metadata = [tuple(pair) for pair in seen["metadata"]]
    assert ("authorization", "Bearer abc.def") in metadata and ("x-request-id", "r-1") in metadata
    # pseudo headers, the content type and the deadline are the transport's, not the handler's metadata
    names = {name for name, _ in metadata}
    assert not {n for n in names if n.startswith(":")} and not names & {"content-type", "grpc-timeout"}
    assert seen["trace_id"] == trace_id  # the caller's trace is the handler's context


@pytest.mark.parametrize("error", sorted(ERRORS))
async def test_domain_errors_become_their_status_and_message(served: Served, error: str) -> None:
    detail = "bad input é % 100%25 \t tab, newline\n, ✓ 中文, done"
    async with grpc.aio.insecure_channel(served.target) as channel:
        exc = await _rpc_error(channel.unary_unary("/t.E/Fail")(json.dumps({"error": error, "detail": detail})
                                                               .encode()))
    assert exc.code() == ERRORS[error].grpc_code
    assert exc.details() == detail  # percent-encoded on the wire, decoded by the client


async def test_a_cancellation_from_inside_the_handler_is_answered(served: Served) -> None:
    """Only the caller's cancel, a reset or the deadline end a call silently; any other CancelledError
    is the handler's failure, and the caller gets INTERNAL instead of waiting forever."""
    async with grpc.aio.insecure_channel(served.target) as channel:
        exc = await _rpc_error(channel.unary_unary("/t.E/InnerCancel")(b"x", timeout=5))
        assert await channel.unary_unary("/t.E/Echo")(b"after") == b"after"
    assert exc.code() == grpc.StatusCode.INTERNAL
    assert exc.details() == "internal error; see server logs"


async def test_an_unexpected_exception_is_internal_without_a_traceback(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mlp_core.grpc_edge"):
        async with grpc.aio.insecure_channel(served.target) as channel:
            exc = await _rpc_error(channel.unary_unary("/t.E/Crash")(b"x"))
            assert await channel.unary_unary("/t.E/Echo")(b"after") == b"after"  # the connection is fine
    assert exc.code() == grpc.StatusCode.INTERNAL
    assert exc.details() == "internal error; see server logs"
    said = f"{exc.details()} {exc.debug_error_string()} {exc.trailing_metadata()} {exc.initial_metadata()}"
    assert "secret" not in said and "Traceback" not in said and "RuntimeError" not in said
    assert any("/t.E/Crash" in r.getMessage() and r.exc_info for r in caplog.records)  # logged, server side


async def test_an_unknown_method_is_unimplemented(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        exc = await _rpc_error(channel.unary_unary("/t.E/Nope")(b"x"))
    assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    assert exc.details() == "Method not found: /t.E/Nope"


async def test_a_client_deadline_ends_the_call_and_cancels_the_handler(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        exc = await _rpc_error(channel.unary_unary("/t.E/Hang")(b"", timeout=0.3))
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(served.probe.cancelled.wait(), READ_TIMEOUT_S)
        assert await channel.unary_unary("/t.E/Echo")(b"next") == b"next"


async def test_a_client_cancel_cancels_the_handler(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        call = channel.unary_unary("/t.E/Hang")(b"")
        await asyncio.wait_for(served.probe.started.wait(), READ_TIMEOUT_S)
        assert not served.probe.cancelled.is_set()
        call.cancel()
        await asyncio.wait_for(served.probe.cancelled.wait(), READ_TIMEOUT_S)
        assert await call.code() == grpc.StatusCode.CANCELLED
        assert await channel.unary_unary("/t.E/Echo")(b"next") == b"next"


async def test_a_request_over_the_limit_is_resource_exhausted() -> None:
    async with _serve(max_message_bytes=1000) as s, grpc.aio.insecure_channel(s.target) as channel:
        echo = channel.unary_unary("/t.E/Echo")
        assert await echo(b"x" * 1000) == b"x" * 1000  # at the limit: fine
        exc = await _rpc_error(echo(b"x" * 1001))
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.details() == "request message of 1001 bytes is over the limit of 1000"
        exc = await _rpc_error(echo(b"y" * 3_000_000))  # refused from its length prefix, not read whole
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await echo(b"still") == b"still"
        assert [c.message for c in s.probe.calls] == [b"x" * 1000, b"still"]  # the handler saw no refused one


async def test_answers_larger_than_the_client_windows_arrive_whole(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        big = channel.unary_unary("/t.E/Big")
        assert await big(b"300000") == _pattern(300_000)
        sizes = [300_000 + 997 * i for i in range(20)]
        answers = await asyncio.gather(*(big(str(n).encode()) for n in sizes))
        assert [len(a) for a in answers] == sizes
        assert all(a == _pattern(n) for a, n in zip(answers, sizes, strict=True))


async def test_requests_larger_than_our_windows_are_read_whole(served: Served) -> None:
    # 8 x 3 MB: over the 1 MiB stream window and the 16 MiB connection window, so both are given back
    async with grpc.aio.insecure_channel(served.target) as channel:
        size = channel.unary_unary("/t.E/Size")
        sizes = [3_000_000 + i for i in range(8)]
        answers = await asyncio.gather(*(size(b"r" * n) for n in sizes))
    assert [int(a) for a in answers] == sizes


async def test_many_concurrent_calls_on_one_channel(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        echo = channel.unary_unary("/t.E/Echo")
        messages = [f"call {i}".encode() * (i % 7 + 1) for i in range(400)]
        assert await asyncio.gather(*(echo(m) for m in messages)) == messages


async def test_metrics_count_calls_by_method_and_code(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.target) as channel:
        for _ in range(3):
            await channel.unary_unary("/t.E/Echo")(b"x")
        await _rpc_error(channel.unary_unary("/t.E/Fail")(b'{"error": "NotFound", "detail": "gone"}'))
        await _rpc_error(channel.unary_unary("/t.E/Crash")(b""))
        for i in range(5):
            await _rpc_error(channel.unary_unary(f"/t.E/Nope{i}")(b""))

    def count(method: str, code: str) -> float | None:
        return served.registry.get_sample_value("mlp_grpc_requests_total",
                                                {"service": "svc", "method": method, "code": code})

    assert count("/t.E/Echo", "OK") == 3
    assert count("/t.E/Fail", "NOT_FOUND") == 1
    assert count("/t.E/Crash", "INTERNAL") == 1
    assert served.registry.get_sample_value("mlp_grpc_request_duration_seconds_count",
                                            {"service": "svc", "method": "/t.E/Echo"}) == 3
    # Paths a client makes up are no label (unbounded series), as with ErrorInterceptor on grpc.aio.
    methods = {s.labels["method"] for m in served.registry.collect() if m.name == "mlp_grpc_requests"
               for s in m.samples}
    assert methods == {"/t.E/Echo", "/t.E/Fail", "/t.E/Crash"}


async def test_http1_on_the_same_port_is_unaffected(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served.target}") as client:
        assert (await client.post("/ping", content=b"one")).text == "pong one"
        async with grpc.aio.insecure_channel(served.target) as channel:
            assert await channel.unary_unary("/t.E/Echo")(b"x") == b"x"
        answer = await client.post("/ping", content=b"two")
        assert answer.status_code == 200 and answer.text == "pong two"
        assert (await client.get("/elsewhere")).status_code == 404
    # a request line whose method merely starts like the preface is HTTP/1.1 too (an unknown method: 400)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"PRIX /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    head = await asyncio.wait_for(reader.read(12), READ_TIMEOUT_S)
    writer.close()
    assert head == b"HTTP/1.1 400"


async def test_without_grpc_routes_the_preface_gets_a_400() -> None:
    async with _serve(grpc_on=False) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(PREFACE + frame(SETTINGS, 0, 0))
        answer = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")
        async with httpx.AsyncClient(base_url=f"http://{s.target}") as client:
            assert (await client.post("/ping", content=b"ok")).text == "pong ok"


# -- HTTP/2 by hand -------------------------------------------------------------------------------------


class Frame(NamedTuple):
    kind: int
    flags: int
    sid: int
    payload: bytes


@dataclass
class Answer:
    headers: dict[str, str]
    data: bytes
    trailers: dict[str, str]
    frames: list[Frame]

    @property
    def grpc_status(self) -> str | None:
        return (self.trailers or self.headers).get("grpc-status")

    @property
    def grpc_message(self) -> str | None:
        return (self.trailers or self.headers).get("grpc-message")


def _message(payload: bytes, compressed: int = 0) -> bytes:
    return bytes((compressed,)) + len(payload).to_bytes(4, "big") + payload


def _settings(values: dict[int, int]) -> bytes:
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())


def _window(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big"))


def _code(f: Frame) -> int:
    """The error code of a RST_STREAM or GOAWAY frame."""
    return int.from_bytes(f.payload[:4] if f.kind == RST_STREAM else f.payload[4:8], "big")


class H2:
    """A hand-made HTTP/2 client: frames in, frames out, nothing hidden."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.pending: list[Frame] = []  # read, not yet taken by answer() or until()
        self.server_settings: dict[int, int] = {}

    @classmethod
    async def open(cls, port: int, values: dict[int, int] | None = None) -> H2:
        """Connected, prefaced, our SETTINGS sent; the server's first frame (its SETTINGS) read and acked."""
        h2 = cls(*await asyncio.open_connection("127.0.0.1", port))
        h2.send(PREFACE + frame(SETTINGS, 0, 0, _settings(values or {})))
        first = await h2.read_frame()
        assert first is not None and first.kind == SETTINGS and not first.flags & ACK and first.sid == 0, first
        h2.server_settings = {int.from_bytes(first.payload[i:i + 2], "big"):
                              int.from_bytes(first.payload[i + 2:i + 6], "big")
                              for i in range(0, len(first.payload), 6)}
        h2.send(frame(SETTINGS, ACK, 0))
        return h2

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    def close(self) -> None:
        self.writer.close()

    async def read_frame(self, timeout: float = READ_TIMEOUT_S) -> Frame | None:
        """The next frame from the server; ``None`` when it closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            payload = await asyncio.wait_for(self.reader.readexactly(int.from_bytes(head[:3], "big")), timeout)
        except asyncio.IncompleteReadError as exc:
            assert not exc.partial, f"the server closed in the middle of a frame: {exc.partial!r}"
            return None
        return Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)

    async def until(self, wanted: Callable[[Frame], bool], timeout: float = READ_TIMEOUT_S) -> Frame:
        """The first frame (pending ones first) that ``wanted`` accepts; the others stay pending."""
        for i, f in enumerate(self.pending):
            if wanted(f):
                return self.pending.pop(i)
        while True:
            got = await self.read_frame(timeout)
            assert got is not None, f"closed before the frame we wait for; read: {self.pending}"
            if wanted(got):
                return got
            self.pending.append(got)

    async def quiet(self, seconds: float) -> list[Frame]:
        """Whatever the server sends within ``seconds`` (it should send nothing we wait for)."""
        got: list[Frame] = []
        with contextlib.suppress(TimeoutError):
            while (f := await self.read_frame(seconds)) is not None:
                got.append(f)
        return got

    async def to_eof(self, timeout: float = READ_TIMEOUT_S) -> list[Frame]:
        """Everything until the server closes; fails if it does not close in time."""
        got = list(self.pending)
        self.pending.clear()
        while (f := await self.read_frame(timeout)) is not None:
            got.append(f)
        return got

    async def goaway(self) -> Frame:
        """The GOAWAY the server sends, after which it must close the connection."""
        frames = await self.to_eof()
        goaways = [f for f in frames if f.kind == GOAWAY]
        assert len(goaways) == 1 and frames[-1] == goaways[0], frames
        return goaways[0]

    def block(self, path: str = "/t.E/Echo", *, method: bytes = b"POST", content_type: bytes = b"application/grpc",
              extra: Iterable[tuple[bytes, bytes]] = (), huffman: bool = True) -> bytes:
        """A request header block, encoded against our table: send it, or the tables part ways."""
        return self.encoder.encode([(b":method", method), (b":scheme", b"http"), (b":path", path.encode()),
                                    (b":authority", b"edge"), (b"content-type", content_type),
                                    (b"te", b"trailers"), *extra], huffman=huffman)

    def request(self, sid: int, path: str = "/t.E/Echo", *, end_stream: bool = False, method: bytes = b"POST",
                content_type: bytes = b"application/grpc", extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """A HEADERS frame with a whole request header block."""
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid,
                     self.block(path, method=method, content_type=content_type, extra=extra))

    async def answer(self, sid: int, *, give_window: bool = True) -> Answer:
        """The server's answer on ``sid``, up to its END_STREAM (or RST_STREAM, which fails the test)."""
        headers: dict[str, str] = {}
        trailers: dict[str, str] = {}
        data = bytearray()
        frames: list[Frame] = []
        while True:
            f = await self.until(lambda f: f.sid == sid)
            frames.append(f)
            assert f.kind in (HEADERS, DATA), f"unexpected {f} on stream {sid}"
            if f.kind == HEADERS:
                assert f.flags & END_HEADERS, f  # the server never needs CONTINUATION for its small blocks
                decoded = {str(k): str(v) for k, v in self.decoder.decode(f.payload)}
                if headers:
                    trailers = decoded
                else:
                    headers = decoded
            else:
                assert headers, "DATA before HEADERS"
                data += f.payload
                if give_window and f.payload:
                    self.send(_window(0, len(f.payload)), _window(sid, len(f.payload)))
            if f.flags & END_STREAM:
                return Answer(headers, bytes(data), trailers, frames)

    async def call(self, sid: int, message: bytes, path: str = "/t.E/Echo",
                   extra: Iterable[tuple[bytes, bytes]] = ()) -> Answer:
        self.send(self.request(sid, path, extra=extra), frame(DATA, END_STREAM, sid, _message(message)))
        return await self.answer(sid)


@pytest.fixture
async def h2(served: Served) -> AsyncIterator[H2]:
    client = await H2.open(served.port)
    yield client
    client.close()


def _ok(answer: Answer, message: bytes) -> None:
    assert answer.headers[":status"] == "200" and answer.headers["content-type"] == "application/grpc"
    assert answer.data == _message(message)
    assert answer.trailers == {"grpc-status": "0"}


async def test_settings_are_exchanged_and_acked(served: Served) -> None:
    client = await H2.open(served.port, {SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20})
    assert client.server_settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 256
    assert client.server_settings[SETTINGS_INITIAL_WINDOW_SIZE] == 1 << 20
    assert client.server_settings[0x2] == 0  # no push
    ack = await client.until(lambda f: f.kind == SETTINGS)
    assert ack.flags & ACK and ack.payload == b"" and ack.sid == 0
    update = await client.until(lambda f: f.kind == WINDOW_UPDATE)  # the connection window opened to 16 MiB
    assert update.sid == 0 and int.from_bytes(update.payload, "big") == (16 << 20) - 65_535
    client.send(frame(SETTINGS, 0, 0, _settings({SETTINGS_MAX_FRAME_SIZE: 32_768})))  # a later SETTINGS too
    assert (await client.until(lambda f: f.kind == SETTINGS)).flags & ACK
    _ok(await client.call(1, b"after settings"), b"after settings")
    client.close()


async def test_ping_is_answered_with_the_same_bytes(h2: H2) -> None:
    h2.send(frame(PING, 0, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    pong = await h2.until(lambda f: f.kind == PING)
    assert pong == Frame(PING, ACK, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    h2.send(frame(PING, ACK, 0, b"ackedack"))  # an ACK is not answered
    h2.send(frame(PING, 0, 0, b"second!!"))
    assert (await h2.until(lambda f: f.kind == PING)).payload == b"second!!"


async def test_a_header_block_can_continue_in_continuation_frames(h2: H2) -> None:
    block = h2.block(extra=[(b"x-long", b"v" * 300)])
    a, b = len(block) // 3, 2 * len(block) // 3
    h2.send(frame(HEADERS, 0, 1, block[:a]), frame(CONTINUATION, 0, 1, block[a:b]),
            frame(CONTINUATION, END_HEADERS, 1, block[b:]), frame(DATA, END_STREAM, 1, _message(b"continued")))
    _ok(await h2.answer(1), b"continued")
    # END_STREAM on the HEADERS counts once the block is complete: a call without a message
    block = h2.block()
    h2.send(frame(HEADERS, END_STREAM, 3, block[:2]), frame(CONTINUATION, 0, 3, b""),
            frame(CONTINUATION, END_HEADERS, 3, block[2:]))
    answer = await h2.answer(3)
    assert (answer.grpc_status, answer.grpc_message) == ("13", "the call carried no request message")
    _ok(await h2.call(5, b"again"), b"again")


async def test_padding_and_priority_fields_are_read(h2: H2, served: Served) -> None:
    pad = 7
    h2.send(frame(HEADERS, END_HEADERS | PADDED, 1, bytes((pad,)) + h2.block() + b"\0" * pad),
            frame(DATA, END_STREAM | PADDED, 1, b"\x0a" + _message(b"padded") + b"\0" * 10))
    _ok(await h2.answer(1), b"padded")
    priority = (1 << 31 | 0).to_bytes(4, "big") + b"\x10"  # exclusive, on stream 0, weight 17
    h2.send(frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 3, priority + h2.block()),
            frame(DATA, END_STREAM, 3, _message(b"prioritised")))
    _ok(await h2.answer(3), b"prioritised")
    h2.send(frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 5, b"\x03" + priority + h2.block() + b"\0\0\0"),
            frame(PRIORITY, 0, 5, priority),  # a PRIORITY frame on an open stream changes nothing
            frame(DATA, PADDED, 5, b"\x00" + _message(b"both")),  # zero padding
            frame(DATA, END_STREAM | PADDED, 5, b"\x04" + b"\0" * 4))  # only padding
    _ok(await h2.answer(5), b"both")
    assert [c.message for c in served.probe.calls] == [b"padded", b"prioritised", b"both"]


async def test_a_message_may_come_in_several_data_frames_and_with_trailers(h2: H2) -> None:
    message = _message(b"in pieces")
    h2.send(h2.request(1), frame(DATA, 0, 1, message[:2]), frame(DATA, 0, 1, message[2:7]),
            frame(DATA, 0, 1, message[7:]), frame(DATA, END_STREAM, 1, b""))
    _ok(await h2.answer(1), b"in pieces")
    h2.send(h2.request(3), frame(DATA, 0, 3, _message(b"then trailers")),
            frame(HEADERS, END_HEADERS | END_STREAM, 3, h2.encoder.encode([(b"x-trailer", b"1")])))
    _ok(await h2.answer(3), b"then trailers")


async def test_non_post_is_405_and_a_wrong_content_type_415(h2: H2, served: Served) -> None:
    h2.send(h2.request(1, method=b"GET", end_stream=True))
    answer = await h2.answer(1)
    assert answer.headers == {":status": "405"} and answer.frames[0].flags & END_STREAM
    h2.send(h2.request(3, content_type=b"text/plain"), frame(DATA, END_STREAM, 3, _message(b"x")))
    answer = await h2.answer(3)
    assert answer.headers == {":status": "415"} and answer.data == b""
    h2.send(h2.request(5, content_type=b"application/grpc+proto"), frame(DATA, END_STREAM, 5, _message(b"ok")))
    _ok(await h2.answer(5), b"ok")  # a gRPC content subtype is fine
    assert [c.message for c in served.probe.calls] == [b"ok"]


async def test_a_header_list_over_64_kib_is_431(h2: H2) -> None:
    block = h2.block(extra=[NeverIndexedHeaderTuple(b"x-big", b"a" * 70_000)], huffman=False)
    chunks = [block[i:i + 16_384] for i in range(0, len(block), 16_384)]
    h2.send(frame(HEADERS, 0, 1, chunks[0]), *(frame(CONTINUATION, 0, 1, c) for c in chunks[1:-1]),
            frame(CONTINUATION, END_HEADERS, 1, chunks[-1]), frame(DATA, END_STREAM, 1, _message(b"x")))
    assert (await h2.answer(1)).headers == {":status": "431"}
    _ok(await h2.call(3, b"next"), b"next")


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", "13", "the call carried no request message"),
    (_message(b"one") + _message(b"two"), "13", "more than one request message for a unary method"),
    (_message(b"cut")[:6], "13", "the request message is truncated"),
    (b"\x00\x00", "13", "the request message is truncated"),
    (_message(b"zipped", compressed=1), "12", "compressed messages are not supported"),
], ids=["no-message", "two-messages", "cut-message", "cut-length-prefix", "compressed"])
async def test_malformed_request_messages_are_refused(h2: H2, served: Served, body: bytes, status: str,
                                                      message: str) -> None:
    if body:
        h2.send(h2.request(1), frame(DATA, END_STREAM, 1, body))
    else:
        h2.send(h2.request(1, end_stream=True))
    answer = await h2.answer(1)
    assert answer.headers[":status"] == "200" and answer.data == b"" and not answer.trailers  # trailers-only
    assert (answer.grpc_status, answer.grpc_message) == (status, message)
    assert served.probe.calls == []
    _ok(await h2.call(3, b"fine"), b"fine")


async def test_the_server_deadline_from_grpc_timeout_cancels_the_handler(h2: H2, served: Served) -> None:
    h2.send(h2.request(1, "/t.E/Hang", extra=[(b"grpc-timeout", b"50m")]), frame(DATA, END_STREAM, 1,
                                                                                 _message(b"")))
    answer = await h2.answer(1)
    assert (answer.grpc_status, answer.grpc_message) == ("4", "Deadline Exceeded")
    await asyncio.wait_for(served.probe.cancelled.wait(), READ_TIMEOUT_S)
    # a malformed grpc-timeout is no deadline at all
    _ok(await h2.call(3, b"no deadline", extra=[(b"grpc-timeout", b"1.5S")]), b"no deadline")


@pytest.mark.parametrize(("make", "code"), [
    (lambda h2: frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    (lambda h2: ((16_385 << 8) | PING).to_bytes(4, "big") + b"\0" * 5, FRAME_SIZE_ERROR),  # its header alone
    (lambda h2: frame(HEADERS, 0, 1, h2.block()[:3]) + frame(PING, 0, 0, b"12345678"), PROTOCOL_ERROR),
    (lambda h2: frame(HEADERS, 0, 1, h2.block()[:3]) + frame(CONTINUATION, END_HEADERS, 3, b""),
     PROTOCOL_ERROR),
    (lambda h2: frame(CONTINUATION, END_HEADERS, 1, b""), PROTOCOL_ERROR),
    (lambda h2: frame(PUSH_PROMISE, END_HEADERS, 1, (2).to_bytes(4, "big") + h2.block()), PROTOCOL_ERROR),
    (lambda h2: frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xbf"), COMPRESSION_ERROR),  # index 63: empty
    (lambda h2: frame(HEADERS, END_HEADERS, 1, grpc_edge._hint(4097, 5, 0x20)), COMPRESSION_ERROR),
    (lambda h2: frame(HEADERS, END_HEADERS, 1, b"\x82\x3f\x01"), COMPRESSION_ERROR),  # size update too late
    (lambda h2: _window(0, (1 << 31) - 1), FLOW_CONTROL_ERROR),
    (lambda h2: _window(0, 0), PROTOCOL_ERROR),
    (lambda h2: frame(HEADERS, END_HEADERS, 2, h2.block()), PROTOCOL_ERROR),  # a server stream id
    (lambda h2: frame(HEADERS, END_HEADERS | PADDED, 1, b"\xff" + h2.block()), PROTOCOL_ERROR),
    (lambda h2: frame(DATA, 0, 7, b"x"), PROTOCOL_ERROR),  # an idle stream
    (lambda h2: frame(RST_STREAM, 0, 9, CANCEL.to_bytes(4, "big")), PROTOCOL_ERROR),
    (lambda h2: frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    (lambda h2: frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    (lambda h2: frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    (lambda h2: frame(SETTINGS, 0, 0, b"\x00\x04\x00"), FRAME_SIZE_ERROR),
    (lambda h2: frame(SETTINGS, ACK, 0, b"\x00" * 6), FRAME_SIZE_ERROR),
    (lambda h2: frame(SETTINGS, 0, 0, _settings({SETTINGS_INITIAL_WINDOW_SIZE: 1 << 31})), FLOW_CONTROL_ERROR),
    (lambda h2: frame(SETTINGS, 0, 0, _settings({SETTINGS_MAX_FRAME_SIZE: 100})), PROTOCOL_ERROR),
    (lambda h2: frame(SETTINGS, 0, 0, _settings({0x2: 2})), PROTOCOL_ERROR),
    (lambda h2: frame(GOAWAY, 0, 1, b"\0" * 8), PROTOCOL_ERROR),
    (lambda h2: frame(PRIORITY, 0, 0, b"\0" * 5), PROTOCOL_ERROR),
    (lambda h2: frame(PRIORITY, 0, 1, b"\0" * 4), FRAME_SIZE_ERROR),  # no RST_STREAM on an idle stream
    (lambda h2: frame(HEADERS, END_HEADERS | PADDED, 1, b""), PROTOCOL_ERROR),  # no pad length
    (lambda h2: frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"), FRAME_SIZE_ERROR),
    # a header block over 256 KiB: 16 full frames are at the limit, one byte more is over
    (lambda h2: frame(HEADERS, 0, 1, b"\0" * 16_384)
     + b"".join(frame(CONTINUATION, 0, 1, b"\0" * 16_384) for _ in range(15))
     + frame(CONTINUATION, 0, 1, b"\0"), ENHANCE_YOUR_CALM),
], ids=["data-on-stream-0", "frame-over-16384", "headers-interrupted", "continuation-on-another-stream",
        "continuation-without-headers", "push-promise", "bad-hpack-index", "table-size-over-limit",
        "table-size-update-late", "connection-window-overflow", "window-update-of-0", "headers-on-even-stream",
        "padding-longer-than-frame", "data-on-idle-stream", "rst-on-idle-stream", "ping-size", "ping-on-stream",
        "settings-on-stream", "settings-length", "settings-ack-with-payload", "initial-window-over-max",
        "max-frame-size-too-small", "enable-push-2", "goaway-on-stream", "priority-on-stream-0",
        "priority-size-on-idle-stream", "padded-headers-without-pad-length",
        "window-update-size", "header-block-over-256k"])
async def test_protocol_errors_get_goaway_with_their_code_and_a_close(
        h2: H2, make: Callable[[H2], bytes], code: int) -> None:
    h2.send(make(h2))
    goaway = await h2.goaway()
    assert goaway.sid == 0 and _code(goaway) == code, goaway
    assert int.from_bytes(goaway.payload[:4], "big") == 0  # no stream was opened


async def test_stream_errors_reset_only_that_stream(h2: H2, served: Served) -> None:
    _ok(await h2.call(1, b"one"), b"one")
    h2.send(frame(PRIORITY, 0, 1, b"\0" * 4))  # a bad PRIORITY on a closed stream: a stream error
    reset = await h2.until(lambda f: f.kind == RST_STREAM)
    assert reset.sid == 1 and _code(reset) == FRAME_SIZE_ERROR
    h2.send(h2.request(3), frame(DATA, 0, 3, _message(b"x")), _window(3, 0))  # WINDOW_UPDATE of 0: stream error
    reset = await h2.until(lambda f: f.kind == RST_STREAM)
    assert reset.sid == 3 and _code(reset) == PROTOCOL_ERROR
    h2.send(h2.request(5, "/t.E/Hang"), frame(DATA, END_STREAM, 5, _message(b"")))
    await asyncio.wait_for(served.probe.started.wait(), READ_TIMEOUT_S)
    h2.send(frame(DATA, 0, 5, b"x"))  # DATA after END_STREAM, while the call runs
    reset = await h2.until(lambda f: f.kind == RST_STREAM and f.sid == 5)
    assert _code(reset) == 0x5  # STREAM_CLOSED
    await asyncio.wait_for(served.probe.cancelled.wait(), READ_TIMEOUT_S)  # and the call is over
    _ok(await h2.call(7, b"alive"), b"alive")
    h2.send(h2.request(9), frame(DATA, PADDED, 9, b""))  # padded DATA without a pad length: a connection error
    goaway = await h2.goaway()
    assert _code(goaway) == PROTOCOL_ERROR and int.from_bytes(goaway.payload[:4], "big") == 9


async def test_a_connection_error_names_the_last_stream_served(h2: H2) -> None:
    _ok(await h2.call(1, b"one"), b"one")
    _ok(await h2.call(3, b"two"), b"two")
    h2.send(frame(DATA, 0, 0, b"x"))
    goaway = await h2.goaway()
    assert int.from_bytes(goaway.payload[:4], "big") == 3 and _code(goaway) == PROTOCOL_ERROR


async def test_a_wrong_preface_closes_the_connection_without_a_word(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(SETTINGS, 0, 0))
    assert await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) == b""
    writer.close()


async def test_a_preface_in_pieces_is_fine(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    client = H2(reader, writer)
    for piece in (PREFACE[:1], PREFACE[1:3], PREFACE[3:4], PREFACE[4:10], PREFACE[10:] + frame(SETTINGS, 0, 0)[:4]):
        client.send(piece)
        await writer.drain()
        await asyncio.sleep(0.01)  # each piece is its own read on the server
    client.send(frame(SETTINGS, 0, 0)[4:])
    assert (await client.until(lambda f: f.kind == SETTINGS)).flags == 0
    _ok(await client.call(1, b"pieced"), b"pieced")
    client.close()


async def test_no_preface_in_time_closes_and_an_idle_connection_goes_away(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_edge, "PREFACE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(grpc_edge, "IDLE_TIMEOUT_S", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(PREFACE[:10])  # the edge knows it is HTTP/2, the preface never completes
    assert await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) == b""
    writer.close()
    client = await H2.open(served.port)
    _ok(await client.call(1, b"x"), b"x")  # the idle timer starts when the last stream ends
    goaway = await client.goaway()
    assert _code(goaway) == NO_ERROR and int.from_bytes(goaway.payload[:4], "big") == 1
    client.close()


async def test_the_client_stream_window_is_respected() -> None:
    async with _serve() as s:
        client = await H2.open(s.port, {SETTINGS_INITIAL_WINDOW_SIZE: 10})
        client.send(client.request(1, "/t.E/Big"), frame(DATA, END_STREAM, 1, _message(b"100")))
        head = await client.until(lambda f: f.sid == 1)
        assert head.kind == HEADERS and not head.flags & END_STREAM
        first = await client.until(lambda f: f.sid == 1)
        assert first.kind == DATA and len(first.payload) == 10
        data = bytearray(first.payload)
        assert not [f for f in await client.quiet(0.2) if f.sid == 1]  # nothing more without a WINDOW_UPDATE
        while True:
            client.send(_window(1, 7))
            f = await client.until(lambda f: f.sid == 1)
            if f.kind == HEADERS:  # the trailers, once all the data is out
                assert f.flags & END_STREAM and len(data) == 105
                assert dict(client.decoder.decode(f.payload)) == {"grpc-status": "0"}
                break
            assert f.kind == DATA and 0 < len(f.payload) <= 7, f
            data += f.payload
            if len(data) < 105:
                assert not [f for f in await client.quiet(0.02) if f.sid == 1]
        assert bytes(data) == _message(_pattern(100))
        client.close()


async def test_the_client_connection_window_and_frame_size_are_respected() -> None:
    async with _serve() as s:
        client = await H2.open(s.port, {SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, SETTINGS_MAX_FRAME_SIZE: 32_768})
        client.send(client.request(1, "/t.E/Big"), frame(DATA, END_STREAM, 1, _message(b"100000")))
        await client.until(lambda f: f.sid == 1 and f.kind == HEADERS)
        sizes: list[int] = []
        while sum(sizes) < 65_535:  # the connection window every connection starts with
            sizes.append(len((await client.until(lambda f: f.sid == 1 and f.kind == DATA)).payload))
        assert sum(sizes) == 65_535 and max(sizes) == 32_768
        assert not [f for f in await client.quiet(0.2) if f.sid == 1]
        client.send(_window(0, 40_000))
        while sum(sizes) < 100_005:
            f = await client.until(lambda f: f.sid == 1)
            assert f.kind == DATA, f
            sizes.append(len(f.payload))
        trailers = await client.until(lambda f: f.sid == 1)
        assert trailers.kind == HEADERS and trailers.flags & END_STREAM and sum(sizes) == 100_005
        client.close()


async def test_rst_stream_cancels_the_handler_and_other_streams_go_on(h2: H2, served: Served) -> None:
    h2.send(h2.request(1, "/t.E/Hang"), frame(DATA, END_STREAM, 1, _message(b"")))
    await asyncio.wait_for(served.probe.started.wait(), READ_TIMEOUT_S)
    h2.send(frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")))
    await asyncio.wait_for(served.probe.cancelled.wait(), READ_TIMEOUT_S)
    _ok(await h2.call(3, b"still here"), b"still here")
    h2.send(_window(1, 100))  # a WINDOW_UPDATE racing the reset is no error
    _ok(await h2.call(5, b"and here"), b"and here")
    assert not [f for f in h2.pending if f.sid == 1]  # nothing was said on the reset stream
    assert served.registry.get_sample_value("mlp_grpc_requests_total", {
        "service": "svc", "method": "/t.E/Hang", "code": "CANCELLED"}) == 1


async def test_streams_opened_and_cancelled_in_a_flood_close_the_connection(h2: H2) -> None:
    """Rapid Reset (CVE-2023-44487): each HEADERS + RST_STREAM costs the server work and the client nothing."""
    frames = []
    for i in range(grpc_edge.MAX_RESETS):
        sid = 2 * i + 1
        frames += [h2.request(sid), frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big"))]
    h2.send(*frames)
    _ok(await h2.call(2 * grpc_edge.MAX_RESETS + 1, b"tolerated so far"), b"tolerated so far")
    sid = 2 * grpc_edge.MAX_RESETS + 3
    h2.send(h2.request(sid), frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big")))
    goaway = await h2.goaway()
    assert _code(goaway) == ENHANCE_YOUR_CALM


async def test_more_than_256_open_streams_are_refused(h2: H2) -> None:
    sids = [2 * i + 1 for i in range(256)]
    h2.send(*(h2.request(sid) for sid in sids))  # open: their messages never come
    h2.send(h2.request(513))
    refused = await h2.until(lambda f: f.kind == RST_STREAM)
    assert refused.sid == 513 and _code(refused) == REFUSED_STREAM
    h2.send(frame(DATA, END_STREAM, 255, _message(b"one of the 256")))
    _ok(await h2.answer(255), b"one of the 256")  # a slot is free again
    _ok(await h2.call(515, b"in the free slot"), b"in the free slot")
    assert not [f for f in h2.pending if f.kind == RST_STREAM]


async def test_closing_the_edge_sends_goaway_and_finishes_open_calls(served: Served) -> None:
    idle = await H2.open(served.port)
    busy = await H2.open(served.port)
    busy.send(busy.request(1), frame(DATA, 0, 1, _message(b"finished after the GOAWAY")),  # not ended yet
              frame(PING, 0, 0, b"in order"))
    await busy.until(lambda f: f.kind == PING)  # frames are read in order: the stream is open by now
    closing = asyncio.create_task(served.edge.close())
    goaway = await idle.goaway()
    assert _code(goaway) == NO_ERROR and goaway.payload[:4] == b"\0\0\0\0"
    goaway = await busy.until(lambda f: f.kind == GOAWAY)
    assert _code(goaway) == NO_ERROR and int.from_bytes(goaway.payload[:4], "big") == 1
    busy.send(busy.request(3, end_stream=True))  # a new stream after the GOAWAY is refused
    refused = await busy.until(lambda f: f.sid == 3)
    assert refused.kind == RST_STREAM and _code(refused) == REFUSED_STREAM
    busy.send(frame(DATA, END_STREAM, 1, b""))
    _ok(await busy.answer(1), b"finished after the GOAWAY")
    assert not [f for f in await busy.to_eof() if f.sid]  # and then the connection closes
    await asyncio.wait_for(closing, READ_TIMEOUT_S)
    idle.close()
    busy.close()


async def test_a_client_that_does_not_read_is_not_read_either(h2: H2, served: Served) -> None:
    """PINGs whose ACKs are never read (a "ping flood"): the server stops reading instead of buffering."""
    pings = frame(PING, 0, 0, b"flooding") * 10_000  # 170 KB
    written = 0
    with contextlib.suppress(TimeoutError):
        for _ in range(400):  # 68 MB at most
            h2.send(pings)
            written += 10_000
            await asyncio.wait_for(h2.writer.drain(), 0.5)
    conn = next(c for c in served.edge.connections if isinstance(c, grpc_edge.H2Connection))
    assert written < 400 * 10_000, "the server read everything"
    assert conn.transport.get_write_buffer_size() < 2 * 1024 * 1024
    # reading again, every PING is answered and the connection goes on serving
    expected = 13 + 9 + written * 17  # its WINDOW_UPDATE, its SETTINGS ACK, one ACK per PING
    got = 0
    while got < expected:
        chunk = await asyncio.wait_for(h2.reader.read(1 << 20), READ_TIMEOUT_S)
        assert chunk, "closed"
        got += len(chunk)
    assert got == expected and chunk.endswith(frame(PING, ACK, 0, b"flooding"))
    _ok(await h2.call(1, b"after the flood"), b"after the flood")


# -- pieces ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1S", 1.0), (b"100m", 0.1), (b"5M", 300.0), (b"2H", 7200.0), (b"250u", 250e-6), (b"7n", 7e-9),
    (b"0m", 0.0), (b"99999999S", 99_999_999.0), (b"00000001H", 3600.0),
    (b"123456789S", None), (b"S", None), (b"", None), (b"10", None), (b"10s", None), (b"10x", None),
    (b"-1S", None), (b"+1S", None), (b"1.5S", None), (b" 1S", None), (b"1 S", None), (b"\xd9\xa1S", None),
])
def test_parse_timeout(value: bytes, seconds: float | None) -> None:
    assert parse_timeout(value) == (None if seconds is None else pytest.approx(seconds, rel=1e-12))


@pytest.mark.parametrize(("code", "message", "wire"), [
    (grpc.StatusCode.OK, "", None),
    (grpc.StatusCode.NOT_FOUND, "no model 'm' (v2)", "no model 'm' (v2)"),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad é 100% \n", "bad %C3%A9 100%25 %0A"),
    (grpc.StatusCode.INTERNAL, "x" * 5000, "x" * 4096),
    (grpc.StatusCode.UNAUTHENTICATED, "~`!@#$^&*()_+={}[]|\\:;\"'<>,.?/", "~`!@#$^&*()_+={}[]|\\:;\"'<>,.?/"),
])
def test_status_block_round_trips_through_hpack(code: grpc.StatusCode, message: str, wire: str | None) -> None:
    decoded = hpack.Decoder().decode(status_block(code, message), raw=True)
    expected = [(b"grpc-status", str(code.value[0]).encode())]
    if wire is not None:
        expected.append((b"grpc-message", wire.encode()))
    assert [(bytes(n), bytes(v)) for n, v in decoded] == expected


# -- HPACK decoding against the hpack package's encoder ----------------------------------------------------

_STATIC_NAMES = sorted({name for name, _ in HeaderTable.STATIC_TABLE})
_names = st.one_of(st.sampled_from([*_STATIC_NAMES, b"x-a", b"authorization", b"grpc-timeout"]),
                   st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=24).map(str.encode))
_common_values = st.sampled_from([b"", b"POST", b"GET", b"/", b"/t.E/Echo", b"application/grpc", b"trailers",
                                  b"200"])
_large_values = st.builds(lambda n, b: bytes((b,)) * n, st.integers(1_000, 4_200), st.integers(0, 255))
# mostly short values; now and then one that evicts much of the table, or is bigger than it (clears it)
_values = st.integers(0, 15).flatmap(
    lambda k: _large_values if k == 0 else _common_values if k < 5 else st.binary(max_size=80))
_fields = st.tuples(st.sampled_from(["indexed", "never", "plain"]), _names, _values)
_table_sizes = st.one_of(st.sampled_from([0, 64, 100, 150, 200, 256, 300, 512, 4096]), st.integers(0, 4096))
_blocks = st.lists(st.tuples(st.lists(_fields, max_size=10),  # the header list
                             st.booleans(),  # huffman
                             st.one_of(st.just([]), st.lists(_table_sizes, max_size=3))),  # size changes
                   min_size=1, max_size=6)


def _plain(encoder: hpack.Encoder, name: bytes, value: bytes, huffman: bool) -> bytes:
    """A literal *without* indexing (0000), which hpack's encoder never chooses itself; its own helpers."""
    static = [i for i, (n, _) in enumerate(HeaderTable.STATIC_TABLE, 1) if n == name]
    if static:
        return encoder._encode_indexed_literal(static[0], value, INDEX_NONE, huffman)
    return encoder._encode_literal(name, value, INDEX_NONE, huffman)


def _encode(encoder: hpack.Encoder, fields: list[tuple[str, bytes, bytes]], huffman: bool) -> bytes:
    block = encoder.encode([], huffman=huffman)  # table size updates (if any) come first
    for kind, name, value in fields:
        if kind == "plain":
            block += _plain(encoder, name, value, huffman)
        else:
            header = HeaderTuple(name, value) if kind == "indexed" else NeverIndexedHeaderTuple(name, value)
            block += encoder.encode([header], huffman=huffman)
    return block


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=_blocks)
def test_hpack_decoding_matches_the_encoder_block_after_block(
        blocks: list[tuple[list[tuple[str, bytes, bytes]], bool, list[int]]]) -> None:
    note(f"blocks={blocks!r}")  # (this hypothesis prints the arguments themselves blank)
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    for fields, huffman, sizes in blocks:
        for size in sizes:
            if size != encoder.header_table_size:  # hpack forgets a pending change when set to the same size again
                encoder.header_table_size = size
        block = _encode(encoder, fields, huffman)
        headers, total = decoder.decode(block)
        assert headers == [(name, value) for _, name, value in fields]
        assert total == sum(32 + len(n) + len(v) for _, n, v in fields)
        assert decoder.max_size == encoder.header_table_size
        assert list(decoder.dynamic) == [(bytes(n), bytes(v)) for n, v in encoder.header_table.dynamic_entries]


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(_fields, min_size=1, max_size=8), huffman=st.booleans(), cut=st.integers(0, 10_000))
def test_a_truncated_block_is_a_header_error_or_a_shorter_list(
        fields: list[tuple[str, bytes, bytes]], huffman: bool, cut: int) -> None:
    note(f"fields={fields!r} huffman={huffman} cut={cut}")
    block = _encode(hpack.Encoder(), fields, huffman)
    cut %= len(block)
    try:
        headers, _ = HeaderDecoder().decode(block[:cut])
    except HeaderError:
        return
    assert headers == [(name, value) for _, name, value in fields][:len(headers)]
    assert len(headers) < len(fields)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x80", b"\x00", b"\x3f\xe1\x1f", b"\x40\x81"]))
def test_random_bytes_decode_or_raise_header_error_only(data: bytes, prefix: bytes) -> None:
    note(f"block={prefix + data!r}")
    decoder = HeaderDecoder()
    try:
        decoder.decode(prefix + data)
    except HeaderError:
        pass
    assert decoder.size == sum(32 + len(n) + len(v) for n, v in decoder.dynamic) <= decoder.max_size <= 4096


def test_hpack_decoder_edge_cases() -> None:
    decoder = HeaderDecoder()
    assert decoder.decode(b"") == ([], 0)
    assert decoder.decode(b"\x82\x86\x84") == ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
                                               3 * 32 + 7 + 3 + 7 + 4 + 5 + 1)
    for bad in (b"\x80",  # index 0
                b"\xbe",  # index 62: the dynamic table is empty
                b"\xff\xff\xff\xff\xff\x7f",  # an integer over 2^28
                b"\xff\x80",  # a truncated integer
                b"\x40\x05ab",  # a name shorter than its length
                b"\x40\x81",  # a Huffman name cut
                b"\x40\x81\xff\x00",  # a Huffman string that is all padding (EOS)
                ):
        with pytest.raises(HeaderError):
            HeaderDecoder().decode(bad)
    # the oldest entry goes first: room for three entries of 66 bytes, a fourth pushes out the first
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    encoder.header_table_size = 200
    entries = [(name, name[:1] * 30) for name in (b"aaaa", b"bbbb", b"cccc", b"dddd")]
    for name, value in entries:
        assert decoder.decode(encoder.encode([(name, value)], huffman=False))[0] == [(name, value)]
    assert list(decoder.dynamic) == entries[:0:-1] and decoder.size == 198
    assert decoder.decode(b"\xbe\xbf\xc0")[0] == entries[:0:-1]  # 62, 63, 64: newest first
    with pytest.raises(HeaderError):
        decoder.decode(b"\xc1")  # 65: evicted
    decoder = HeaderDecoder()
    decoder.decode(b"\x20")  # size 0: the table is emptied and nothing is added
    assert decoder.decode(b"\x40\x01a\x01b") == ([(b"a", b"b")], 34) and not decoder.dynamic
