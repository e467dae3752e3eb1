"""The gateway's hot path on the shared HTTP/1.1 edge (``mlp_core.edge``).

``/api/v1/<service>/...`` and ``/v2...`` (the routes ``ProxyApp`` forwards) are checked with the same
``GatewayGuard`` steps as in the app (transport, token, DPoP, scope, rate limit, body limit, audit)
and forwarded over pooled keep-alive HTTP/1.1 connections to the owning service. Everything else
(``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/openapi.json``, redirects, 405s, the gateway's
own routes) goes to the gateway's FastAPI app on its private Unix socket, which applies the full
guard itself.

Why: through uvicorn + Starlette + aiohttp the gateway spent about 0.9 ms of CPU per forwarded call;
on a small machine at concurrency 16 that CPU is queueing latency for every caller. Here one call
costs one parse, a few dict lookups and two socket writes (about 0.14 ms).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

from mlp_core.auth import Principal
from mlp_core.auth.rest import is_public_path
from mlp_core.edge import Connection, Handler, Headers, Request, UpstreamPool
from mlp_core.errors import DomainError, InvalidArgument
from mlp_core.telemetry import parse_traceparent
from mlp_gateway.exchange import TokenExchanger
from mlp_gateway.guard import REFUSED_STATUSES, GatewayGuard
from mlp_gateway.policy import MUTATING_METHODS, required_scope
from mlp_gateway.proxy import (
    _DROP_REQUEST,
    _DROP_REQUEST_PREFIXES,
    _UNFORWARDABLE,
    METHODS,
    _upstream_failure,
)

_DROP_FORWARDED = _DROP_REQUEST | {b"expect"}
_TRACE_PARENT = b"traceparent"
_API_TEMPLATE = "/api/v1/{service}/{path:path}"


class GatewayRoutes:
    """The edge router of the gateway: which calls it forwards itself, and how."""

    def __init__(self, guard: GatewayGuard, upstreams: dict[str, str], timeout_for: Callable[[str], float], *,
                 exchanger: TokenExchanger | None = None,
                 span: Callable[[str, Headers], Any] | None = None,
                 route_upstreams: dict[str, str] | None = None) -> None:
        self.guard = guard
        self.pools = {service: UpstreamPool.for_url(base) for service, base in upstreams.items()}
        #: (compiled path pattern, pool): routes served by another address of a service (first match wins)
        self.route_pools = [(re.compile(pattern), UpstreamPool.for_url(base))
                            for pattern, base in (route_upstreams or {}).items() if base]
        self.timeout_for = timeout_for
        self.exchanger = exchanger
        self.span = span
        self._handlers: dict[tuple[str, str], Handler] = {}

    def __call__(self, method: str, path: str) -> tuple[Handler, str] | None:
        if method not in METHODS:
            return None
        if path.startswith("/api/v1/"):
            service, slash, _ = path[8:].partition("/")
            if not (service and slash):
                return None
            template = _API_TEMPLATE
        elif path.startswith("/v2/"):
            service, template = "serving", "/v2/{path:path}"
        elif path == "/v2" and method in ("GET", "HEAD"):
            service, template = "serving", "/v2"
        else:
            return None
        if service not in self.pools or is_public_path(path, self.guard.public_paths):
            return None  # an unknown service: the app answers 404, as it always did
        handler = self._handlers.get((service, template))
        if handler is None:
            handler = self._handlers[(service, template)] = functools.partial(self.handle, service, template)
        return handler, template

    async def handle(self, service: str, template: str, request: Request, conn: Connection) -> int:
        """Check, forward, audit; returns the status sent."""
        guard = self.guard
        path = request.path
        scope: dict[str, Any] = {
            "type": "http", "method": request.method, "path": path, "raw_path": request.raw_path,
            "query_string": request.query, "headers": request.headers, "client": (conn.peer, 0), "scheme": "http"}
        trace_parent = _trace_parent(request.headers)
        if trace_parent is None:  # none, or not W3C: a fresh trace, so audit and service logs share an id
            trace_parent = b"00-%s-%s-01" % (os.urandom(16).hex().encode(), os.urandom(8).hex().encode())
            request.headers = [(k, v) for k, v in request.headers if k != _TRACE_PARENT]
            request.headers.append((_TRACE_PARENT, trace_parent))
            scope["headers"] = request.headers
        trace_id = trace_parent[3:35].decode()
        principal: Principal | None = None
        try:
            guard._check_transport(scope)
            principal = await guard._authenticate(scope)
            needed = required_scope(request.method, path)
            if needed:
                principal.require(needed)
            await guard._rate_limit(principal)
        except DomainError as exc:
            status = conn.problem(exc, path, trace_id, request.keep)
            await guard._audit(scope, principal, exc.status, "refused", exc.detail)
            return status
        if self.span is not None:
            with self.span(f"{request.method} {template}", request.headers):
                status = await self._forward(service, request, conn, principal, trace_id)
        else:
            status = await self._forward(service, request, conn, principal, trace_id)
        if request.method in MUTATING_METHODS or status in REFUSED_STATUSES:
            outcome = "ok" if status < 400 else "refused" if status in REFUSED_STATUSES else "failed"
            await guard._audit(scope, principal, status, outcome, "")
        return status

    async def refused(self, request: Request, exc: DomainError) -> None:
        """Audit a call the edge refused while reading it (413): every refused call is audited."""
        scope = {"method": request.method, "path": request.path, "headers": request.headers}
        await self.guard._audit(scope, None, exc.status, "refused", exc.detail)

    def _pool(self, service: str, path: str) -> UpstreamPool:
        for pattern, pool in self.route_pools:
            if pattern.match(path):
                return pool
        return self.pools[service]

    async def _forward(self, service: str, request: Request, conn: Connection, principal: Principal,
                       trace_id: str) -> int:
        path = request.path
        try:
            target = request.url.decode("ascii")
        except UnicodeDecodeError:
            target = ""
        try:
            if _UNFORWARDABLE.search(target) or not target.startswith("/"):
                raise InvalidArgument("the request path or query cannot be forwarded; percent-encode it")
            token = principal.token
            if self.exchanger is not None:
                token = await self.exchanger.exchange(token, service)
        except DomainError as exc:
            return conn.problem(exc, path, trace_id, request.keep)
        pool = self._pool(service, path)
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (request.method.encode(), target.encode(), pool.authority)]
        for name, value in request.headers:
            if name not in _DROP_FORWARDED and not name.startswith(_DROP_REQUEST_PREFIXES):
                head.append(name + b": " + value + b"\r\n")
        head.append(b"authorization: Bearer " + token.encode() + b"\r\n")
        head.append(b"x-forwarded-for: " + conn.peer.encode() + b"\r\n")
        body = request.body_bytes()
        if body or request.method not in ("GET", "HEAD", "DELETE"):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        return await conn.exchange(pool, b"".join(head) + body, request.method, service, path, trace_id,
                                   self.timeout_for(path), request.keep, rewrite=_upstream_failure)

    def close(self) -> None:
        """Close pooled upstream connections."""
        for pool in [*self.pools.values(), *(p for _, p in self.route_pools)]:
            pool.close()


def _trace_parent(headers: Headers) -> bytes | None:
    """The request's ``traceparent`` when it is valid W3C (the rule services apply too)."""
    for name, value in headers:
        if name == _TRACE_PARENT:
            return value if parse_traceparent(value) is not None else None
    return None
