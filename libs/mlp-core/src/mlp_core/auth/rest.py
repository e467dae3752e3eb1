"""REST side: a pure ASGI middleware that authenticates every non-public request, and dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from mlp_core.auth.principal import Principal, reset_current_principal, set_current_principal
from mlp_core.auth.verifier import TokenVerifier
from mlp_core.errors import Unauthenticated
from mlp_core.http import send_problem

DEFAULT_PUBLIC_PATHS: tuple[str, ...] = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value; ``Unauthenticated`` otherwise."""
    if not authorization:
        raise Unauthenticated(
            "missing bearer token; send 'Authorization: Bearer <access token>'",
            headers={"WWW-Authenticate": 'Bearer realm="mlp"'},
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated(
            "malformed Authorization header; expected 'Bearer <access token>'",
            headers={"WWW-Authenticate": 'Bearer realm="mlp", error="invalid_request"'},
        )
    return token


def is_public_path(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one (``/docs`` covers ``/docs/oauth2-redirect``)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


async def authenticate(verifier: TokenVerifier, query: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
    """The caller of a request (its query string and lower-cased raw headers); ``Unauthenticated``
    for a token in the query, several Authorization headers, a missing or malformed one, or a bad token."""
    if any(name == "access_token" for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)):
        raise Unauthenticated(
            "access tokens are not accepted in the query string; use the Authorization header",
            headers={"WWW-Authenticate": 'Bearer realm="mlp", error="invalid_request"'},
        )
    values = [v for k, v in headers if k == b"authorization"]
    if len(values) > 1:
        raise Unauthenticated("more than one Authorization header",
                              headers={"WWW-Authenticate": 'Bearer realm="mlp", error="invalid_request"'})
    return await verifier.verify(bearer_token(values[0].decode("latin-1") if values else None))


class AuthMiddleware:
    """Authenticates every HTTP/WebSocket request except public paths.

    On success the ``Principal`` is stored in ``scope["state"]["principal"]`` (``request.state.principal``)
    and bound for ``mlp_core.auth.current_principal()``. Refusals are 401 problem+json responses.
    Tokens in the query string (``access_token=``) are refused: URLs end up in logs.
    """

    def __init__(self, app: ASGIApp, verifier: TokenVerifier,
                 public_paths: Iterable[str] = DEFAULT_PUBLIC_PATHS) -> None:
        self.app = app
        self.verifier = verifier
        self.public_paths = tuple(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public_path(scope.get("path", ""), self.public_paths):
            await self.app(scope, receive, send)
            return
        try:
            principal = await authenticate(self.verifier, scope.get("query_string", b""), scope.get("headers", []))
        except Unauthenticated as exc:
            await self._refuse(scope, receive, send, exc)
            return
        scope.setdefault("state", {})["principal"] = principal
        ctx = set_current_principal(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_current_principal(ctx)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: Unauthenticated) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthenticated"})
            return
        await send_problem(scope, send, exc)


def request_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller that ``AuthMiddleware`` authenticated."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise Unauthenticated("no authenticated caller; is AuthMiddleware installed?")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(request_principal)]


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency factory: the caller, after checking it holds ``scope`` (else 403)."""

    async def dependency(request: Request) -> Principal:
        principal = request_principal(request)
        principal.require(scope)
        return principal

    dependency.__name__ = f"require_scope_{scope.replace(':', '_')}"
    return dependency

