"""The dev OIDC issuer: discovery, JWKS, client-credentials grant, persistence, and real verification."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mlp_core.auth import ClientCredentialsTokenSource, JwksCache, TokenVerifier
from mlp_core.broker import free_port
from mlp_core.devissuer import create_app
from mlp_core.errors import Unauthenticated

ISSUER = "http://issuer.test"
CLIENTS = {"clients": {
    "demo": {"client_secret": "s3cret", "scopes": "features:read predict", "projects": ["default"]},
    "svc": {"client_secret": "svc-secret", "scopes": ["registry:read"], "projects": ["*"], "audience": "mlp"},
}}


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tmp_path, ISSUER, CLIENTS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as client:
        yield client


def verifier_for(http: httpx.AsyncClient) -> TokenVerifier:
    return TokenVerifier(ISSUER, "mlp", JwksCache(ISSUER, http_client=http), max_lifetime_s=3600)


async def test_discovery_and_jwks(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/.well-known/openid-configuration")).json()
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == f"{ISSUER}/jwks" and doc["token_endpoint"] == f"{ISSUER}/token"
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    keys = (await http.get("/jwks")).json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC" and keys[0]["alg"] == "ES256" and keys[0]["kid"]
    assert "d" not in keys[0]  # never the private part


async def test_grant_basic_and_token_verifies(http: httpx.AsyncClient) -> None:
    response = await http.post("/token", data={"grant_type": "client_credentials"}, auth=("demo", "s3cret"))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    principal = await verifier_for(http).verify(body["access_token"])
    assert principal.subject == "demo" and principal.client_id == "demo"
    assert principal.scopes == frozenset({"features:read", "predict"})
    assert principal.projects == frozenset({"default"})
    claims = principal.claims
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"] and claims["aud"] == "mlp"


async def test_grant_post_with_scope_subset(http: httpx.AsyncClient) -> None:
    response = await http.post("/token", data={"grant_type": "client_credentials", "client_id": "demo",
                                               "client_secret": "s3cret", "scope": "predict"})
    assert response.status_code == 200
    assert response.json()["scope"] == "predict"
    principal = await verifier_for(http).verify(response.json()["access_token"])
    assert principal.scopes == frozenset({"predict"})


@pytest.mark.parametrize(("data", "auth", "status", "error"), [
    ({"grant_type": "client_credentials"}, ("demo", "wrong"), 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, ("nobody", "s3cret"), 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "nope"}, None, 401,
     "invalid_client"),
    ({"grant_type": "client_credentials", "client_secret": "s3cret"}, ("demo", "s3cret"), 401, "invalid_client"),
    ({"grant_type": "client_credentials", "scope": "admin"}, ("demo", "s3cret"), 400, "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "predict registry:write"}, ("demo", "s3cret"), 400,
     "invalid_scope"),
    ({"grant_type": "password", "username": "u"}, ("demo", "s3cret"), 400, "unsupported_grant_type"),
    ({}, ("demo", "s3cret"), 400, "invalid_request"),
    ({"scope": "predict"}, ("demo", "s3cret"), 400, "invalid_request"),
    ({"grant_type": "client_credentials", "audience": "other"}, ("demo", "s3cret"), 400, "invalid_target"),
])
async def test_grant_errors(http: httpx.AsyncClient, data: dict[str, str], auth: tuple[str, str] | None,
                            status: int, error: str) -> None:
    response = await http.post("/token", data=data, auth=auth)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "access_token" not in response.json()


async def test_non_form_body_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/token", json={"grant_type": "client_credentials"}, auth=("demo", "s3cret"))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = await http.post("/token", content=b"grant_type=client_credentials",
                               headers={"Authorization": "Basic !!!not-base64",
                                        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_token_source_caches_and_discovers(http: httpx.AsyncClient) -> None:
    source = ClientCredentialsTokenSource(issuer=ISSUER, client_id="svc", client_secret="svc-secret",
                                          scope="registry:read", http_client=http)
    first = await source.get_token()
    assert await source.get_token() == first
    assert source.fetches == 1
    assert "svc-secret" not in repr(source)
    principal = await verifier_for(http).verify(first)
    assert principal.can_access("any-project")
    source.invalidate()
    await source.get_token()
    assert source.fetches == 2


async def test_token_source_refreshes_before_expiry(http: httpx.AsyncClient) -> None:
    now = [0.0]
    source = ClientCredentialsTokenSource(token_endpoint=f"{ISSUER}/token", client_id="demo",
                                          client_secret="s3cret", http_client=http, clock=lambda: now[0])
    await source.get_token()
    now[0] = 900 - 61  # lifetime 900 s: reused until 60 s before expiry
    await source.get_token()
    assert source.fetches == 1
    now[0] = 900 - 59
    await source.get_token()
    assert source.fetches == 2


async def test_token_source_wrong_secret(http: httpx.AsyncClient) -> None:
    source = ClientCredentialsTokenSource(issuer=ISSUER, client_id="demo", client_secret="bad", http_client=http)
    with pytest.raises(Unauthenticated, match="invalid_client"):
        await source.get_token()


def test_default_clients_and_key_persisted(tmp_path: Path) -> None:
    create_app(tmp_path, ISSUER)
    issuer_dir = tmp_path / "issuer"
    clients = json.loads((issuer_dir / "clients.json").read_text())["clients"]
    assert {"mlp-admin", "mlp-demo", "mlp-approver", "mlp-other-tenant", "svc-gateway", "svc-feature-store",
            "svc-training", "svc-registry", "svc-serving", "svc-experiments", "svc-monitoring"} <= set(clients)
    assert "admin" in clients["mlp-admin"]["scopes"]
    assert clients["mlp-other-tenant"]["projects"] == ["other"]
    assert clients["svc-serving"]["projects"] == ["*"]
    assert "registry:approve" in clients["mlp-approver"]["scopes"]
    assert len({c["client_secret"] for c in clients.values()}) == len(clients)
    for name in ("clients.json", "signing-keys.json"):
        assert stat.S_IMODE(os.stat(issuer_dir / name).st_mode) == 0o600
    kid = create_app(tmp_path, ISSUER).state.signing_keys.active.kid
    assert kid == create_app(tmp_path, ISSUER).state.signing_keys.active.kid  # same key after restart
    again = json.loads((issuer_dir / "clients.json").read_text())["clients"]
    assert again == clients


async def test_tokens_verify_after_restart(tmp_path: Path) -> None:
    first = create_app(tmp_path, ISSUER, CLIENTS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url=ISSUER) as c1:
        token = (await c1.post("/token", data={"grant_type": "client_credentials"},
                               auth=("demo", "s3cret"))).json()["access_token"]
    second = create_app(tmp_path, ISSUER, CLIENTS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url=ISSUER) as c2:
        assert (await verifier_for(c2).verify(token)).subject == "demo"


def test_clients_yaml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "clients.yaml"
    cfg.write_text("clients:\n  ci:\n    client_secret: x\n    scopes: predict\n    projects: [p]\n")
    app = create_app(tmp_path, ISSUER, cfg)
    assert app.state.clients["ci"].scopes == ("predict",)
    cfg.write_text("clients:\n  ci:\n    scopes: predict\n")
    with pytest.raises(ValueError, match="client_secret"):
        create_app(tmp_path, ISSUER, cfg)


async def test_console_entry_point_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLP_DEV_ISSUER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "mlp_core.devissuer", "--state-dir", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    issuer = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    if (await client.get(f"{issuer}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            creds = json.loads((tmp_path / "issuer" / "clients.json").read_text())["clients"]["mlp-demo"]
            source = ClientCredentialsTokenSource(issuer=issuer, client_id="mlp-demo",
                                                  client_secret=creds["client_secret"], http_client=client)
            token = await source.get_token()
            principal = await TokenVerifier(issuer, "mlp", JwksCache(issuer, http_client=client)).verify(token)
            assert principal.subject == "mlp-demo" and principal.projects == frozenset({"default"})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
