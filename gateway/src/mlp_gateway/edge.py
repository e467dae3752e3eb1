"""The gateway's public HTTP/1.1 edge: the forwarding hot path without an ASGI stack.

Every public REST request arrives here, on asyncio protocols (uvloop) with httptools parsing:

* ``/api/v1/<service>/...`` and ``/v2...`` (the routes ``ProxyApp`` forwards) are checked by the
  same ``GatewayGuard`` steps as before (transport, token, DPoP, scope, rate limit, body limit,
  audit) and forwarded over pooled keep-alive HTTP/1.1 connections to the owning service.
* everything else (``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/openapi.json``, redirects,
  405s, the gateway's own routes) is passed byte for byte to the gateway's FastAPI app, which
  listens on a private Unix socket and applies the full guard itself.

Why: through uvicorn + Starlette + aiohttp the gateway spent about 0.9 ms of CPU per forwarded
call; on a small machine, at concurrency 16, that CPU is queueing latency for every caller.
Here one call costs one parse, a few dict lookups and two socket writes.

Limits: request head 64 KiB (431), body ``max_body_bytes`` (413, also for chunked bodies),
head read 10 s and idle keep-alive 5 s (then the connection is closed), per-route upstream
timeouts (504), unreachable upstream (503), broken upstream answer (502). Upgrades (WebSocket,
h2c) are refused. Pipelined requests are answered in order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import grpc
import httptools

from mlp_core.auth import Principal
from mlp_core.errors import (
    PROBLEM_CONTENT_TYPE,
    BadGateway,
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    PayloadTooLarge,
    Unavailable,
)
from mlp_core.http import HttpMetrics
from mlp_gateway.exchange import TokenExchanger
from mlp_gateway.guard import REFUSED_STATUSES, GatewayGuard
from mlp_gateway.policy import MUTATING_METHODS, required_scope
from mlp_gateway.proxy import (
    _DROP_REQUEST,
    _DROP_REQUEST_PREFIXES,
    _DROP_RESPONSE,
    _NO_BODY_STATUSES,
    _UNFORWARDABLE,
    METHODS,
    SMALL_BODY_BYTES,
    _upstream_failure,
)

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0
BODY_IDLE_TIMEOUT_S = 30.0  # longest pause between two parts of a request body
IDLE_TIMEOUT_S = 5.0
UPSTREAM_IDLE_S = 4.0  # below uvicorn's 5 s keep-alive, so a pooled connection is not reused as it closes
_HIGH_WATER = 256 * 1024
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"content-length", b"host", b"x-forwarded-for",
                         b"expect"})
_TRACE_PARENT = b"traceparent"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}

Headers = list[tuple[bytes, bytes]]
_DROP_FORWARDED = _DROP_REQUEST | {b"expect"}


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


def _head(status: int, headers: Headers, *, length: int | None, close: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    parts += [k + b": " + v + b"\r\n" for k, v in headers]
    parts.append(b"date: " + _Date.now() + b"\r\n")
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    elif status not in _NO_BODY_STATUSES and status >= 200:
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
    return exc.status, _head(exc.status, headers, length=len(body), close=close) + body


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

    loop: asyncio.AbstractEventLoop
    host: str = ""
    port: int = 0
    uds: str = ""
    idle: list[_UpstreamConnection] = field(default_factory=list)
    authority: bytes = b""

    def __post_init__(self) -> None:
        self.authority = (f"{self.host}:{self.port}" if not self.uds else "localhost").encode()

    async def acquire(self, connect_timeout_s: float) -> _UpstreamConnection:
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
class _Request:
    method: str = ""
    url: bytes = b""
    headers: Headers = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    body_size: int = 0
    head_size: int = 0
    keep_alive: bool = True
    refused: DomainError | None = None  # refused while reading (413): answered, then the connection closes


@dataclass
class EdgeConfig:
    """What the edge needs from the gateway."""

    guard: GatewayGuard
    upstreams: dict[str, str]  # service -> base URL (http://host:port)
    fallback_uds: str  # the gateway's own FastAPI app
    timeout_for: Callable[[str], float]
    metrics: HttpMetrics | None = None
    exchanger: TokenExchanger | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    span: Callable[[str, Headers], Any] | None = None  # tracing hook when an exporter is configured


class Edge:
    """The public HTTP server of the gateway."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pools: dict[str, UpstreamPool] = {}
        self.fallback: UpstreamPool | None = None
        self.connections: set[_ClientConnection] = set()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self.loop = asyncio.get_running_loop()
        for service, base in self.config.upstreams.items():
            scheme, _, rest = base.partition("://")
            if scheme != "http":
                raise ValueError(f"upstream of {service} must be http://host:port, not {base!r}")
            hostport = rest.split("/", 1)[0]
            h, _, p = hostport.rpartition(":")
            self.pools[service] = UpstreamPool(self.loop, host=h.strip("[]"), port=int(p or 80))
        self.fallback = UpstreamPool(self.loop, uds=self.config.fallback_uds)
        self.server = await self.loop.create_server(lambda: _ClientConnection(self), host, port, backlog=2048)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close idle client connections and pooled upstream connections."""
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.shutdown()
            await self.server.wait_closed()
            self.server = None
        for pool in self.pools.values():
            pool.close()
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
                metrics.requests.labels("gateway", method, route, str(status)),
                metrics.latency.labels("gateway", method, route))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)


def _route(method: str, path: str) -> tuple[str, str] | None:
    """(service, route template) for the forwarded routes; ``None`` for the gateway's own routes."""
    if method not in METHODS:
        return None
    if path.startswith("/api/v1/"):
        service, slash, _ = path[8:].partition("/")
        return (service, "/api/v1/{service}/{path:path}") if service and slash else None
    if path.startswith("/v2/"):
        return "serving", "/v2/{path:path}"
    if path == "/v2" and method in ("GET", "HEAD"):
        return "serving", "/v2"
    return None


