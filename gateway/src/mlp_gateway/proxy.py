"""Forwarding of REST calls to the owning service, with the caller's token and trace context.

The forwarding runs as plain ASGI (``ProxyApp``) in front of FastAPI's router, with a pooled
aiohttp keep-alive client: no request/response models, dependency resolution or streaming
wrappers on the hot path. Small upstream answers (known ``Content-Length`` up to
``SMALL_BODY_BYTES``) are read whole and sent in one message; larger or unsized ones are streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass

import aiohttp
from fastapi import APIRouter, Request, Response
from multidict import CIMultiDict
from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from mlp_core.auth import Principal
from mlp_core.errors import (
    PROBLEM_CONTENT_TYPE,
    BadGateway,
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from mlp_core.telemetry import current_trace_id
from mlp_gateway.exchange import TokenExchanger

log = logging.getLogger(__name__)
#: Hop-by-hop headers (RFC 9110 §7.6.1), credentials we set ourselves, and identity headers that a
#: client must never be able to set for a service (they are stripped, never trusted).
DROP_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "authorization", "dpop", "cookie",
    "x-user-id", "x-user", "x-forwarded-user", "x-remote-user", "x-client-id", "x-tenant", "x-project",
    "x-forwarded-client-cert", "x-ssl-client-cert", "x-client-cert", "x-auth-user", "x-principal",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "forwarded",
    "x-forwarded-email", "x-forwarded-groups", "x-auth-request-user", "x-auth-request-email",
})
DROP_REQUEST_PREFIXES = ("x-mlp-", "x-amzn-oidc-", "x-goog-authenticated-")
DROP_RESPONSE_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                                   "server", "date"})


_DROP_REQUEST = frozenset(h.encode() for h in DROP_REQUEST_HEADERS)
_DROP_REQUEST_PREFIXES = tuple(p.encode() for p in DROP_REQUEST_PREFIXES)
_DROP_RESPONSE = frozenset(h.encode() for h in DROP_RESPONSE_HEADERS)
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
#: Characters that may not appear in a forwarded path or query (controls, space, fragment, non-ASCII).
_UNFORWARDABLE = re.compile(r"[\x00-\x20\x7f#]")
#: Upstream answers up to this size (with a Content-Length) are read whole and sent in one message.
SMALL_BODY_BYTES = 256 * 1024
_STREAM_CHUNK = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})


def forwarded_headers(scope: Scope) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop, credential and identity headers."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())
            if k.lower() not in _DROP_REQUEST and not k.lower().startswith(_DROP_REQUEST_PREFIXES)]


def _with_trace_context(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Put the current trace context (the gateway's span, or the caller's context) on the call."""
    if not trace.get_current_span().get_span_context().is_valid:
        return headers  # nothing of ours: pass the client's headers on as they came
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v) for k, v in headers if k.lower().encode() not in _TRACE_HEADERS] + list(carrier.items())


