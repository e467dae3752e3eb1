"""TokenVerifier against a real local issuer (discovery + JWKS over HTTP)."""

from __future__ import annotations

import re
import time

import pytest

from mlp_core.auth import Principal, TokenVerifier
from mlp_core.errors import PermissionDenied, Unauthenticated
from mlp_core.testing.tokens import TestIssuer, bad_token_names, bad_tokens

BAD_NAMES = bad_token_names()  # names only; tokens are minted per test


async def test_good_token_gives_principal(test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(sub="alice", client_id="cli", scope="features:read predict", projects=["p1", "p2"])
    principal = await test_issuer.verifier().verify(token)
    assert principal.subject == "alice"
    assert principal.client_id == "cli"
    assert principal.scopes == frozenset({"features:read", "predict"})
    assert principal.projects == frozenset({"p1", "p2"})
    assert principal.token == token
    assert principal.claims["iss"] == test_issuer.issuer
    assert token not in repr(principal)


async def test_typ_is_case_insensitive_and_media_type_form_accepted(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier()
    for typ in ("AT+JWT", "application/at+jwt"):
        await verifier.verify(test_issuer.mint(header_overrides={"typ": typ}))


async def test_scp_list_and_audience_list(test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(scope=None, scp=["registry:read"], aud=["other", "mlp"], projects=None)
    principal = await test_issuer.verifier().verify(token)
    assert principal.scopes == frozenset({"registry:read"})
    assert principal.projects == frozenset()


@pytest.mark.parametrize("alg", ["RS256", "PS256", "EdDSA"])
async def test_other_allowed_algorithms(alg: str) -> None:
    with TestIssuer(alg=alg) as issuer:
        principal = await issuer.verifier().verify(issuer.mint())
        assert principal.subject == "test-client"


async def test_leeway_accepts_slightly_expired(test_issuer: TestIssuer) -> None:
    now = int(time.time())
    token = test_issuer.mint(iat=now - 300, nbf=now - 300, exp=now - 10)
    await test_issuer.verifier(leeway_s=30).verify(token)
    with pytest.raises(Unauthenticated):
        await test_issuer.verifier(leeway_s=0).verify(token)


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_token_refused(test_issuer: TestIssuer, name: str) -> None:
    token = bad_tokens(test_issuer)[name]
    verifier = test_issuer.verifier()
    await verifier.jwks.refresh()  # keys known: refusals must come from the checks, not a missing key
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    detail = info.value.detail
    assert detail.startswith("invalid access token") or "token" in detail
    assert token[:40] not in detail
    assert not [p for p in test_issuer.requests if p.startswith("/evil")], "fetched a token-supplied URL"


async def test_header_urls_are_never_fetched(test_issuer: TestIssuer) -> None:
    tokens = bad_tokens(test_issuer)
    verifier = test_issuer.verifier()
    for name in ("jku", "x5u", "embedded_jwk", "x5c"):
        with pytest.raises(Unauthenticated, match="not accepted"):
            await verifier.verify(tokens[name])
    assert test_issuer.requests == []  # refused before any fetch at all


async def test_claims_rechecked_cheaply_before_key_fetch(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier()
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(bad_tokens(test_issuer)["expired"])
    assert test_issuer.jwks_requests == 0


async def test_specific_reasons(test_issuer: TestIssuer) -> None:
    tokens = bad_tokens(test_issuer)
    verifier = test_issuer.verifier()
    expected = {
        "issuer_trailing_slash": "wrong issuer",
        "wrong_audience": "wrong audience",
        "alg_none": "algorithm not allowed",
        "hs256_with_public_key": "algorithm not allowed",
        "typ_jwt": "typ must be at+jwt",
        "lifetime_over_max": "lifetime",
        "tampered_payload": "bad signature",
        "forged_signature": "bad signature",
        "unknown_kid": "unknown signing key",
        "kid_path_traversal": "kid",
        "kid_sql": "kid",
        "oversized": "too large",
        "not_yet_valid": "not yet valid",
    }
    for name, reason in expected.items():
        with pytest.raises(Unauthenticated, match=re.escape(reason)):
            await verifier.verify(tokens[name])


def test_symmetric_algorithms_cannot_be_configured(test_issuer: TestIssuer) -> None:
    for algs in (("HS256",), ("none",), ("RS256", "HS512")):
        with pytest.raises(ValueError):
            TokenVerifier(test_issuer.issuer, "mlp", test_issuer.jwks_cache(), algorithms=algs)


async def test_key_rotation_picks_up_new_kid(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier()
    verifier.jwks.refetch_cooldown_s = 0
    await verifier.verify(test_issuer.mint())
    new_kid = test_issuer.add_key("ES256", activate=True)
    principal = await verifier.verify(test_issuer.mint())
    assert principal.subject == "test-client"
    assert new_kid in verifier.jwks.known_kids
    assert test_issuer.jwks_requests == 2


def _principal(scopes: set[str], projects: set[str]) -> Principal:
    return Principal("s", "c", frozenset(scopes), frozenset(projects), token="t", claims={})


def test_principal_require_and_tenancy() -> None:
    user = _principal({"features:read"}, {"default"})
    user.require("features:read")
    with pytest.raises(PermissionDenied, match="registry:write"):
        user.require("registry:write")
    assert user.can_access("default")
    assert not user.can_access("other")
    admin = _principal({"admin"}, set())
    admin.require("registry:approve")
    assert admin.can_access("anything")
    service = _principal({"registry:read"}, {"*"})
    assert service.can_access("other")
    with pytest.raises(PermissionDenied):
        service.require("admin")


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_verified_token_is_cached_and_skips_the_signature_check(test_issuer: TestIssuer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = test_issuer.verifier()
    token = test_issuer.mint(sub="alice")
    first = await verifier.verify(token)
    assert verifier.cached_tokens == 1

    def no_crypto(*_a: object, **_k: object) -> None:
        raise AssertionError("signature checked again for a cached token")

    monkeypatch.setattr("mlp_core.auth.verifier.jws.deserialize_compact", no_crypto)
    assert await verifier.verify(token) is first
    with pytest.raises(TypeError):
        first.claims["sub"] = "mallory"  # type: ignore[index]  # shared principals are read-only


async def test_expired_cached_token_is_refused(test_issuer: TestIssuer) -> None:
    clock = _Clock()
    now = int(clock.now)
    verifier = test_issuer.verifier(clock=clock, leeway_s=0, cache_ttl_s=3600)
    token = test_issuer.mint(iat=now, nbf=now, exp=now + 30)
    await verifier.verify(token)
    clock.now = now + 29
    await verifier.verify(token)  # still valid: served from the cache
    clock.now = now + 31
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier.verify(token)
    assert verifier.cached_tokens == 0


async def test_cache_entry_lives_at_most_ttl_then_is_verified_again(test_issuer: TestIssuer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    verifier = test_issuer.verifier(clock=clock, cache_ttl_s=60)
    token = test_issuer.mint(lifetime_s=600, iat=int(clock.now), nbf=int(clock.now), exp=int(clock.now) + 600)
    await verifier.verify(token)
    calls = 0
    real = __import__("mlp_core.auth.verifier", fromlist=["jws"]).jws.deserialize_compact

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr("mlp_core.auth.verifier.jws.deserialize_compact", counting)
    clock.now += 59
    await verifier.verify(token)
    assert calls == 0
    clock.now += 2
    await verifier.verify(token)
    assert calls == 1


async def test_cache_is_bounded_lru_and_never_caches_refusals(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier(cache_size=3)
    tokens = [test_issuer.mint(sub=f"user-{i}") for i in range(5)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier.cached_tokens == 3
    await verifier.verify(tokens[2])  # most recently used now; tokens[3] is the oldest
    await verifier.verify(test_issuer.mint(sub="late"))
    assert verifier.cached_tokens == 3
    for name, bad in list(bad_tokens(test_issuer).items())[:10]:
        with pytest.raises(Unauthenticated):
            await verifier.verify(bad)
        with pytest.raises(Unauthenticated):
            await verifier.verify(bad)  # a refusal is refused again, never cached
    assert verifier.cached_tokens == 3
    verifier.clear_cache()
    assert verifier.cached_tokens == 0


async def test_cache_can_be_turned_off(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier(cache_size=0)
    await verifier.verify(test_issuer.mint())
    assert verifier.cached_tokens == 0


async def test_tampered_copy_of_a_cached_token_is_refused(test_issuer: TestIssuer) -> None:
    verifier = test_issuer.verifier()
    token = test_issuer.mint()
    await verifier.verify(token)
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"
    with pytest.raises(Unauthenticated):
        await verifier.verify(forged)
