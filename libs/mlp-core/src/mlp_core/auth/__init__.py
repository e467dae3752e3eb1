"""OIDC access-token checks (RFC 9068 / RFC 8725) for REST and gRPC, and client-credentials tokens.

Typical wiring::

    verifier = build_verifier(settings)
    app.add_middleware(AuthMiddleware, verifier=verifier)
    server = grpc.aio.server(interceptors=[AuthInterceptor(verifier)])
"""

from mlp_core.auth.client import ClientCredentialsTokenSource
from mlp_core.auth.grpc import AuthInterceptor, principal_from_context
from mlp_core.auth.jwks import JwksCache, JwksFetchError, JwksStats
from mlp_core.auth.principal import Principal, current_principal, set_current_principal
from mlp_core.auth.rest import (
    DEFAULT_PUBLIC_PATHS,
    AuthMiddleware,
    CurrentPrincipal,
    bearer_token,
    request_principal,
    require_scope,
)
from mlp_core.auth.scopes import ADMIN, ALL_PROJECTS, PLATFORM_SCOPES
from mlp_core.auth.verifier import DEFAULT_ALGORITHMS, TokenVerifier, build_verifier, principal_from_claims

__all__ = [
    "ADMIN",
    "ALL_PROJECTS",
    "DEFAULT_ALGORITHMS",
    "DEFAULT_PUBLIC_PATHS",
    "PLATFORM_SCOPES",
    "AuthInterceptor",
    "AuthMiddleware",
    "ClientCredentialsTokenSource",
    "CurrentPrincipal",
    "JwksCache",
    "JwksFetchError",
    "JwksStats",
    "Principal",
    "TokenVerifier",
    "bearer_token",
    "build_verifier",
    "current_principal",
    "principal_from_claims",
    "principal_from_context",
    "request_principal",
    "require_scope",
    "set_current_principal",
]
