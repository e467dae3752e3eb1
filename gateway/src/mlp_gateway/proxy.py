"""Forwarding of REST calls to the owning service, with the caller's token and trace context."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from mlp_core.auth import request_principal
from mlp_core.errors import BadGateway, DeadlineExceeded, DomainError, InvalidArgument, NotFound, Unavailable
from mlp_gateway.exchange import TokenExchanger

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


def forwarded_headers(request: Request) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop, credential and identity headers."""
    return [(k, v) for k, v in request.headers.items()
            if k.lower() not in DROP_REQUEST_HEADERS and not k.lower().startswith(DROP_REQUEST_PREFIXES)]


class Forwarder:
    """A pooled HTTP client per gateway; maps transport failures to 502/503/504 problems."""

    def __init__(self, upstreams: dict[str, str], timeout_s: float, *,
                 route_timeouts_s: dict[str, float] | None = None,
                 exchanger: TokenExchanger | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.upstreams = upstreams
        self.timeout_s = timeout_s
        self.route_timeouts = sorted((route_timeouts_s or {}).items(), key=lambda kv: -len(kv[0]))
        self.exchanger = exchanger
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=30)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=3.0), limits=limits,
                                        transport=transport, follow_redirects=False)

    def timeout_for(self, path: str) -> float:
        """Per-route timeout: the longest configured prefix of ``path``, else the default."""
        for prefix, seconds in self.route_timeouts:
            if path.startswith(prefix):
                return seconds
        return self.timeout_s

    async def forward(self, service: str, request: Request) -> StreamingResponse:
        """Send ``request`` to ``service`` unchanged in path and query; stream the answer back."""
        base = self.upstreams.get(service)
        if base is None:
            raise NotFound(f"no service named {service!r}; known: {', '.join(sorted(self.upstreams))}")
        principal = request_principal(request)
        token = principal.token
        if self.exchanger is not None:
            token = await self.exchanger.exchange(token, service)
        headers = forwarded_headers(request)
        headers.append(("authorization", f"Bearer {token}"))
        headers.append(("x-forwarded-for", request.client.host if request.client else "unknown"))
        timeout = self.timeout_for(request.url.path)
        try:
            # The path as the client sent it (still percent-encoded), so it reaches the service unchanged.
            raw_path = request.scope.get("raw_path") or request.url.path.encode()
            url = httpx.URL(base + raw_path.decode("ascii"), query=request.url.query.encode())
            upstream_req = self.client.build_request(request.method, url, headers=headers,
                                                     content=request.stream(),
                                                     timeout=httpx.Timeout(timeout, connect=min(3.0, timeout)))
        except (httpx.InvalidURL, UnicodeDecodeError) as exc:
            raise InvalidArgument("the request path or query cannot be forwarded; percent-encode it") from exc
        try:
            upstream = await self.client.send(upstream_req, stream=True)
        except httpx.ConnectError as exc:
            raise Unavailable(f"the {service} service is not reachable; retry later") from exc
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"the {service} service did not answer within {timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise BadGateway(f"the {service} service sent an unusable answer") from exc
        if upstream.status_code >= 500:
            await upstream.aclose()
            raise _upstream_failure(service, upstream.status_code)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE_HEADERS}
        return StreamingResponse(_body(upstream), status_code=upstream.status_code, headers=out_headers,
                                 background=BackgroundTask(upstream.aclose))

    async def close(self) -> None:
        """Close pooled connections."""
        await self.client.aclose()
        if self.exchanger is not None:
            await self.exchanger.aclose()


def _upstream_failure(service: str, status: int) -> DomainError:
    """Upstream 5xx answers leave as our own problem (no upstream internals leak)."""
    if status == 503:
        return Unavailable(f"the {service} service is unavailable; retry later")
    if status == 504:
        return DeadlineExceeded(f"the {service} service timed out")
    return BadGateway(f"the {service} service failed to handle the request (HTTP {status})")


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk


def build_proxy_router(forwarder: Forwarder) -> APIRouter:
    """``/api/v1/<service>/...`` to the service; ``/v2/...`` (Open Inference Protocol) to serving."""
    router = APIRouter()
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]

    @router.api_route("/api/v1/{service}/{path:path}", methods=methods, include_in_schema=False)
    async def platform_api(service: str, path: str, request: Request) -> StreamingResponse:
        return await forwarder.forward(service, request)

    @router.api_route("/v2/{path:path}", methods=methods, include_in_schema=False)
    async def inference(path: str, request: Request) -> StreamingResponse:
        return await forwarder.forward("serving", request)

    @router.api_route("/v2", methods=["GET", "HEAD"], include_in_schema=False)
    async def inference_root(request: Request) -> StreamingResponse:
        return await forwarder.forward("serving", request)

    return router
