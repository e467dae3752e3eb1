"""What forwarding shares, and the app's side of the forwarded routes.

Forwarding itself is the edge's (``mlp_gateway.edge``): every ``/api/v1/<service>/...`` and ``/v2...``
call of a known service is checked and forwarded there, before the FastAPI app. What reaches the app on
those templates names no known service; ``ProxyApp`` answers it with a 404 problem, ahead of FastAPI's
router, whose template routes stay for the trailing-slash redirects and 405s they derive.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlp_core.errors import BadGateway, DeadlineExceeded, DomainError, NotFound, Unavailable
from mlp_core.http import send_problem
from mlp_core.telemetry import current_trace_id

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

_DROP_REQUEST = frozenset(h.encode() for h in DROP_REQUEST_HEADERS)
_DROP_REQUEST_PREFIXES = tuple(p.encode() for p in DROP_REQUEST_PREFIXES)
#: Characters that may not appear in a forwarded path or query (controls, space, fragment, non-ASCII).
_UNFORWARDABLE = re.compile(r"[\x00-\x20\x7f#]")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})


class RouteTimeouts:
    """Upstream timeout per path: the longest configured prefix, else the default."""

    def __init__(self, default_s: float, per_prefix_s: dict[str, float] | None = None) -> None:
        self.default_s = default_s
        self.per_prefix = sorted((per_prefix_s or {}).items(), key=lambda kv: -len(kv[0]))

    def __call__(self, path: str) -> float:
        for prefix, seconds in self.per_prefix:
            if path.startswith(prefix):
                return seconds
        return self.default_s


def _upstream_failure(service: str, status: int) -> DomainError:
    """Upstream 5xx answers leave as our own problem (no upstream internals leak)."""
    if status == 503:
        return Unavailable(f"the {service} service is unavailable; retry later")
    if status == 504:
        return DeadlineExceeded(f"the {service} service timed out")
    return BadGateway(f"the {service} service failed to handle the request (HTTP {status})")


def _unknown_service(path: str, known: tuple[str, ...]) -> NotFound:
    service = path.removeprefix("/api/v1/").partition("/")[0] if path.startswith("/api/v1/") else "serving"
    return NotFound(f"no service named {service!r}; known: {', '.join(known)}")


class ProxyApp:
    """The forwarded templates as they reach the app: no known service behind them, so 404 problems.

    It matches exactly what ``build_proxy_router`` routes (same templates and methods); anything else
    (``/healthz``, ``/openapi.json``, a trailing-slash redirect, a 405) goes on to ``app``.
    """

    def __init__(self, app: ASGIApp, known: tuple[str, ...]) -> None:
        self.app = app
        self.known = known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in METHODS:
            path: str = scope["path"]
            service, slash, _ = path[8:].partition("/") if path.startswith("/api/v1/") else ("", "", "")
            if (service and slash) or path.startswith("/v2/") or (path == "/v2" and scope["method"] in ("GET",
                                                                                                        "HEAD")):
                await send_problem(scope, send, _unknown_service(path, self.known), trace_id=current_trace_id())
                return
        await self.app(scope, receive, send)


def build_proxy_router(known: tuple[str, ...]) -> APIRouter:
    """The forwarded templates in FastAPI's router, for the redirects and 405s it derives from them.

    ``ProxyApp`` answers these paths before the router; the routes answer 404 when reached without it.
    """
    router = APIRouter()
    methods = sorted(METHODS)

    @router.api_route("/api/v1/{service}/{path:path}", methods=methods, include_in_schema=False)
    async def platform_api(service: str, path: str, request: Request) -> Response:
        raise _unknown_service(request.url.path, known)

    @router.api_route("/v2/{path:path}", methods=methods, include_in_schema=False)
    async def inference(path: str, request: Request) -> Response:
        raise _unknown_service(request.url.path, known)

    @router.api_route("/v2", methods=["GET", "HEAD"], include_in_schema=False)
    async def inference_root(request: Request) -> Response:
        raise _unknown_service(request.url.path, known)

    return router
