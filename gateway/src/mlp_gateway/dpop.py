"""Sender-constrained access tokens: DPoP proof checks (RFC 9449 §4.3 and §7).

A token whose claims carry ``cnf.jkt`` is bound to a client key. Such a token is accepted only
with ``Authorization: DPoP <token>`` and a ``DPoP`` header holding a fresh proof JWT signed by the
key whose RFC 7638 thumbprint is ``cnf.jkt``, made for this method and URL, once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from joserfc import jwk, jws
from joserfc.errors import JoseError

from mlp_core.errors import Unauthenticated, Unavailable

#: Proof algorithms we accept: asymmetric only (RFC 9449 §4.3 point 5).
PROOF_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "ES384", "EdDSA"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_PROOF_BYTES = 4096


class ReplayCache(Protocol):
    """Remembers proof ids: ``first_use`` is True only the first time a key is seen within ``ttl_s``."""

    async def first_use(self, key: str, ttl_s: int) -> bool:
        """Record ``key``; whether it was new."""
        ...


class RedisReplayCache:
    """``SET key 1 NX EX ttl`` in Redis: shared by every gateway replica."""

    def __init__(self, redis: Any, prefix: str = "mlp:gw:dpop:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def first_use(self, key: str, ttl_s: int) -> bool:
        """Record ``key``; whether it was new. Redis being down refuses the proof (fail closed)."""
        try:
            return bool(await self.redis.set(self.prefix + key, b"1", nx=True, ex=max(1, ttl_s)))
        except Exception as exc:  # redis raises its own hierarchy; any failure must refuse
            raise Unavailable("DPoP replay protection is unavailable; retry later") from exc


def dpop_error(reason: str) -> Unauthenticated:
    """A 401 that names the DPoP problem (RFC 9449 §7.1) without echoing the proof."""
    return Unauthenticated(
        f"invalid DPoP proof: {reason}",
        headers={"WWW-Authenticate": f'DPoP error="invalid_dpop_proof", error_description="{reason}", '
                                     f'algs="{" ".join(sorted(PROOF_ALGORITHMS))}"'})


def b64url_sha256(value: str) -> str:
    """Unpadded base64url of SHA-256 (``ath`` of a token)."""
    digest = hashlib.sha256(value.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def bound_thumbprint(claims: dict[str, Any] | Any) -> str | None:
    """``cnf.jkt`` of verified token claims, or ``None`` when the token is not DPoP-bound."""
    cnf = claims.get("cnf") if hasattr(claims, "get") else None
    if isinstance(cnf, dict) and "jkt" in cnf:
        jkt = cnf["jkt"]
        if not isinstance(jkt, str) or not jkt:
            raise dpop_error("malformed cnf.jkt in the access token")
        return jkt
    return None


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise dpop_error("malformed proof") from None
    if not isinstance(value, dict):
        raise dpop_error("malformed proof")
    return value


class DpopVerifier:
    """Checks one DPoP proof against the request and the bound access token."""

    def __init__(self, replay: ReplayCache, *, max_age_s: int = 60, leeway_s: int = 5,
                 clock: Callable[[], float] = time.time) -> None:
        self.replay = replay
        self.max_age_s = max_age_s
        self.leeway_s = leeway_s
        self._clock = clock

    async def verify(self, proof: str, *, method: str, url: str, access_token: str, jkt: str) -> None:
        """Raise ``Unauthenticated`` unless ``proof`` is valid for this request and token."""
        if not proof or len(proof) > _MAX_PROOF_BYTES or proof.count(".") != 2:
            raise dpop_error("malformed proof")
        header_segment, payload_segment, _ = proof.split(".")
        header = _segment_json(header_segment)
        alg = header.get("alg")
        if header.get("typ") != "dpop+jwt":
            raise dpop_error("typ must be dpop+jwt")
        if not isinstance(alg, str) or alg not in PROOF_ALGORITHMS:
            raise dpop_error("algorithm not allowed")
        key = self._public_key(header.get("jwk"))
        if not hmac.compare_digest(key.thumbprint(), jkt):
            raise dpop_error("proof key does not match the token's cnf.jkt")
        try:
            jws.deserialize_compact(proof, key, algorithms=[alg])
        except (JoseError, ValueError, TypeError):
            raise dpop_error("bad signature") from None
        claims = _segment_json(payload_segment)
        self._check_claims(claims, method=method, url=url, access_token=access_token)
        ttl = self.max_age_s + 2 * self.leeway_s
        if not await self.replay.first_use(f"{jkt}:{b64url_sha256(str(claims['jti']))}", ttl):
            raise dpop_error("proof already used (jti replayed)")

    def _public_key(self, raw: Any) -> jwk.RSAKey | jwk.ECKey | jwk.OKPKey:
        if not isinstance(raw, dict) or raw.get("kty") not in ("RSA", "EC", "OKP"):
            raise dpop_error("jwk header missing or not an asymmetric public key")
        if _PRIVATE_MEMBERS & raw.keys():
            raise dpop_error("jwk header holds private key material")
        try:
            key = jwk.import_key(raw)
        except (JoseError, ValueError, TypeError):
            raise dpop_error("unusable jwk header") from None
        if not isinstance(key, jwk.RSAKey | jwk.ECKey | jwk.OKPKey):
            raise dpop_error("jwk header is not an asymmetric key")
        return key

    def _check_claims(self, claims: dict[str, Any], *, method: str, url: str, access_token: str) -> None:
        jti, htm, htu, iat, ath = (claims.get(n) for n in ("jti", "htm", "htu", "iat", "ath"))
        if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
            raise dpop_error("jti missing or malformed")
        if htm != method.upper():
            raise dpop_error("htm does not match the request method")
        if not isinstance(htu, str) or normalise_htu(htu) != normalise_htu(url):
            raise dpop_error("htu does not match the request URL")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise dpop_error("iat missing")
        now = self._clock()
        if iat > now + self.leeway_s or iat < now - self.max_age_s:
            raise dpop_error("proof is not fresh (iat)")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, b64url_sha256(access_token)):
            raise dpop_error("ath does not match the access token")


def normalise_htu(url: str) -> str:
    """Scheme and host lower-cased, default port, query and fragment dropped (RFC 9449 §4.3)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"
