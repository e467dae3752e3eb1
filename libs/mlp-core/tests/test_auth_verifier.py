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
