"""AuthMiddleware and the FastAPI dependencies, through a real ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from mlp_core.auth import AuthMiddleware, CurrentPrincipal, Principal, current_principal, require_scope
from mlp_core.errors import DomainError
from mlp_core.testing.tokens import TestIssuer, bad_token_names, bad_tokens

BAD_NAMES = bad_token_names()


def make_app(issuer: TestIssuer) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuthMiddleware, verifier=issuer.verifier())

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(exc.problem(instance=request.url.path), status_code=exc.status,
                            media_type="application/problem+json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/whoami")
    async def whoami(principal: CurrentPrincipal) -> dict[str, object]:
        assert current_principal() is principal  # the context variable is bound too
        return {"subject": principal.subject, "client_id": principal.client_id,
                "scopes": sorted(principal.scopes), "projects": sorted(principal.projects)}

    @app.get("/sync-whoami")
    def sync_whoami() -> dict[str, str]:
        return {"subject": current_principal().subject}

    @app.post("/models")
    async def create(principal: Principal = Depends(require_scope("registry:write"))) -> dict[str, str]:
        return {"by": principal.subject}

    return app


@pytest.fixture
async def client(test_issuer: TestIssuer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(test_issuer))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthenticated" and body["detail"]
    assert "Traceback" not in response.text


async def test_good_token_reaches_endpoint(client: httpx.AsyncClient, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint(sub="bob", client_id="mlp-demo", scope="features:read predict",
                             projects=["default"])
    response = await client.get("/whoami", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"subject": "bob", "client_id": "mlp-demo",
                               "scopes": ["features:read", "predict"], "projects": ["default"]}
    response = await client.get("/sync-whoami", headers=bearer(token))
    assert response.json() == {"subject": "bob"}


async def test_public_paths_need_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    assert_401(await client.get("/healthzzz"))  # a prefix of a word is not a public path


async def test_missing_and_malformed_authorization(client: httpx.AsyncClient, test_issuer: TestIssuer) -> None:
    assert_401(await client.get("/whoami"))
    token = test_issuer.mint()
    for value in (f"Basic {token}", "Bearer", "Bearer ", f"Bearer {token} extra", token):
        assert_401(await client.get("/whoami", headers={"Authorization": value}))


async def test_invalid_token_header_says_invalid_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/whoami", headers=bearer("a.b.c"))
    assert_401(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_token_in_query_string_refused(client: httpx.AsyncClient, test_issuer: TestIssuer) -> None:
    token = test_issuer.mint()
    assert_401(await client.get("/whoami", params={"access_token": token}))
    # even alongside a good header: URLs with tokens must not be accepted
    assert_401(await client.get("/whoami", params={"access_token": token}, headers=bearer(token)))


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_token_refused(client: httpx.AsyncClient, test_issuer: TestIssuer, name: str) -> None:
    token = bad_tokens(test_issuer)[name]
    response = await client.get("/whoami", headers=bearer(token))
    assert_401(response)
    assert token not in response.text
    assert not [p for p in test_issuer.requests if p.startswith("/evil")]


async def test_require_scope(client: httpx.AsyncClient, test_issuer: TestIssuer) -> None:
    reader = test_issuer.mint(scope="registry:read")
    response = await client.post("/models", headers=bearer(reader))
    assert response.status_code == 403
    assert "registry:write" in response.json()["detail"]
    writer = test_issuer.mint(sub="w", scope="registry:write")
    assert (await client.post("/models", headers=bearer(writer))).json() == {"by": "w"}
    admin = test_issuer.mint(sub="root", scope="admin")
    assert (await client.post("/models", headers=bearer(admin))).json() == {"by": "root"}