async def send_problem(scope: Scope, send: Send, exc: DomainError) -> None:
    """``exc`` as an RFC 9457 problem+json response (the same body FastAPI's handlers give)."""
    body = json.dumps(exc.problem(instance=scope.get("path"), trace_id=current_trace_id()),
                      ensure_ascii=False, separators=(",", ":")).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Forwarder:
    """A pooled keep-alive HTTP client per gateway; maps transport failures to 502/503/504 problems."""

    def __init__(self, upstreams: dict[str, str], timeout_s: float, *,
                 route_timeouts_s: dict[str, float] | None = None,
                 exchanger: TokenExchanger | None = None,
                 max_connections: int = 200, keepalive_s: float = 4.0) -> None:
        self.upstreams = upstreams
        self.timeout_s = timeout_s
        self.route_timeouts = sorted((route_timeouts_s or {}).items(), key=lambda kv: -len(kv[0]))
        self.exchanger = exchanger
        self.max_connections = max_connections
        # Below uvicorn's 5 s keep-alive so an idle pooled connection is not reused as the
        # service closes it.
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def timeout_for(self, path: str) -> float:
        """Per-route timeout: the longest configured prefix of ``path``, else the default."""
        for prefix, seconds in self.route_timeouts:
            if path.startswith(prefix):
                return seconds
        return self.timeout_s

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=self.keepalive_s, ttl_dns_cache=300)
            # No decompression: bodies pass through byte for byte with their Content-Encoding.
            # No automatic headers beyond Host: services see the client's own headers.
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"))
        return self._session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            # sock_read bounds the wait for the answer and each read of a streamed body (not the
            # whole download), like a read timeout.
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=None, connect=min(3.0, seconds), sock_read=seconds)
        return timeout

    async def forward(self, service: str, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: send the request to ``service`` unchanged in path and query, and its answer back.

        Refusals and upstream failures before the answer starts leave as problem+json.
        """
        try:
            upstream = await self._send_upstream(service, scope, receive)
        except DomainError as exc:
            await send_problem(scope, send, exc)
            return
        if upstream is None:
            return  # the client went away while sending its body
        await self._relay(service, upstream, scope, receive, send)

    async def _send_upstream(self, service: str, scope: Scope,
                             receive: Receive) -> aiohttp.ClientResponse | None:
        base = self.upstreams.get(service)
        if base is None:
            raise NotFound(f"no service named {service!r}; known: {', '.join(sorted(self.upstreams))}")
        principal = scope.get("state", {}).get("principal")
        if not isinstance(principal, Principal):
            raise Unauthenticated("no authenticated caller")
        token = principal.token
        if self.exchanger is not None:
            token = await self.exchanger.exchange(token, service)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        try:
            target = raw_path.decode("ascii") + ("?" + query.decode("ascii") if query else "")
        except UnicodeDecodeError as exc:
            raise InvalidArgument("the request path or query cannot be forwarded; percent-encode it") from exc
        if _UNFORWARDABLE.search(target) or not target.startswith("/"):
            raise InvalidArgument("the request path or query cannot be forwarded; percent-encode it")
        body = await _read_body(receive)
        if body is None:
            return None
        headers = _with_trace_context(forwarded_headers(scope))
        headers.append(("authorization", f"Bearer {token}"))
        client = scope.get("client")
        headers.append(("x-forwarded-for", client[0] if client else "unknown"))
        method: str = scope["method"]
        timeout = self.timeout_for(scope["path"])
        try:
            # The path as the client sent it (still percent-encoded), so it reaches the service unchanged.
            return await self._client().request(
                method, URL(base + target, encoded=True), headers=CIMultiDict(headers),
                data=body if body or method not in ("GET", "HEAD", "DELETE") else None,
                allow_redirects=False, timeout=self._timeout(timeout))
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"the {service} service is not reachable; retry later") from exc
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is a TimeoutError
            raise DeadlineExceeded(f"the {service} service did not answer within {timeout:g} s") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise BadGateway(f"the {service} service sent an unusable answer") from exc

    async def _relay(self, service: str, upstream: aiohttp.ClientResponse, scope: Scope, receive: Receive,
                     send: Send) -> None:
        service_status = upstream.status
        if service_status >= 500:
            upstream.release()
            await send_problem(scope, send, _upstream_failure(service, service_status))
            return
        headers = [(k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in _DROP_RESPONSE]
        length = upstream.content_length
        if scope["method"] == "HEAD" or service_status in _NO_BODY_STATUSES or service_status < 200:
            upstream.release()
            if length is not None and service_status not in _NO_BODY_STATUSES:
                headers.append((b"content-length", str(length).encode()))
            await send({"type": "http.response.start", "status": service_status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if length is not None and length <= SMALL_BODY_BYTES:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                upstream.close()
                log.warning("reading the answer of %s failed: %s", service, type(exc).__name__)
                await send_problem(scope, send, BadGateway(f"the {service} service sent an unusable answer"))
                return
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": service_status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await _stream(upstream, headers, receive, send)

    async def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.exchanger is not None:
            await self.exchanger.aclose()


async def _read_body(receive: Receive) -> bytes | None:
    """The request body (the guard has already bounded it); ``None`` if the client disconnected."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _stream(upstream: aiohttp.ClientResponse, headers: list[tuple[bytes, bytes]], receive: Receive,
                  send: Send) -> None:
    """Stream a large or unsized answer; stop reading upstream as soon as the client goes away."""
    if upstream.content_length is not None:
        headers.append((b"content-length", str(upstream.content_length).encode()))
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        async for chunk in upstream.content.iter_chunked(_STREAM_CHUNK):
            if gone.is_set():
                upstream.close()
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        upstream.release()


