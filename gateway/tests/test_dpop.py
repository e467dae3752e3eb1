"""DPoP (RFC 9449) sender-constrained tokens through the gateway, with Redis replay protection."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, bearer, md
from joserfc import jwk

from mlp_core.testing.tokens import TestIssuer, sign_compact
from mlp_gateway.dpop import b64url_sha256, normalise_htu

PATH = "/api/v1/feature-store/whoami"
URL = "http://gateway.test" + PATH


def client_key() -> jwk.ECKey:
    return jwk.ECKey.generate_key("P-256")


def proof(key: jwk.ECKey, token: str, *, htm: str = "GET", htu: str = URL, iat: float | None = None,
          jti: str | None = None, header: dict[str, Any] | None = None, ath: str | None = None) -> str:
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False), **(header or {})}
    claims = {"jti": jti or uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": int(iat or time.time()),
              "ath": ath if ath is not None else b64url_sha256(token)}
    return sign_compact({k: v for k, v in head.items() if v is not None}, claims, key)


def bound_token(issuer: TestIssuer, key: jwk.ECKey) -> str:
    return issuer.mint(scope="features:read", cnf={"jkt": key.thumbprint()})


def dpop_headers(token: str, proof_jwt: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof_jwt, "Host": "gateway.test"}  # htu is http://gateway.test/...


async def test_valid_proof_is_accepted_once(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    key = client_key()
    token = bound_token(test_issuer, key)
    p = proof(key, token)
    first = await gateway.client.get(PATH, headers=dpop_headers(token, p))
    assert first.status_code == 200, first.text
    replay = await gateway.client.get(PATH, headers=dpop_headers(token, p))
    assert replay.status_code == 401
    assert "replayed" in replay.json()["detail"]
    again = await gateway.client.get(PATH, headers=dpop_headers(token, proof(key, token)))
    assert again.status_code == 200


@pytest.mark.parametrize("case", [
    "no_proof", "bearer_scheme", "wrong_key", "wrong_htm", "wrong_htu", "stale_iat", "future_iat", "wrong_ath",
    "typ_jwt", "alg_none", "hs256", "private_jwk", "two_proofs", "unbound_token_with_dpop", "garbage",
])
async def test_bad_proofs_are_refused(gateway: RunningGateway, test_issuer: TestIssuer, case: str) -> None:
    key = client_key()
    token = bound_token(test_issuer, key)
    headers: dict[str, Any] = dpop_headers(token, proof(key, token))
    if case == "no_proof":
        headers.pop("DPoP")
    elif case == "bearer_scheme":
        headers = bearer(token)
    elif case == "wrong_key":
        headers["DPoP"] = proof(client_key(), token)
    elif case == "wrong_htm":
        headers["DPoP"] = proof(key, token, htm="POST")
    elif case == "wrong_htu":
        headers["DPoP"] = proof(key, token, htu="http://gateway.test/api/v1/registry/whoami")
    elif case == "stale_iat":
        headers["DPoP"] = proof(key, token, iat=time.time() - 600)
    elif case == "future_iat":
        headers["DPoP"] = proof(key, token, iat=time.time() + 600)
    elif case == "wrong_ath":
        headers["DPoP"] = proof(key, token, ath=b64url_sha256("another token"))
    elif case == "typ_jwt":
        headers["DPoP"] = proof(key, token, header={"typ": "JWT"})
    elif case == "alg_none":
        claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": URL, "iat": int(time.time()),
                  "ath": b64url_sha256(token)}
        headers["DPoP"] = sign_compact({"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)},
                                       claims, None)
    elif case == "hs256":
        claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": URL, "iat": int(time.time()),
                  "ath": b64url_sha256(token)}
        headers["DPoP"] = sign_compact({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.as_dict(private=False)},
                                       claims, key.thumbprint().encode())
    elif case == "private_jwk":
        headers["DPoP"] = proof(key, token, header={"jwk": key.as_dict(private=True)})
    elif case == "two_proofs":
        headers = [("Authorization", f"DPoP {token}"), ("DPoP", proof(key, token)), ("DPoP", proof(key, token))]
    elif case == "unbound_token_with_dpop":
        plain = test_issuer.mint(scope="features:read")
        headers = dpop_headers(plain, proof(key, plain))
    elif case == "garbage":
        headers["DPoP"] = "not.a.jwt"
    reply = await gateway.client.get(PATH, headers=headers)
    assert reply.status_code == 401, reply.text
    assert reply.headers["content-type"] == "application/problem+json"


async def test_dpop_bound_token_is_refused_on_grpc(gateway: RunningGateway, test_issuer: TestIssuer) -> None:
    token = bound_token(test_issuer, client_key())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.stub("/mlp.featurestore.v1.FeatureStoreService/GetThing")(b"1", metadata=md(token), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_htu_normalisation() -> None:
    assert normalise_htu("HTTPS://Example.COM:443/a?q=1#f") == "https://example.com/a"
    assert normalise_htu("http://h:8000/a") == "http://h:8000/a"
    assert normalise_htu("http://h/a") != normalise_htu("http://h/b")
