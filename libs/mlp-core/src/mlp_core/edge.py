"""A lean HTTP/1.1 front for hot routes: asyncio protocols (uvloop) and httptools, no ASGI stack.

A service (or the gateway) gives a *router*: ``router(method, path)`` returns ``(handler, route
template)`` for the requests it wants to answer itself, or ``None``. Handlers get the whole request
(body included, bounded) and the connection, and answer through it (``send``, ``problem``,
``exchange`` to forward over a pooled keep-alive connection). Requests the router does not take go
byte for byte to the service's FastAPI app on a private Unix socket (``fallback_uds``), or get a 404
problem when there is none.

Why: through uvicorn + Starlette a small call costs several hundred microseconds of CPU in the
framework alone; here a call costs one parse, a few dict lookups and the socket writes.

HTTP-level limits: request head 64 KiB (431), head within 10 s, a body that pauses 30 s is cut, idle
keep-alive 5 s, ``Expect: 100-continue`` answered (or 413 before the body comes), body over
``max_body_bytes`` 413 (chunked too), upgrades (WebSocket, h2c) and malformed requests 400, pipelined
requests answered in order; all refusals are problem+json.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import grpc
import httptools

from mlp_core.errors import (
    PROBLEM_CONTENT_TYPE,
    BadGateway,
    DeadlineExceeded,
    DomainError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from mlp_core.grpc_edge import GrpcRoutes, H2Connection
from mlp_core.telemetry import HttpMetrics

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0
BODY_IDLE_TIMEOUT_S = 30.0  # longest pause between two parts of a request body
IDLE_TIMEOUT_S = 5.0
UPSTREAM_IDLE_S = 4.0  # below uvicorn's 5 s keep-alive, so a pooled connection is not reused as it closes
_HIGH_WATER = 256 * 1024
#: Upstream answers up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY_BYTES = 256 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
#: Response headers not passed on (framing and connection are ours; ``server``/``date`` too).
DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"server",
                           b"date"})
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"content-length", b"host", b"x-forwarded-for",
                         b"expect"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}

Headers = list[tuple[bytes, bytes]]


class MalformedRequest(DomainError):
    """The request is not valid HTTP/1.1, or asks for something the gateway does not do."""

    status, grpc_code = 400, grpc.StatusCode.INVALID_ARGUMENT
    title, slug = "Bad request", "bad-request"


class HeadTooLarge(DomainError):
    """The request line and headers are over the limit."""

    status, grpc_code = 431, grpc.StatusCode.INVALID_ARGUMENT
    title, slug = "Request header fields too large", "request-header-fields-too-large"


class _Date:
    """The ``Date`` header value, formatted at most once a second."""

    value = b""
    second = -1

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = formatdate(second, usegmt=True).encode()
        return cls.value


def response_head(status: int, headers: Headers, *, length: int | None, close: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    parts += [k + b": " + v + b"\r\n" for k, v in headers]
    parts.append(b"date: " + _Date.now() + b"\r\n")
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    elif status not in NO_BODY_STATUSES and status >= 200:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def problem_bytes(exc: DomainError, path: str, trace_id: str | None, *, close: bool) -> tuple[int, bytes]:
    """``exc`` as a whole problem+json response (status line, headers, body)."""
    body = json.dumps(exc.problem(instance=path, trace_id=trace_id), ensure_ascii=False,
                      separators=(",", ":")).encode()
    headers: Headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode()), (b"cache-control", b"no-store")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return exc.status, response_head(exc.status, headers, length=len(body), close=close) + body


# --------------------------------------------------------------------------------------------- upstream


class UpstreamError(Exception):
    """The upstream connection failed; ``before_answer`` when no byte of the answer had arrived."""

    def __init__(self, kind: str, before_answer: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.before_answer = before_answer


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a service, parsing answers with httptools."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._new_exchange()

    def _new_exchange(self) -> None:
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.status = 0
        self.headers: Headers = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.received = 0
        self.length: int | None = None
        self.chunked = False
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- protocol callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("malformed answer", False))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.complete:
            if self.head.done() and self.length is None and not self.chunked:
                self.on_message_complete()  # an answer delimited by the end of the connection
            else:
                self._fail(UpstreamError("connection closed", self.received == 0))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        for name, value in self.headers:
            if name == b"content-length":
                self.length = int(value) if value.strip().isdigit() else None
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the callback
        self._wake()

    # -- use ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # an idle pooled connection may fail with nobody waiting: no warning
        self._wake()

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    async def read_all(self, timeout_s: float) -> bytes:
        """The whole body (the answer is small and sized)."""
        while not self.complete:
            await self._wait(timeout_s)
        body = b"".join(self.chunks)
        self.chunks.clear()
        return body

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next part of a streamed body; ``None`` at its end."""
        while not self.chunks:
            if self.complete:
                return None
            await self._wait(timeout_s)
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused and self.buffered < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    async def _wait(self, timeout_s: float) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, _expire, self._waiter)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None and not self.complete and not self.chunks:
            raise self.error

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def release(self) -> None:
        """Back to the pool if the answer was read whole and the connection may be kept."""
        if self.closed or not self.complete or self.error is not None or not self.keep_alive:
            self.close()
            return
        self._new_exchange()
        self.idle_since = self.loop.time()
        self.reused = True
        self.pool.idle.append(self)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass
