"""The dev OIDC issuer's HTTP app: discovery, JWKS and the client-credentials token endpoint."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from joserfc import jws

from mlp_core.devissuer.clients import ClientConfig, load_clients
from mlp_core.devissuer.keys import SIGNING_ALG, SigningKeys

DEFAULT_TOKEN_LIFETIME_S = 900
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(error: str, description: str, status: int = 400, *,
                basic_challenge: bool = False) -> JSONResponse:
    """An RFC 6749 §5.2 error response."""
    headers = dict(_NO_STORE)
    if basic_challenge:
        headers["WWW-Authenticate"] = 'Basic realm="mlp-dev-issuer"'
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers=headers)


class _ClientAuthError(Exception):
    def __init__(self, description: str, basic: bool) -> None:
        super().__init__(description)
        self.basic = basic


def _client_credentials(request: Request, form: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(client_id, secret, used_basic) from ``client_secret_basic`` or ``client_secret_post``."""
    header = request.headers.get("authorization")
    posted_id, posted_secret = form.get("client_id"), form.get("client_secret")
    if header:
        if posted_secret is not None:
            raise _ClientAuthError("use one client authentication method, not two", True)
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise _ClientAuthError("unsupported client authentication scheme", True)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _ClientAuthError("malformed Basic credentials", True) from None
        cid, sep, secret = decoded.partition(":")
        if not sep:
            raise _ClientAuthError("malformed Basic credentials", True)
        return unquote(cid), unquote(secret), True  # RFC 6749 §2.3.1: form-urlencoded first
    if isinstance(posted_id, str) and isinstance(posted_secret, str):
        return posted_id, posted_secret, False
    raise _ClientAuthError("client authentication required", True)


def _authenticate(clients: Mapping[str, ClientConfig], cid: str, secret: str) -> ClientConfig | None:
    client = clients.get(cid)
    # Compare even for unknown clients so timing does not reveal which ids exist.
    expected = client.client_secret if client else "x" * 32
    ok = hmac.compare_digest(secret.encode(), expected.encode())
    return client if ok and client is not None else None


def create_app(state_dir: Path | str, issuer_url: str,
               clients_config: Path | Mapping[str, Any] | None = None, *,
               token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S) -> FastAPI:
    """Build the issuer app; keys (and default clients) live in ``<state_dir>/issuer/``."""
    issuer_dir = Path(state_dir) / "issuer"
    keys = SigningKeys.load_or_create(issuer_dir)
    clients = load_clients(issuer_dir, clients_config)
    issuer = issuer_url
    app = FastAPI(title="mlp dev OIDC issuer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.signing_keys = keys
    app.state.clients = clients

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> dict[str, Any]:
        base = issuer.rstrip("/")
        return {
            "issuer": issuer,
            "jwks_uri": f"{base}/jwks",
            "token_endpoint": f"{base}/token",
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": ["token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": [SIGNING_ALG],
            "access_token_signing_alg_values_supported": [SIGNING_ALG],
            "subject_types_supported": ["public"],
            "scopes_supported": sorted({s for c in clients.values() for s in c.scopes}),
        }

    @app.get("/jwks")
    async def jwks() -> dict[str, Any]:
        return keys.jwks()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return oauth_error("invalid_request", "send application/x-www-form-urlencoded")
        form = dict(await request.form())
        try:
            cid, secret, basic = _client_credentials(request, form)
        except _ClientAuthError as exc:
            return oauth_error("invalid_client", str(exc), 401, basic_challenge=exc.basic)
        client = _authenticate(clients, cid, secret)
        if client is None:
            return oauth_error("invalid_client", "unknown client or wrong secret", 401, basic_challenge=basic)
        if "grant_type" not in form:
            return oauth_error("invalid_request", "grant_type is required")
        if form.get("grant_type") != "client_credentials":
            return oauth_error("unsupported_grant_type", "only client_credentials is supported")
        requested = form.get("scope")
        scopes = client.scopes if not isinstance(requested, str) or not requested.strip() else tuple(
            requested.split())
        not_allowed = sorted(set(scopes) - set(client.scopes))
        if not_allowed:
            return oauth_error("invalid_scope", f"scopes not allowed for this client: {' '.join(not_allowed)}")
        audience = form.get("audience")
        if audience is not None and audience != client.audience:
            return oauth_error("invalid_target", "this client may only get tokens for its own audience")
        now = int(time.time())
        claims = {
            "iss": issuer, "sub": client.client_id, "aud": client.audience, "client_id": client.client_id,
            "scope": " ".join(scopes), "projects": list(client.projects),
            "iat": now, "nbf": now, "exp": now + token_lifetime_s, "jti": uuid.uuid4().hex,
        }
        header = {"alg": SIGNING_ALG, "typ": "at+jwt", "kid": keys.active.kid}
        access_token = jws.serialize_compact(header, _json_bytes(claims), keys.active, algorithms=[SIGNING_ALG])
        return JSONResponse({"access_token": access_token, "token_type": "Bearer",
                             "expires_in": token_lifetime_s, "scope": claims["scope"]}, headers=_NO_STORE)

    return app


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
