"""Service-to-service tokens: the OAuth 2.0 client-credentials grant, cached until shortly before expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from mlp_core.errors import Unauthenticated, Unavailable


class ClientCredentialsTokenSource:
    """Gets and caches an access token for this client (RFC 6749 §4.4, ``client_secret_basic``).

    Give either ``token_endpoint`` or ``issuer`` (the endpoint is then found by OIDC discovery).
    The token is reused until ``min(60 s, 10 % of its lifetime)`` before it expires; one fetch runs
    at a time however many callers ask.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        token_endpoint: str | None = None,
        scope: str | None = None,
        audience: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer and not token_endpoint:
            raise ValueError("give issuer or token_endpoint")
        self.client_id = client_id
        self._secret = client_secret
        self.issuer = issuer
        self._token_endpoint = token_endpoint
        self.scope = scope
        self.audience = audience
        self._client = http_client
        self._owns_client = http_client is None
        self._timeout = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentialsTokenSource(client_id={self.client_id!r}, issuer={self.issuer!r})"

    async def get_token(self) -> str:
        """A valid access token, fetched only when the cached one is (nearly) expired."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            token, expires_in = await self._fetch()
            margin = min(60.0, 0.1 * expires_in)
            self._token = token
            self._refresh_at = self._clock() + max(0.0, expires_in - margin)
            return token

    async def authorization_header(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` for an outgoing call."""
        return {"Authorization": f"Bearer {await self.get_token()}"}

    def invalidate(self) -> None:
        """Drop the cached token (after a 401 from a callee, for example)."""
        self._token = None

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self._client

    async def _endpoint(self) -> str:
        if self._token_endpoint:
            return self._token_endpoint
        assert self.issuer is not None
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = await self._http().get(url)
            doc = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(f"OIDC discovery at {url} failed: {type(exc).__name__}") from exc
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise Unavailable(f"OIDC discovery at {url} gave no usable document for this issuer")
        endpoint = doc.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise Unavailable("the issuer's discovery document has no token_endpoint")
        self._token_endpoint = endpoint
        return endpoint

    async def _fetch(self) -> tuple[str, float]:
        endpoint = await self._endpoint()
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        self.fetches += 1
        try:
            response = await self._http().post(
                endpoint, data=form, auth=httpx.BasicAuth(self.client_id, self._secret),
                headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise Unavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code in (400, 401) and isinstance(body, dict):
            raise Unauthenticated(
                f"token request for client '{self.client_id}' refused: {body.get('error', 'unknown error')}")
        if response.status_code != 200 or not isinstance(body, dict):
            raise Unavailable(f"token endpoint answered HTTP {response.status_code}")
        token = body.get("access_token")
        expires_in = body.get("expires_in", 300)
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise Unavailable("token endpoint answered without a usable access_token")
        return token, float(expires_in)