class UpstreamPool:
    """Idle keep-alive connections to one service (TCP ``host:port`` or a Unix socket path)."""

    host: str = ""
    port: int = 0
    uds: str = ""
    idle: list[_UpstreamConnection] = field(default_factory=list)
    authority: bytes = b""
    loop: Any = None  # the running loop, taken on first use

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = (f"{host}:{self.port}" if not self.uds else "localhost").encode()

    @classmethod
    def for_url(cls, base_url: str) -> UpstreamPool:
        """A pool for ``http://host:port`` (the only scheme forwarded to)."""
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {base_url!r}")
        return cls(host=parts.hostname, port=parts.port or 80)

    async def acquire(self, connect_timeout_s: float) -> _UpstreamConnection:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        now = self.loop.time()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < UPSTREAM_IDLE_S:
                return conn
            conn.close()
        factory = lambda: _UpstreamConnection(self)  # noqa: E731
        if self.uds:
            connecting = self.loop.create_unix_connection(factory, self.uds)
        else:
            connecting = self.loop.create_connection(factory, self.host, self.port)
        _transport, conn = await asyncio.wait_for(connecting, connect_timeout_s)
        return conn

    def forget(self, conn: _UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


# --------------------------------------------------------------------------------------------- requests


@dataclass
class Request:
    """One complete request, as the router's handler gets it."""

    method: str = ""
    url: bytes = b""
    headers: Headers = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    body_size: int = 0
    head_size: int = 0
    keep_alive: bool = True
    refused: DomainError | None = None  # refused while reading (413): answered, then the connection closes
    path: str = ""  # percent-decoded
    raw_path: bytes = b""
    query: bytes = b""
    keep: bool = True  # the connection stays open after the answer

    def body_bytes(self) -> bytes:
        return self.body[0] if len(self.body) == 1 else b"".join(self.body)


Handler = Callable[[Request, "Connection"], Awaitable[int]]
#: ``router(method, path)`` → ``(handler, route template for metrics)``, or ``None`` (not ours).
Router = Callable[[str, str], "tuple[Handler, str] | None"]


@dataclass
class EdgeConfig:
    """What an edge serves, and where the rest goes."""

    router: Router
    fallback_uds: str = ""  # the service's own app; empty: requests the router does not take get 404
    service: str = ""  # the ``service`` label of the request metrics
    metrics: HttpMetrics | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    fallback_timeout_s: float = 60.0
    max_connections: int = 10_000  # open client connections; more are closed at once
    #: Told of each request refused while it was read (413), after the answer (e.g. to audit it).
    on_refused: Callable[[Request, DomainError], Awaitable[None]] | None = None
    #: Unary gRPC methods answered on this port too: a connection that opens with the HTTP/2 preface
    #: is served by ``mlp_core.grpc_edge`` (h2c); ``None``: such a connection gets a 400.
    grpc: GrpcRoutes | None = None


class Edge:
    """An HTTP/1.1 server for a router's hot routes."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fallback: UpstreamPool | None = None
        self.connections: set[Connection | H2Connection] = set()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port. ``reuse_port``: other processes
        listen on the same port too (``SO_REUSEPORT``; the kernel spreads connections over them)."""
        self.loop = asyncio.get_running_loop()
        self.fallback = UpstreamPool(uds=self.config.fallback_uds) if self.config.fallback_uds else None
        self.server = await self.loop.create_server(lambda: Connection(self), host, port, backlog=2048,
                                                    reuse_port=reuse_port or None)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close idle client connections and the pooled fallback connections."""
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.shutdown()
            await self.server.wait_closed()
            self.server = None
        if self.fallback is not None:
            self.fallback.close()

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        metrics = self.config.metrics
        if metrics is None:
            return
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                metrics.requests.labels(self.config.service, method, route, str(status)),
                metrics.latency.labels(self.config.service, method, route))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.loop = edge.loop
        assert self.loop is not None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "unknown"
        self.request = Request()
        self.pending: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.receiving = False
        # the connection's first bytes until HTTP/1.1 or HTTP/2 is known; None: known (or no gRPC here)
        self._first: bytes | None = b"" if edge.config.grpc is not None else None

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.edge.connections) >= self.edge.config.max_connections:
            log.warning("edge: %d open connections, the limit; closing a new one", len(self.edge.connections))
            self.closed = True
            transport.close()  # before any byte: the client retries or backs off, no file descriptors run out
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.edge.connections.add(self)
        self._arm(IDLE_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.edge.connections.discard(self)
        self._disarm()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError())

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            assert self.loop is not None
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    async def drain(self) -> None:
        if self._writable is not None and not self._writable.done():
            await self._writable

    def shutdown(self) -> None:
        if self.task is None or self.task.done():
            self._close()

    def _close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        assert self.loop is not None
        self._timer = self.loop.call_later(seconds, self._close)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._first is not None:
            data = self._first + data
            if len(data) < 4 and b"PRI ".startswith(data):
                self._first = data
                return
            self._first = None
            if data.startswith(b"PRI "):  # the HTTP/2 preface: a gRPC client
                self._to_h2(data)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_raw(MalformedRequest("upgrades (WebSocket, h2c) are not supported by the gateway"))
        except httptools.HttpParserError:
            self._refuse_raw(MalformedRequest("malformed HTTP request"))

    def _to_h2(self, data: bytes) -> None:
        """Hand the connection over to the HTTP/2 gRPC protocol."""
        assert self.transport is not None and self.edge.config.grpc is not None
        self._disarm()
        self.edge.connections.discard(self)
        h2 = H2Connection(self.edge.config.grpc, self.transport, self.peer, self.edge.connections.discard)
        self.edge.connections.add(h2)
        self.transport.set_protocol(h2)
        h2.data_received(data)

    def _refuse_raw(self, exc: DomainError) -> None:
        _, data = problem_bytes(exc, "", None, close=True)
        if self.transport is not None and not self.closed:
            self.transport.write(data)
        self._close()

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request()
        self.receiving = True
        self._arm(HEAD_TIMEOUT_S)  # a request has started: its head must arrive whole in time

    def on_url(self, url: bytes) -> None:
        self.request.url += url
        self.request.head_size += len(url)
        if self.request.head_size > MAX_HEAD_BYTES:
            self._refuse_raw(HeadTooLarge("request head too large"))
            raise httptools.HttpParserError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        request.headers.append((name.lower(), value))
        request.head_size += len(name) + len(value) + 4
        if request.head_size > MAX_HEAD_BYTES:
            self._refuse_raw(HeadTooLarge("request head too large"))
            raise httptools.HttpParserError("head too large")

    def on_headers_complete(self) -> None:
        request = self.request
        request.method = self.parser.get_method().decode("ascii", "replace")
        request.keep_alive = self.parser.should_keep_alive()
        limit = self.edge.config.max_body_bytes
        expect = False
        for name, value in request.headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                request.refused = PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if request.refused is not None:
            self._finish(request)  # answered now; the body is not read
            return
        self._arm(BODY_IDLE_TIMEOUT_S)  # the head is in; a body may take long, but must keep coming
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request.refused is not None:
            return
        request.body_size += len(body)
        if request.body_size > 65536:  # small bodies arrive with the head; only long uploads re-arm
            self._arm(BODY_IDLE_TIMEOUT_S)
        if request.body_size > self.edge.config.max_body_bytes:
            limit = self.edge.config.max_body_bytes
            request.refused = PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            request.body.clear()
            self._finish(request)
            return
        request.body.append(body)

    def on_message_complete(self) -> None:
        if self.request.refused is None:
            self._finish(self.request)

    def _finish(self, request: Request) -> None:
        self.receiving = False
        self._disarm()
        self.pending.append(request)
        if len(self.pending) > 8 and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.task is None:
            assert self.loop is not None
            self.task = self.loop.create_task(self._serve())

    # -- answering ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closed:
                request = self.pending.popleft()
                keep = await self._answer(request)
                if not keep:
                    self._close()
                    return
                if self._reading_paused and len(self.pending) < 4 and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
        except (ConnectionError, asyncio.CancelledError):
            self._close()
        except Exception:  # never a traceback to the client; the connection is dropped
            log.exception("edge: unexpected failure while answering")
            self._close()
        finally:
            self.task = None
            if not self.closed and not self.receiving:
                self._arm(IDLE_TIMEOUT_S)

    def send(self, data: bytes) -> None:
        """Write bytes of the answer (a whole response, or the parts of a streamed one)."""
        if self.transport is None or self.closed:
            raise ConnectionResetError()
        self.transport.write(data)

    async def _answer(self, request: Request) -> bool:
        """Answer one request; ``False`` when the connection must close afterwards."""
        started = time.perf_counter()
        raw_path, _, query = request.url.partition(b"?")
        path = unquote(raw_path.decode("latin-1")) if b"%" in raw_path else raw_path.decode("latin-1")
        request.path, request.raw_path, request.query = path, raw_path, query
        request.keep = request.keep_alive and request.refused is None
        route = self.edge.config.router(request.method, path)
        if request.refused is not None:  # refused while reading (413): no handler sees it
            status = self.problem(request.refused, path, None, keep=False)
            if route is not None:
                self.edge.observe(request.method, route[1], status, started)
            if self.edge.config.on_refused is not None:
                await self.edge.config.on_refused(request, request.refused)
            return False
        if route is None:
            if self.edge.fallback is None:
                self.problem(NotFound(f"no route for {request.method} {path}"), path, None, request.keep)
                return request.keep and not self.closed
            return await self._pass_to_app(request, request.keep)
        handler, template = route
        status = await handler(request, self)
        self.edge.observe(request.method, template, status, started)
        return request.keep and not self.closed

    async def _pass_to_app(self, request: Request, keep: bool) -> bool:
        """The gateway's own routes: the request as it came, to the FastAPI app on the Unix socket."""
        pool = self.edge.fallback
        assert pool is not None
        head = [b"%s %s HTTP/1.1\r\nhost: gateway\r\n" % (request.method.encode(), request.url)]
        host = b""
        for name, value in request.headers:
            if name == b"host":
                host = value
            elif name not in _HOP_BY_HOP:
                head.append(name + b": " + value + b"\r\n")
        if host:
            head[0] = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), request.url, host)
        head.append(b"x-forwarded-for: " + self.peer.encode() + b"\r\n")
        body = b"".join(request.body)
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        path = request.url.partition(b"?")[0].decode("latin-1")
        await self.exchange(pool, b"".join(head) + body, request.method, "app", path, None,
                            self.edge.config.fallback_timeout_s, keep)
        return keep and not self.closed

    async def exchange(self, pool: UpstreamPool, data: bytes, method: str, service: str, path: str,
                       trace_id: str | None, timeout_s: float, keep: bool, *,
                       rewrite: Callable[[str, int], DomainError] | None = None) -> int:
        """Send ``data`` (a whole HTTP/1.1 request) upstream and relay the answer; returns the status.

        Failures before the answer become 502/503/504 problems; ``rewrite(service, status)`` turns an
        upstream 5xx into a problem of ours (no upstream internals leak)."""
        conn: _UpstreamConnection | None = None
        for attempt in (0, 1):
            try:
                conn = await pool.acquire(min(3.0, timeout_s))
            except (OSError, TimeoutError) as exc:
                return self._problem(Unavailable(f"the {service} service is not reachable; retry later"),
                                     path, trace_id, keep, exc)
            reused = conn.reused
            try:
                conn.send(data)
                await _await_head(conn, timeout_s)
                break
            except UpstreamError as exc:
                conn.close()
                if reused and exc.before_answer and attempt == 0:
                    continue  # a kept-alive connection the service had just closed: one fresh try
                return self._problem(BadGateway(f"the {service} service sent an unusable answer"),
                                     path, trace_id, keep, exc)
            except TimeoutError as exc:
                conn.close()
                return self._problem(DeadlineExceeded(
                    f"the {service} service did not answer within {timeout_s:g} s"), path, trace_id, keep, exc)
            except BaseException:
                conn.close()
                raise
        assert conn is not None
        try:
            return await self._relay(conn, method, service, path, trace_id, timeout_s, keep, rewrite)
        finally:
            conn.release() if conn.complete else conn.close()

    def problem(self, exc: DomainError, path: str, trace_id: str | None, keep: bool) -> int:
        """Answer with ``exc`` as problem+json; returns the status."""
        status, data = problem_bytes(exc, path, trace_id, close=not keep)
        self.send(data)
        return status

    def _problem(self, exc: DomainError, path: str, trace_id: str | None, keep: bool,
                 cause: BaseException) -> int:
        log.warning("edge: %s (%s)", exc.detail, type(cause).__name__)
        return self.problem(exc, path, trace_id, keep)

    async def _relay(self, conn: _UpstreamConnection, method: str, service: str, path: str,
                     trace_id: str | None, timeout_s: float, keep: bool,
                     rewrite: Callable[[str, int], DomainError] | None) -> int:
        status = conn.status
        if rewrite is not None and status >= 500:
            if conn.length is not None and conn.length <= SMALL_BODY_BYTES:
                try:
                    await conn.read_all(timeout_s)
                except (UpstreamError, TimeoutError):
                    conn.close()
            else:
                conn.close()
            return self._problem(rewrite(service, status), path, trace_id, keep,
                                 RuntimeError(f"HTTP {status}"))
        headers = [(k, v) for k, v in conn.headers if k not in DROP_RESPONSE]
        close = not keep
        if method == "HEAD" or status in NO_BODY_STATUSES or status < 200:
            if status in NO_BODY_STATUSES:
                self.send(response_head(status, headers, length=None, close=close))
            else:
                self.send(response_head(status, headers, length=conn.length or 0, close=close))
            if method == "HEAD" and not conn.complete:
                conn.close()
            return status
        if conn.length is not None and conn.length <= SMALL_BODY_BYTES:
            try:
                body = await conn.read_all(timeout_s)
            except (UpstreamError, TimeoutError) as exc:
                conn.close()
                return self._problem(BadGateway(f"the {service} service sent an unusable answer"),
                                     path, trace_id, keep, exc)
            self.send(response_head(status, headers, length=len(body), close=close) + body)
            return status
        # Large or unsized: stream, with backpressure both ways.
        sized = conn.length is not None
        self.send(response_head(status, headers, length=conn.length, close=close))
        try:
            while True:
                chunk = await conn.next_chunk(timeout_s)
                if chunk is None:
                    break
                if not chunk:
                    continue
                self.send(chunk if sized else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await self.drain()
            if not sized:
                self.send(b"0\r\n\r\n")
        except (UpstreamError, TimeoutError):
            conn.close()
            self._close()  # the head is out: the only honest signal left is a cut connection
        return status


async def _await_head(conn: _UpstreamConnection, timeout_s: float) -> None:
    if conn.head.done():
        conn.head.result()
        return
    timer = conn.loop.call_later(timeout_s, _expire, conn.head)
    try:
        await conn.head
    finally:
        timer.cancel()
