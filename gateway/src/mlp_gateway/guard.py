"""The gateway's edge checks for REST, in the order that costs least first.

1. transport: tokens in the query string, compressed bodies, oversized ``Content-Length``;
2. authentication: ``Bearer`` or ``DPoP`` (RFC 9449) with the shared ``TokenVerifier``;
3. authorization: the scope the route needs (``policy.REST_RULES``);
4. per-client rate limit; 5. the body, read up to the size limit.

Refusals are problem+json responses; every refusal and every mutating call is audited.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlp_core.auth import Principal, TokenVerifier
from mlp_core.auth.principal import reset_current_principal, set_current_principal
from mlp_core.auth.rest import is_public_path
from mlp_core.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthenticated,
)
from mlp_core.http import send_problem
from mlp_core.telemetry import current_trace_id
from mlp_gateway.audit import AuditEntry, AuditLog
from mlp_gateway.audit.writer import now_iso
from mlp_gateway.dpop import DpopVerifier, bound_thumbprint, dpop_error
from mlp_gateway.policy import MUTATING_METHODS, required_scope
from mlp_gateway.ratelimit import RateLimiter

#: Statuses that mean "refused"; such calls are audited whatever their method.
REFUSED_STATUSES = frozenset({401, 403, 413, 415, 429})
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")
_QUERY_TOKEN_NAMES = frozenset({"access_token", "token", "id_token"})


class UnsupportedMediaType(DomainError):
    """The request body uses an encoding the gateway does not accept (compressed bodies)."""

    status, grpc_code = 415, grpc.StatusCode.INVALID_ARGUMENT
    title, slug = "Unsupported media type", "unsupported-media-type"


@dataclass
class GuardDeps:
    """What the guard needs besides the verifier."""

    dpop: DpopVerifier
    limiter: RateLimiter | None
    audit: AuditLog | None
    max_body_bytes: int
    max_token_bytes: int
    public_url: str = ""


def _header(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", []) if k == name]


def _invalid_request(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, headers={"WWW-Authenticate": 'Bearer realm="mlp", error="invalid_request"'})


class GatewayGuard:
    """Pure ASGI middleware that replaces the standard ``AuthMiddleware`` in the gateway."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, public_paths: tuple[str, ...] = (), *,
                 deps: GuardDeps) -> None:
        self.app = app
        self.verifier = verifier
        self.public_paths = tuple(public_paths)
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "not supported"})
            return
        if scope["type"] != "http" or is_public_path(scope.get("path", ""), self.public_paths):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        principal: Principal | None = None
        try:
            self._check_transport(scope)
            principal = await self._authenticate(scope)
            needed = required_scope(method, scope["path"])
            if needed:
                principal.require(needed)
            await self._rate_limit(principal)
            body = await self._read_body(receive)
        except DomainError as exc:
            await send_problem(scope, send, exc, trace_id=current_trace_id())
            await self._audit(scope, principal, exc.status, "refused", exc.detail)
            return
        await self._forward(scope, receive, send, principal, body)

    # -- steps ------------------------------------------------------------------------------

    def _check_transport(self, scope: Scope) -> None:
        query = scope.get("query_string", b"")
        if query and _has_query_token(query):
            raise _invalid_request("access tokens are not accepted in the query string; "
                                   "use the Authorization header")
        path = scope["path"]
        if ("." in path and _DOT_SEGMENT.search(path)) or "//" in path:
            raise NotFound("paths with '.', '..' or empty segments are not routed")
        encodings: list[str] = []
        lengths: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"content-encoding":
                encodings += (e.strip().lower() for e in value.decode("latin-1").split(","))
            elif name == b"content-length":
                lengths.append(value.decode("latin-1"))
        if any(e not in ("", "identity") for e in encodings):
            raise UnsupportedMediaType(
                "compressed request bodies are not accepted (Content-Encoding); send the body uncompressed")
        if lengths:
            if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
                raise InvalidArgument("malformed Content-Length header")
            if int(lengths[0]) > self.deps.max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {self.deps.max_body_bytes} bytes")

    async def _authenticate(self, scope: Scope) -> Principal:
        values = _header(scope, b"authorization")
        if not values:
            raise Unauthenticated("missing access token; send 'Authorization: Bearer <access token>'",
                                  headers={"WWW-Authenticate": 'Bearer realm="mlp", DPoP algs="ES256 EdDSA"'})
        if len(values) > 1:
            raise _invalid_request("more than one Authorization header")
        if len(values[0]) > self.deps.max_token_bytes:
            raise Unauthenticated("invalid access token: token too large",
                                  headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() not in ("bearer", "dpop") or not token or " " in token:
            raise _invalid_request("malformed Authorization header; expected 'Bearer <token>' or 'DPoP <token>'")
        principal = await self.verifier.verify(token)
        jkt = bound_thumbprint(principal.claims)
        proofs = _header(scope, b"dpop")
        if scheme.lower() == "bearer":
            if jkt is not None:
                raise dpop_error("this token is DPoP-bound; use 'Authorization: DPoP <token>' with a proof")
            return principal
        if jkt is None:
            raise dpop_error("the DPoP scheme needs a DPoP-bound token (cnf.jkt)")
        if len(proofs) != 1:
            raise dpop_error("send exactly one DPoP header")
        await self.deps.dpop.verify(proofs[0], method=scope["method"], url=self._request_url(scope),
                                    access_token=token, jkt=jkt)
        return principal

    def _request_url(self, scope: Scope) -> str:
        if self.deps.public_url:
            return self.deps.public_url.rstrip("/") + scope["path"]
        hosts = _header(scope, b"host")
        host = hosts[0] if hosts else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{scope['path']}"

    async def _rate_limit(self, principal: Principal) -> None:
        if self.deps.limiter is None:
            return
        decision = await self.deps.limiter.check(principal.client_id or principal.subject)
        if not decision.allowed:
            raise TooManyRequests(f"rate limit reached for client '{principal.client_id}'; "
                                  f"retry after {decision.retry_after_s} s",
                                  headers={"Retry-After": str(decision.retry_after_s)})

    async def _read_body(self, receive: Receive) -> list[Message]:
        """Read the whole body (bounded) so a chunked body cannot slip past the limit."""
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.deps.max_body_bytes:
                raise PayloadTooLarge(f"request body is over the limit of {self.deps.max_body_bytes} bytes")
            if not message.get("more_body", False):
                return messages

    async def _forward(self, scope: Scope, receive: Receive, send: Send, principal: Principal,
                       body: list[Message]) -> None:
        pending = list(body)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()  # after the body: wait for the real disconnect, as servers do

        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        scope.setdefault("state", {})["principal"] = principal
        ctx = set_current_principal(principal)
        try:
            await self.app(scope, replay, send_status)
        finally:
            reset_current_principal(ctx)
            if scope["method"] in MUTATING_METHODS or status in REFUSED_STATUSES:
                outcome = "ok" if status < 400 else "refused" if status in REFUSED_STATUSES else "failed"
                await self._audit(scope, principal, status, outcome, "")

    # -- output -----------------------------------------------------------------------------

    async def _audit(self, scope: Scope, principal: Principal | None, status: int, outcome: str,
                     detail: str) -> None:
        if self.deps.audit is None:
            return
        await self.deps.audit.record(AuditEntry(
            occurred_at=now_iso(),
            actor=principal.subject if principal else "anonymous",
            client_id=principal.client_id if principal else "",
            action=f"{scope['method']} {scope['path']}"[:512],
            object=scope["path"][:1024],
            outcome=outcome,
            status=status,
            transport="rest",
            trace_id=current_trace_id() or _traceparent_id(scope),
            detail=detail[:500],
        ))


def _has_query_token(query: bytes) -> bool:
    from urllib.parse import parse_qsl

    return any(name.lower() in _QUERY_TOKEN_NAMES
               for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def _traceparent_id(scope: Scope) -> str:
    values = _header(scope, b"traceparent")
    parts = values[0].split("-") if values else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else uuid.uuid4().hex


def guard_factory(deps: GuardDeps, inner: Callable[[ASGIApp], ASGIApp] | None = None) -> Any:
    """The ``rest_auth_middleware`` callable for ``ServiceParts``.

    ``inner`` wraps what the guard passes checked calls to (the gateway puts its plain-ASGI
    forwarding there, ahead of FastAPI's routing); every call still passes the guard first.
    """

    def factory(app: ASGIApp, verifier: TokenVerifier, public_paths: tuple[str, ...] = ()) -> GatewayGuard:
        return GatewayGuard(inner(app) if inner else app, verifier, public_paths, deps=deps)

    return factory
