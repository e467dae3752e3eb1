"""The issuer's signing keys: OIDC discovery + JWKS, cached, refreshed, never fetched from a token."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwk
from joserfc.errors import JoseError

log = logging.getLogger(__name__)

#: Key types a JWKS may give us for signature checks; symmetric ("oct") keys are never accepted.
VerifyKey = jwk.RSAKey | jwk.ECKey | jwk.OKPKey
_ASYMMETRIC_KTY = frozenset({"RSA", "EC", "OKP"})
_MAX_DOCUMENT_BYTES = 512 * 1024


class JwksFetchError(Exception):
    """The discovery document or the JWKS could not be fetched or was unusable."""


@dataclass
class JwksStats:
    """Counters for tests and metrics."""

    discovery_fetches: int = 0
    jwks_fetches: int = 0
    fetch_failures: int = 0
    unknown_kid_refetches: int = 0
    throttled_lookups: int = 0


class JwksCache:
    """Public keys of one issuer, found through ``<issuer>/.well-known/openid-configuration``.

    - Keys are refreshed when older than ``ttl_s`` (lazily, on lookup).
    - An unknown ``kid`` triggers a refetch at most once per ``refetch_cooldown_s``, so a flood of
      random kids costs at most one fetch per cooldown.
    - When the issuer is unreachable, known keys keep working; with no key known, lookups fail.
    - URLs come only from the configured issuer's discovery document, never from a token.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_uri: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        ttl_s: float = 600.0,
        refetch_cooldown_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._client = http_client
        self._owns_client = http_client is None
        self.ttl_s = ttl_s
        self.refetch_cooldown_s = refetch_cooldown_s
        self._timeout = timeout_s
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self.stats = JwksStats()

    @property
    def known_kids(self) -> frozenset[str]:
        """Key ids currently cached."""
        return frozenset(self._keys)

    async def get_key(self, kid: str) -> VerifyKey | None:
        """The key with this id, fetching when stale or unknown (throttled); ``None`` if none."""
        if self._is_stale():
            await self._refresh_if(lambda: self._is_stale())
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._lock.locked():
            # A fetch is in flight (first start-up fetch, or a refetch for a rotated key): wait for it
            # rather than refusing every concurrent request during the fetch window.
            async with self._lock:
                pass
            key = self._keys.get(kid)
            if key is not None:
                return key
        if not self._cooldown_over():
            self.stats.throttled_lookups += 1
            return None
        self.stats.unknown_kid_refetches += 1
        await self._refresh_if(lambda: kid not in self._keys and self._cooldown_over())
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch discovery (once) and the JWKS now; raises ``JwksFetchError`` on failure."""
        async with self._lock:
            await self._fetch()

    async def aclose(self) -> None:
        """Close the HTTP client if this cache created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- internals -------------------------------------------------------------------------

    def _is_stale(self) -> bool:
        if self._fetched_at is None:
            return self._cooldown_over()
        return self._clock() - self._fetched_at >= self.ttl_s and self._cooldown_over()

    def _cooldown_over(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self.refetch_cooldown_s

    async def _refresh_if(self, still_needed: Callable[[], bool]) -> None:
        async with self._lock:
            # Another task may have fetched while this one waited for the lock.
            if not still_needed():
                return
            try:
                await self._fetch()
            except JwksFetchError as exc:
                log.warning("JWKS refresh for %s failed: %s; keeping %d known key(s)",
                            self.issuer, exc, len(self._keys))

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self._client

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        try:
            response = await self._http().get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"GET {url}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise JwksFetchError(f"GET {url}: HTTP {response.status_code}")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise JwksFetchError(f"GET {url}: document too large")
        try:
            body = response.json()
        except ValueError as exc:
            raise JwksFetchError(f"GET {url}: not JSON") from exc
        if not isinstance(body, dict):
            raise JwksFetchError(f"GET {url}: not a JSON object")
        return body

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        self.stats.discovery_fetches += 1
        doc = await self._get_json(url)
        if doc.get("issuer") != self.issuer:
            raise JwksFetchError("discovery document names a different issuer")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise JwksFetchError("discovery document has no usable jwks_uri")
        return jwks_uri

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self.stats.jwks_fetches += 1
            body = await self._get_json(self._jwks_uri)
            keys = parse_jwks(body)
        except JwksFetchError:
            self.stats.fetch_failures += 1
            raise
        if not keys:
            self.stats.fetch_failures += 1
            raise JwksFetchError("JWKS has no usable signing key")
        self._keys = keys
        self._fetched_at = self._clock()


def parse_jwks(body: Mapping[str, Any]) -> dict[str, VerifyKey]:
    """Public signing keys of a JWKS document by ``kid``; skips keys we must not or cannot use."""
    raw_keys = body.get("keys")
    if not isinstance(raw_keys, list):
        raise JwksFetchError("JWKS has no 'keys' list")
    keys: dict[str, VerifyKey] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str) or not kid or raw.get("kty") not in _ASYMMETRIC_KTY:
            continue
        if raw.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in raw.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
        try:
            key = jwk.import_key(public)
        except (JoseError, ValueError, TypeError):
            log.warning("skipping unusable JWKS key %r", kid)
            continue
        if isinstance(key, jwk.RSAKey | jwk.ECKey | jwk.OKPKey):
            keys[kid] = key
    return keys
