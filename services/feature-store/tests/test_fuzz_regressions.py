"""Inputs the public-API fuzz test (tests/integration/test_public_api_fuzz.py) found crashing, now 4xx or handled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient

from mlp_core.auth import Principal
from mlp_core.http import install_problem_handlers
from mlp_feature_store.api.rest import build_router
from mlp_feature_store.domain.ingestion import rows_to_batch

YAML = """
entities:
  - name: user
    join_keys: [{name: user_id, dtype: string}]
feature_views:
  - name: stats
    entities: [user]
    ttl_seconds: 86400
    features:
      - {name: clicks, dtype: int64}
"""


def _client(service) -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    principal = Principal(subject="tester", client_id="c", scopes=frozenset({"features:read", "features:write"}),
                          projects=frozenset({"p1"}), token="t")

    @app.middleware("http")
    async def fake_auth(request, call_next):
        request.scope.setdefault("state", {})["principal"] = principal
        return await call_next(request)

    app.include_router(build_router(service))
    return TestClient(app, raise_server_exceptions=False)


def test_rows_to_batch_accepts_ints_beyond_64_bits() -> None:
    """pyarrow raises OverflowError (not ArrowInvalid) for such ints: it was an unhandled 500."""
    batch = rows_to_batch([{"clicks": 2**64}, {"clicks": 1}])
    assert batch.column(0).to_pylist() == [str(2**64), "1"]


def test_ingest_rows_with_a_huge_int_is_not_a_server_error(fs) -> None:
    client = _client(fs)
    assert client.post("/projects/p1/apply", content=YAML,
                       headers={"content-type": "application/yaml"}).status_code == 200
    t = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    r = client.post("/projects/p1/feature-views/stats/rows", json={"rows": [
        {"user_id": "u1", "event_timestamp": t, "clicks": 10**30},
        {"user_id": "u2", "event_timestamp": t, "clicks": 3}]})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json")
    else:
        assert r.json()["rows_quarantined"] >= 1
    r = client.post("/projects/p1/feature-views/nope/rows", json={"rows": [{"x": -(2**70)}]})
    assert r.status_code == 404, r.text
