"""JwksCache: throttled refetch, TTL refresh, fail-open-with-known-keys / fail-closed-without."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from mlp_core.auth import JwksCache, JwksFetchError
from mlp_core.auth.jwks import parse_jwks
from mlp_core.errors import Unauthenticated
from mlp_core.testing.tokens import TestIssuer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_flood_of_random_kids_causes_at_most_one_fetch(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier()
    await verifier.verify(test_issuer.mint())  # warm: discovery + one JWKS fetch
    before = test_issuer.jwks_requests
    tokens = [test_issuer.mint(header_overrides={"kid": secrets.token_hex(8)}) for _ in range(1000)]

    async def attempt(token: str) -> bool:
        try:
            await verifier.verify(token)
        except Unauthenticated:
            return False
        return True

    results = await asyncio.gather(*(attempt(t) for t in tokens))
    assert not any(results)
    assert test_issuer.jwks_requests - before <= 1
    assert verifier.jwks.stats.jwks_fetches - 1 <= 1


async def test_cold_flood_fetches_once(test_issuer: TestIssuer) -> None:
    cache = test_issuer.jwks_cache()
    await asyncio.gather(*(cache.get_key(secrets.token_hex(6)) for _ in range(200)))
    assert test_issuer.jwks_requests == 1
    assert test_issuer.discovery_requests == 1


async def test_unknown_kid_refetch_after_cooldown(test_issuer: TestIssuer) -> None:
    clock = FakeClock()
    cache = test_issuer.jwks_cache(clock=clock, refetch_cooldown_s=30)
    assert await cache.get_key(test_issuer.active_kid) is not None
    kid = test_issuer.add_key()
    assert await cache.get_key(kid) is None  # within cooldown: no fetch
    assert test_issuer.jwks_requests == 1
    assert cache.stats.throttled_lookups == 1
    clock.now += 31
    assert await cache.get_key(kid) is not None
    assert test_issuer.jwks_requests == 2


async def test_periodic_refresh_after_ttl(test_issuer: TestIssuer) -> None:
    clock = FakeClock()
    cache = test_issuer.jwks_cache(clock=clock, ttl_s=600)
    await cache.get_key(test_issuer.active_kid)
    clock.now += 599
    await cache.get_key(test_issuer.active_kid)
    assert test_issuer.jwks_requests == 1
    clock.now += 2
    await cache.get_key(test_issuer.active_kid)
    assert test_issuer.jwks_requests == 2


async def test_known_keys_survive_idp_outage(test_issuer: TestIssuer) -> None:
    clock = FakeClock()
    verifier = test_issuer.verifier(jwks=test_issuer.jwks_cache(clock=clock))
    token = test_issuer.mint()
    await verifier.verify(token)
    test_issuer.stop()
    clock.now += 3600  # TTL over: a refresh is attempted and fails
    verifier.clear_cache()  # make this call look the key up again (a cached token would skip the JWKS)
    principal = await verifier.verify(token)
    assert principal.subject == "test-client"
    assert verifier.jwks.stats.fetch_failures == 1
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await verifier.verify(test_issuer.mint(header_overrides={"kid": "rotated-away"}))


async def test_fail_closed_when_no_key_known(test_issuer: TestIssuer) -> None:
    token = test_issuer.mint()
    test_issuer.stop()
    verifier = test_issuer.verifier()
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        await verifier.verify(token)
    with pytest.raises(JwksFetchError):
        await verifier.jwks.refresh()
    # the IdP comes back: after the cooldown the key is found
    test_issuer.start()
    verifier.jwks.refetch_cooldown_s = 0
    assert (await verifier.verify(token)).subject == "test-client"


async def test_discovery_issuer_must_match_exactly(test_issuer: TestIssuer) -> None:
    cache = JwksCache(test_issuer.issuer + "/")  # discovery says the issuer without the slash
    with pytest.raises(JwksFetchError, match="different issuer"):
        await cache.refresh()
    assert await cache.get_key(test_issuer.active_kid) is None


def test_parse_jwks_skips_symmetric_and_encryption_keys(test_issuer: TestIssuer) -> None:
    body = test_issuer.jwks()
    body["keys"] += [
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
        {**body["keys"][0], "kid": "enc", "use": "enc"},
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"},
        "not a key",
        {"kty": "EC"},
    ]
    keys = parse_jwks(body)
    assert set(keys) == {test_issuer.active_kid}
    with pytest.raises(JwksFetchError):
        parse_jwks({"nokeys": []})
