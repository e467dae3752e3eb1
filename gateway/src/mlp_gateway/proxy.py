"""Forwarding of REST calls to the owning service, with the caller's token and trace context."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from mlp_core.errors import BadGateway, DeadlineExceeded, NotFound, Unavailable

#: Hop-by-hop headers (RFC 9110 §7.6.1) and identity headers a client must never set for us.
DROP_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
    "x-user-id", "x-user", "x-forwarded-user", "x-remote-user", "x-client-id", "x-tenant",
    "x-forwarded-client-cert", "x-ssl-client-cert", "x-client-cert", "x-auth-user", "x-principal",
})
DROP_RESPONSE_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                                   "server", "date"})


class Forwarder:
    """A pooled HTTP client per upstream; maps transport failures to 502/503/504 problems."""

    def __init__(self, upstreams: dict[str, str], timeout_s: float) -> None:
        self.upstreams = upstreams
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=3.0), limits=limits)

    async def forward(self, service: str, request: Request) -> StreamingResponse:
        """Send ``request`` to ``service`` unchanged in path and query; stream the answer back."""
        base = self.upstreams.get(service)
        if base is None:
            raise NotFound(f"no service named {service!r}; known: {', '.join(sorted(self.upstreams))}")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS]
        client_host = request.client.host if request.client else "unknown"
        headers.append(("x-forwarded-for", client_host))
        url = httpx.URL(base + request.url.path, query=request.url.query.encode())
        upstream_req = self.client.build_request(request.method, url, headers=headers,
                                                 content=request.stream())
        try:
            upstream = await self.client.send(upstream_req, stream=True)
        except httpx.ConnectError as exc:
            raise Unavailable(f"the {service} service is not reachable; retry later") from exc
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"the {service} service did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise BadGateway(f"the {service} service sent an unusable answer") from exc
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE_HEADERS}
        return StreamingResponse(_body(upstream), status_code=upstream.status_code, headers=out_headers,
                                 background=BackgroundTask(upstream.aclose))

    async def close(self) -> None:
        """Close pooled connections."""
        await self.client.aclose()


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk


def build_proxy_router(forwarder: Forwarder) -> APIRouter:
    """``/api/v1/<service>/...`` to the service; ``/v2/...`` (Open Inference Protocol) to serving."""
    router = APIRouter()
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    @router.api_route("/api/v1/{service}/{path:path}", methods=methods, include_in_schema=False)
    async def platform_api(service: str, path: str, request: Request) -> StreamingResponse:
        return await forwarder.forward(service, request)

    @router.api_route("/v2/{path:path}", methods=methods, include_in_schema=False)
    async def inference(path: str, request: Request) -> StreamingResponse:
        return await forwarder.forward("serving", request)

    @router.api_route("/v2", methods=["GET"], include_in_schema=False)
    async def inference_root(request: Request) -> StreamingResponse:
        return await forwarder.forward("serving", request)

    return router