def _upstream_failure(service: str, status: int) -> DomainError:
    """Upstream 5xx answers leave as our own problem (no upstream internals leak)."""
    if status == 503:
        return Unavailable(f"the {service} service is unavailable; retry later")
    if status == 504:
        return DeadlineExceeded(f"the {service} service timed out")
    return BadGateway(f"the {service} service failed to handle the request (HTTP {status})")


@dataclass(frozen=True)
class _RouteLabel:
    """What ``MetricsMiddleware`` reads from ``scope["route"]``: the route template."""

    path: str


_API_ROUTE = _RouteLabel("/api/v1/{service}/{path:path}")
_V2_ROUTE = _RouteLabel("/v2/{path:path}")
_V2_ROOT = _RouteLabel("/v2")


class ProxyApp:
    """Plain ASGI forwarding of ``/api/v1/<service>/...`` and ``/v2...`` in front of FastAPI's router.

    It matches exactly what ``build_proxy_router`` routes (same templates and methods); anything else
    (``/healthz``, ``/openapi.json``, a trailing-slash redirect, a 405) goes on to ``app``.
    """

    def __init__(self, app: ASGIApp, forwarder: Forwarder) -> None:
        self.app = app
        self.forwarder = forwarder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in METHODS:
            path: str = scope["path"]
            if path.startswith("/api/v1/"):
                service, slash, _ = path[8:].partition("/")
                if service and slash:
                    scope["route"] = _API_ROUTE
                    await self.forwarder.forward(service, scope, receive, send)
                    return
            elif path.startswith("/v2/"):
                scope["route"] = _V2_ROUTE
                await self.forwarder.forward("serving", scope, receive, send)
                return
            elif path == "/v2" and scope["method"] in ("GET", "HEAD"):
                scope["route"] = _V2_ROOT
                await self.forwarder.forward("serving", scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Forwarded(Response):
    """A route's answer that is the forwarded call itself (used when a request reaches the router)."""

    def __init__(self, forwarder: Forwarder, service: str) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forwarder.forward(self.service, scope, receive, send)


def build_proxy_router(forwarder: Forwarder) -> APIRouter:
    """``/api/v1/<service>/...`` to the service; ``/v2/...`` (Open Inference Protocol) to serving.

    ``ProxyApp`` answers these routes before FastAPI's routing; the routes stay for the trailing-slash
    redirects and 405s that the router derives from them, and for apps built without ``ProxyApp``.
    """
    router = APIRouter()
    methods = sorted(METHODS)

    @router.api_route("/api/v1/{service}/{path:path}", methods=methods, include_in_schema=False)
    async def platform_api(service: str, path: str, request: Request) -> Response:
        return _Forwarded(forwarder, service)

    @router.api_route("/v2/{path:path}", methods=methods, include_in_schema=False)
    async def inference(path: str, request: Request) -> Response:
        return _Forwarded(forwarder, "serving")

    @router.api_route("/v2", methods=["GET", "HEAD"], include_in_schema=False)
    async def inference_root(request: Request) -> Response:
        return _Forwarded(forwarder, "serving")

    return router
