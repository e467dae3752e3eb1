"""RFC 8693 token exchange: trade the caller's token for one scoped to the upstream service."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import httpx

from mlp_core.errors import Unauthenticated, Unavailable

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN, not a secret


class TokenExchanger:
    """Exchanges a subject token at the issuer's token endpoint (client auth: ``client_secret_basic``).

    Results are cached per (subject token, audience) until shortly before they expire, in a
    bounded LRU; the cache key is a hash, so tokens never sit in memory as dictionary keys.
    """

    def __init__(self, *, token_endpoint: str, client_id: str, client_secret: str,
                 http_client: httpx.AsyncClient | None = None, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self._secret = client_secret
        self._client = http_client or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.exchanges = 0

    def __repr__(self) -> str:
        return f"TokenExchanger(client_id={self.client_id!r}, endpoint={self.token_endpoint!r})"

    async def exchange(self, subject_token: str, audience: str) -> str:
        """A token for ``audience`` that carries the caller's identity (``act``/``sub`` per the IdP)."""
        key = hashlib.sha256(f"{audience}\0{subject_token}".encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached[1]:
            self._cache.move_to_end(key)
            return cached[0]
        token, expires_in = await self._request(subject_token, audience)
        self._cache[key] = (token, self._clock() + max(0.0, expires_in - min(30.0, expires_in * 0.1)))
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return token

    async def _request(self, subject_token: str, audience: str) -> tuple[str, float]:
        form = {"grant_type": GRANT_TYPE, "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN_TYPE, "requested_token_type": ACCESS_TOKEN_TYPE,
                "audience": audience}
        self.exchanges += 1
        try:
            response = await self._client.post(self.token_endpoint, data=form,
                                               auth=httpx.BasicAuth(self.client_id, self._secret))
        except httpx.HTTPError as exc:
            raise Unavailable(f"token exchange endpoint unreachable: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code in (400, 401, 403):
            error = body.get("error", "refused") if isinstance(body, dict) else "refused"
            raise Unauthenticated(f"token exchange refused: {error}")
        if response.status_code != 200 or not isinstance(body, dict):
            raise Unavailable(f"token exchange endpoint answered HTTP {response.status_code}")
        token, expires_in = body.get("access_token"), body.get("expires_in", 60)
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise Unavailable("token exchange answered without a usable access_token")
        return token, float(expires_in)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