class _ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.loop = edge.loop
        assert self.loop is not None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "unknown"
        self.request = _Request()
        self.pending: collections.deque[_Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.receiving = False

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_raw(MalformedRequest("upgrades (WebSocket, h2c) are not supported by the gateway"))
        except httptools.HttpParserError:
            self._refuse_raw(MalformedRequest("malformed HTTP request"))

    def _refuse_raw(self, exc: DomainError) -> None:
        _, data = problem_bytes(exc, "", None, close=True)
        if self.transport is not None and not self.closed:
            self.transport.write(data)
        self._close()

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = _Request()
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

    def _finish(self, request: _Request) -> None:
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

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise ConnectionResetError()
        self.transport.write(data)

    async def _answer(self, request: _Request) -> bool:
        """Answer one request; ``False`` when the connection must close afterwards."""
        started = time.perf_counter()
        raw_target = request.url
        raw_path, _, query = raw_target.partition(b"?")
        path = unquote(raw_path.decode("latin-1")) if b"%" in raw_path else raw_path.decode("latin-1")
        keep = request.keep_alive and request.refused is None
        route = _route(request.method, path)
        guard = self.edge.config.guard
        if route is None or route[0] not in self.edge.pools or _is_public(path, guard.public_paths):
            if request.refused is not None:
                status, data = problem_bytes(request.refused, path, None, close=True)
                self._write(data)
                return False
            return await self._pass_to_app(request, keep)
        service, template = route
        scope: dict[str, Any] = {
            "type": "http", "method": request.method, "path": path, "raw_path": raw_path,
            "query_string": query, "headers": request.headers, "client": (self.peer, 0), "scheme": "http"}
        trace_parent = _trace_parent(request.headers)
        if trace_parent is None:  # none, or not W3C: a fresh trace, so audit and service logs share an id
            trace_parent = b"00-%s-%s-01" % (os.urandom(16).hex().encode(), os.urandom(8).hex().encode())
            request.headers = [(k, v) for k, v in request.headers if k != _TRACE_PARENT]
            request.headers.append((_TRACE_PARENT, trace_parent))
        trace_id = trace_parent[3:35].decode()
        principal: Principal | None = None
        try:
            if request.refused is not None:
                raise request.refused
            guard._check_transport(scope)
            principal = await guard._authenticate(scope)
            needed = required_scope(request.method, path)
            if needed:
                principal.require(needed)
            await guard._rate_limit(principal)
        except DomainError as exc:
            status, data = problem_bytes(exc, path, trace_id, close=not keep)
            self._write(data)
            self.edge.observe(request.method, template, status, started)
            await guard._audit(scope, principal, exc.status, "refused", exc.detail)
            return keep
        span = self.edge.config.span
        if span is not None:
            with span(f"{request.method} {template}", request.headers):
                status = await self._forward(service, request, scope, principal, path, trace_id, keep)
        else:
            status = await self._forward(service, request, scope, principal, path, trace_id, keep)
        self.edge.observe(request.method, template, status, started)
        if request.method in MUTATING_METHODS or status in REFUSED_STATUSES:
            outcome = "ok" if status < 400 else "refused" if status in REFUSED_STATUSES else "failed"
            await guard._audit(scope, principal, status, outcome, "")
        return keep and not self.closed

    async def _forward(self, service: str, request: _Request, scope: dict[str, Any], principal: Principal,
                       path: str, trace_id: str, keep: bool) -> int:
        config = self.edge.config
        try:
            target = request.url.decode("ascii")
        except UnicodeDecodeError:
            target = ""
        try:
            if _UNFORWARDABLE.search(target) or not target.startswith("/"):
                raise InvalidArgument("the request path or query cannot be forwarded; percent-encode it")
            token = principal.token
            if config.exchanger is not None:
                token = await config.exchanger.exchange(token, service)
        except DomainError as exc:
            status, data = problem_bytes(exc, path, trace_id, close=not keep)
            self._write(data)
            return status
        pool = self.edge.pools[service]
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), target.encode(), pool.authority)]
        for name, value in request.headers:
            if name not in _DROP_FORWARDED and not name.startswith(_DROP_REQUEST_PREFIXES):
                head.append(name + b": " + value + b"\r\n")
        head.append(b"authorization: Bearer " + token.encode() + b"\r\n")
        head.append(b"x-forwarded-for: " + self.peer.encode() + b"\r\n")
        body = b"".join(request.body)
        if body or request.method not in ("GET", "HEAD", "DELETE"):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        timeout = config.timeout_for(path)
        return await self._exchange(pool, b"".join(head) + body, request.method, service, path, trace_id,
                                    timeout, keep, rewrite_5xx=True)

    async def _pass_to_app(self, request: _Request, keep: bool) -> bool:
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
        await self._exchange(pool, b"".join(head) + body, request.method, "gateway", path, None,
                             self.edge.config.timeout_for(path), keep, rewrite_5xx=False)
        return keep and not self.closed

    async def _exchange(self, pool: UpstreamPool, data: bytes, method: str, service: str, path: str,
                        trace_id: str | None, timeout_s: float, keep: bool, *, rewrite_5xx: bool) -> int:
        """Send ``data`` upstream and relay the answer; failures before the answer become problems."""
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
            return await self._relay(conn, method, service, path, trace_id, timeout_s, keep, rewrite_5xx)
        finally:
            conn.release() if conn.complete else conn.close()

    def _problem(self, exc: DomainError, path: str, trace_id: str | None, keep: bool,
                 cause: BaseException) -> int:
        log.warning("edge: %s (%s)", exc.detail, type(cause).__name__)
        status, data = problem_bytes(exc, path, trace_id, close=not keep)
        self._write(data)
        return status

    async def _relay(self, conn: _UpstreamConnection, method: str, service: str, path: str,
                     trace_id: str | None, timeout_s: float, keep: bool, rewrite_5xx: bool) -> int:
        status = conn.status
        if rewrite_5xx and status >= 500:
            if conn.length is not None and conn.length <= SMALL_BODY_BYTES:
                try:
                    await conn.read_all(timeout_s)
                except (UpstreamError, TimeoutError):
                    conn.close()
            else:
                conn.close()
            return self._problem(_upstream_failure(service, status), path, trace_id, keep,
                                 RuntimeError(f"HTTP {status}"))
        headers = [(k, v) for k, v in conn.headers if k not in _DROP_RESPONSE]
        close = not keep
        if method == "HEAD" or status in _NO_BODY_STATUSES or status < 200:
            if status in _NO_BODY_STATUSES:
                self._write(_head(status, headers, length=None, close=close))
            else:
                self._write(_head(status, headers, length=conn.length or 0, close=close))
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
            self._write(_head(status, headers, length=len(body), close=close) + body)
            return status
        # Large or unsized: stream, with backpressure both ways.
        sized = conn.length is not None
        self._write(_head(status, headers, length=conn.length, close=close))
        try:
            while True:
                chunk = await conn.next_chunk(timeout_s)
                if chunk is None:
                    break
                if not chunk:
                    continue
                self._write(chunk if sized else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await self.drain()
            if not sized:
                self._write(b"0\r\n\r\n")
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


def _trace_parent(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == _TRACE_PARENT:
            parts = value.split(b"-")
            if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                return value
            return None
    return None


def _is_public(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)

