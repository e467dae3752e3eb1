"""REST edge: problem+json handlers and request metrics for every FastAPI app."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlp_core.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, DomainError
from mlp_core.telemetry import HttpMetrics, current_trace_id

log = logging.getLogger(__name__)


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSONResponse with the problem+json media type."""
    return JSONResponse(body, status_code=int(body["status"]), headers=headers,
                        media_type=PROBLEM_CONTENT_TYPE)


async def send_problem(scope: Scope, send: Send, exc: DomainError, *, trace_id: str | None = None) -> None:
    """``exc`` as an RFC 9457 problem+json response from plain ASGI code (middleware), never cached."""
    body = json.dumps(exc.problem(instance=scope.get("path"), trace_id=trace_id)).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def validation_problem(raw: Sequence[Any], loc_prefix: Sequence[str] = ()) -> tuple[str, list[dict[str, Any]]]:
    """(detail, errors) of a 422 ``validation-error`` problem from pydantic-style error dicts."""
    errors = [{"loc": [*loc_prefix, *(str(p) for p in err.get("loc", ()))], "msg": str(err.get("msg", "")),
               "type": str(err.get("type", ""))} for err in raw]
    first = errors[0] if errors else {"loc": [*loc_prefix], "msg": "invalid request"}
    return (f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])), errors


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves as RFC 9457 problem+json; unexpected ones never show a stack trace."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        body = exc.problem(instance=request.url.path, trace_id=current_trace_id())
        return problem_response(body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = validation_problem(exc.errors())
        body = {
            "type": PROBLEM_BASE + "validation-error",
            "title": "Request validation failed",
            "status": 422,
            "detail": detail,
            "instance": request.url.path,
            "errors": errors,
        }
        if trace_id := current_trace_id():
            body["trace_id"] = trace_id
        return problem_response(body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "type": PROBLEM_BASE + {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error"),
            "title": {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error"),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "instance": request.url.path,
        }
        return problem_response(body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "type": PROBLEM_BASE + "internal",
            "title": "Internal error",
            "status": 500,
            "detail": "The server failed to handle this request; it has been logged.",
            "instance": request.url.path,
        }
        if trace_id := current_trace_id():
            body["trace_id"] = trace_id
        return problem_response(body)


class MetricsMiddleware:
    """Counts requests and observes latency per route template (pure ASGI: cheap on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, service: str) -> None:
        self.app = app
        self.metrics = metrics
        self.service = service
        # Label children per (method, route template, status): ``labels()`` takes a lock and builds
        # its key on every call; the set of templates is bounded by the app's routes.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            key = (method, template, status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.requests.labels(self.service, method, template, str(status)),
                    self.metrics.latency.labels(self.service, method, template))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
