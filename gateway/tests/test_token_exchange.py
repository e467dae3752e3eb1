"""RFC 8693 token exchange as an option: the gateway forwards an exchanged token, not the caller's."""

from __future__ import annotations

import base64

import httpx
import pytest
from gateway_support import Service, bearer, gateway_settings, running_gateway, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlp_core.errors import Unauthenticated
from mlp_core.testing.tokens import TestIssuer
from mlp_gateway.exchange import GRANT_TYPE, TokenExchanger


def exchange_endpoint(issuer: TestIssuer, seen: list[dict[str, str]]) -> Starlette:
    """A token endpoint that exchanges a valid subject token for one with ``act`` = the gateway."""

    async def token(request: Request) -> JSONResponse:
        form = dict(await request.form())
        seen.append(form)
        auth = request.headers.get("authorization", "")
        if auth != "Basic " + base64.b64encode(b"svc-gateway:s3cret").decode():
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != GRANT_TYPE or not form.get("subject_token"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        try:
            principal = await issuer.verifier().verify(form["subject_token"])
        except Unauthenticated:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        exchanged = issuer.mint(sub=principal.subject, scope=" ".join(sorted(principal.scopes)),
                                projects=sorted(principal.projects), client_id="svc-gateway",
                                act={"sub": "svc-gateway"}, aud=["mlp", form.get("audience", "")])
        return JSONResponse({"access_token": exchanged, "token_type": "Bearer", "expires_in": 300,
                             "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


async def test_gateway_forwards_exchanged_token(tmp_path, pg_url, redis_url, test_issuer: TestIssuer,
                                                service: Service) -> None:
    seen: list[dict[str, str]] = []
    async with serve(exchange_endpoint(test_issuer, seen), lifespan="off") as idp:
        settings = gateway_settings(tmp_path, pg_url, redis_url, test_issuer.issuer, service,
                                    gateway_token_exchange=True, gateway_token_exchange_endpoint=idp + "/token",
                                    oidc_client_id="svc-gateway", oidc_client_secret="s3cret")
        async with running_gateway(settings, test_issuer) as gw:
            caller = test_issuer.mint(sub="alice", scope="features:read", projects=["p1"])
            for _ in range(2):
                reply = await gw.client.get("/api/v1/feature-store/headers", headers=bearer(caller))
                assert reply.status_code == 200
            forwarded = service.state.seen_headers[-1]["authorization"].removeprefix("Bearer ")
            assert forwarded != caller
            principal = await test_issuer.verifier().verify(forwarded)
            assert principal.subject == "alice"
            assert principal.claims["act"] == {"sub": "svc-gateway"}
            assert len(seen) == 1, "the exchanged token is cached"
            assert seen[0]["audience"] == "feature-store"


async def test_exchange_refusal_is_401(test_issuer: TestIssuer) -> None:
    async with serve(exchange_endpoint(test_issuer, []), lifespan="off") as idp:
        exchanger = TokenExchanger(token_endpoint=idp + "/token", client_id="svc-gateway", client_secret="wrong")
        with pytest.raises(Unauthenticated):
            await exchanger.exchange(test_issuer.mint(), "registry")
        await exchanger.aclose()
    dead = TokenExchanger(token_endpoint="http://127.0.0.1:9/token", client_id="a", client_secret="b",
                          http_client=httpx.AsyncClient(timeout=1))
    from mlp_core.errors import Unavailable

    with pytest.raises(Unavailable):
        await dead.exchange("t", "registry")
    await dead.aclose()
