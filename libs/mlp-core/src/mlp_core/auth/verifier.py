"""Access-token verification per RFC 9068 (JWT access tokens) and RFC 8725 (JWT best practices)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from joserfc import jwk, jws
from joserfc.errors import JoseError

from mlp_core.auth.jwks import JwksCache
from mlp_core.auth.principal import Principal
from mlp_core.errors import Unauthenticated

if TYPE_CHECKING:
    from mlp_core.settings import CoreSettings

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "EdDSA"})
_KEY_TYPE_FOR_ALG: dict[str, type[jwk.RSAKey | jwk.ECKey | jwk.OKPKey]] = {
    **{a: jwk.RSAKey for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{a: jwk.ECKey for a in ("ES256", "ES384", "ES512")},
    "EdDSA": jwk.OKPKey,
}
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: Headers that would let the token choose its own key or key URL (RFC 8725 §3.10) or change parsing.
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64", "zip")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_SAFE_KID = re.compile(r"^[A-Za-z0-9._:+=-]{1,128}$")
_REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "client_id")


def _refuse(reason: str) -> Unauthenticated:
    return Unauthenticated(
        f"invalid access token: {reason}",
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate member")
        out[k] = v
    return out


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    if not segment or not _B64URL.match(segment):
        raise _refuse(f"malformed {what}")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise _refuse(f"malformed {what}") from None
    if not isinstance(value, dict):
        raise _refuse(f"malformed {what}")
    return value


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class TokenVerifier:
    """Checks bearer access tokens of one issuer and audience and turns them into a ``Principal``.

    Checks run cheapest first; the signature is checked by joserfc with the key the issuer's JWKS
    gives for the token's ``kid``. Every refusal is ``Unauthenticated`` with a short reason that
    never repeats the token.

    Verified tokens are remembered (``cache_size`` entries, least recently used evicted first) under
    the SHA-256 of the token, so a client that repeats its token skips the signature check. An entry
    lives until ``min(exp, verified_at + cache_ttl_s)``: an expired token is never served from the
    cache, and a key removed from the JWKS stops being honoured within ``cache_ttl_s``. Only fully
    verified tokens are cached, never refusals. ``cache_size=0`` turns the cache off.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        max_lifetime_s: int = 3600,
        leeway_s: int = 30,
        max_token_bytes: int = 8192,
        cache_size: int = 4096,
        cache_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unsafe = set(algorithms) - _ASYMMETRIC
        if unsafe:
            raise ValueError(f"algorithms not allowed (only asymmetric ones are): {sorted(unsafe)}")
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.algorithms = frozenset(algorithms)
        self.max_lifetime_s = max_lifetime_s
        self.leeway_s = leeway_s
        self.max_token_bytes = max_token_bytes
        if cache_size < 0 or cache_ttl_s < 0:
            raise ValueError("cache_size and cache_ttl_s must be >= 0")
        self.cache_size = cache_size
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        #: SHA-256 of a verified token → (its principal, time after which it must be verified again).
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """Verify ``token`` and return its ``Principal``; raises ``Unauthenticated`` on any flaw."""
        if not isinstance(token, str) or not token:
            raise _refuse("empty token")
        if len(token) > self.max_token_bytes:
            raise _refuse("token too large")
        if not self.cache_size:
            return await self._verify_fully(token)
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if self._clock() < cached[1]:
                self._cache.move_to_end(digest)
                return cached[0]
            del self._cache[digest]
        principal = await self._verify_fully(token)
        exp = principal.claims["exp"]
        self._cache[digest] = (principal, min(float(exp), self._clock() + self.cache_ttl_s))
        self._cache.move_to_end(digest)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal

    def clear_cache(self) -> None:
        """Forget every verified token (e.g. after a key compromise); the next calls verify in full."""
        self._cache.clear()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered."""
        return len(self._cache)

    async def _verify_fully(self, token: str) -> Principal:
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse("not a compact JWS")
        header = _b64_json(parts[0], "header")
        alg, kid = self._check_header(header)
        if not parts[2] or not _B64URL.match(parts[2]):
            raise _refuse("malformed signature")
        self.check_claims(_b64_json(parts[1], "payload"))

        key = await self.jwks.get_key(kid)
        if key is None:
            raise _refuse("unknown signing key")
        if not isinstance(key, _KEY_TYPE_FOR_ALG[alg]) or key.get("alg", alg) != alg:
            raise _refuse("key does not match algorithm")
        try:
            verified = jws.deserialize_compact(token, key, algorithms=[alg])
        except (JoseError, ValueError, TypeError):
            raise _refuse("bad signature") from None
        try:
            claims = json.loads(verified.payload, object_pairs_hook=_no_duplicates)
        except ValueError:
            raise _refuse("malformed payload") from None
        if not isinstance(claims, dict):
            raise _refuse("malformed payload")
        self.check_claims(claims)
        return principal_from_claims(claims, token)

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str]:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _refuse("algorithm not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise _refuse("typ must be at+jwt")
        for name in _FORBIDDEN_HEADERS:
            if name in header:
                raise _refuse(f"header '{name}' not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _SAFE_KID.match(kid) or ".." in kid:
            raise _refuse("missing or malformed kid")
        return alg, kid

    def check_claims(self, claims: Mapping[str, Any]) -> None:
        """The RFC 9068 claim checks (run before and again after the signature check)."""
        for name in _REQUIRED_CLAIMS:
            if name not in claims:
                raise _refuse(f"claim '{name}' missing")
        if claims["iss"] != self.issuer:
            raise _refuse("wrong issuer")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self.audience not in audiences:
            raise _refuse("wrong audience")
        now = self._clock()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
        if not _is_number(exp) or not _is_number(iat) or (nbf is not None and not _is_number(nbf)):
            raise _refuse("malformed time claims")
        if now > exp + self.leeway_s:
            raise _refuse("token expired")
        if nbf is not None and nbf > now + self.leeway_s:
            raise _refuse("token not yet valid")
        if iat > now + self.leeway_s:
            raise _refuse("token issued in the future")
        if exp - iat > self.max_lifetime_s:
            raise _refuse("token lifetime over the maximum")
        for name in ("sub", "client_id"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise _refuse(f"malformed claim '{name}'")
        if "scope" in claims and not isinstance(claims["scope"], str):
            raise _refuse("malformed claim 'scope'")
        for name in ("scp", "projects"):
            value = claims.get(name)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _refuse(f"malformed claim '{name}'")


def principal_from_claims(claims: Mapping[str, Any], token: str) -> Principal:
    """Build a ``Principal`` from verified claims (``scope`` string or ``scp`` list, ``projects`` list)."""
    scopes: set[str] = set()
    if isinstance(claims.get("scope"), str):
        scopes.update(claims["scope"].split())
    if isinstance(claims.get("scp"), list):
        scopes.update(s for s in claims["scp"] if isinstance(s, str))
    projects = claims.get("projects")
    return Principal(
        subject=str(claims["sub"]),
        client_id=str(claims["client_id"]),
        scopes=frozenset(scopes),
        projects=frozenset(p for p in projects if isinstance(p, str)) if isinstance(projects, list) else frozenset(),
        token=token,
        claims=MappingProxyType(dict(claims)),  # read-only: verified principals are shared (cache)
    )


def build_verifier(settings: CoreSettings, *, jwks: JwksCache | None = None) -> TokenVerifier:
    """A ``TokenVerifier`` for the issuer and audience in ``settings``."""
    return TokenVerifier(
        settings.oidc_issuer,
        settings.oidc_audience,
        jwks or JwksCache(settings.oidc_issuer),
        max_lifetime_s=settings.oidc_max_token_lifetime_s,
        leeway_s=settings.oidc_leeway_s,
    )
