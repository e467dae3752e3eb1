"""REST edge: routes, problem+json errors, Arrow/Parquet streams, file uploads."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mlp_core.auth import Principal
from mlp_core.http import install_problem_handlers
from mlp_feature_store.api.rest import build_router

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
      - {name: email, dtype: string, pii: true}
"""


def _client(service, scopes: set[str], projects: set[str] | None = None) -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    principal = Principal(subject="tester", client_id="c", scopes=frozenset(scopes),
                          projects=frozenset(projects or {"p1"}), token="t")

    @app.middleware("http")
    async def fake_auth(request, call_next):  # stands in for AuthMiddleware (tested in mlp_core)
        request.scope.setdefault("state", {})["principal"] = principal
        return await call_next(request)

    app.include_router(build_router(service))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(fs) -> TestClient:
    return _client(fs, {"features:read", "features:write"})


def test_plan_apply_and_crud(client: TestClient) -> None:
    r = client.post("/projects/p1/plan", content=YAML, headers={"content-type": "application/yaml"})
    assert r.status_code == 200 and [c["action"] for c in r.json()["changes"]] == ["create", "create"]
    r = client.post("/projects/p1/apply", content=YAML, headers={"content-type": "application/yaml"})
    assert r.status_code == 200
    assert client.get("/projects/p1/feature-views/stats").json()["version"] == 1
    assert [e["name"] for e in client.get("/projects/p1/entities").json()["items"]] == ["user"]
    bad = client.put("/projects/p1/feature-views/stats", json={
        "entities": ["user"], "features": [{"name": "clicks", "dtype": "string"}]})
    assert bad.status_code == 409 and bad.headers["content-type"].startswith("application/problem+json")
    assert "version" in bad.json()["detail"]
    assert client.get("/projects/p1/feature-views/nope").status_code == 404
    assert client.get("/projects/p1/gadgets").status_code == 422
    assert client.post("/projects/p1/apply", content="[1, 2", headers={
        "content-type": "application/yaml"}).status_code == 422


def test_ingest_file_and_read_back(client: TestClient, fs) -> None:
    client.post("/projects/p1/apply", content=YAML, headers={"content-type": "application/yaml"})
    t = datetime.now(UTC) - timedelta(minutes=5)
    table = pa.table({"user_id": ["u1", "u2", None], "event_timestamp": pa.array([t, t, t], pa.timestamp(
        "us", tz="UTC")), "clicks": [3, 4, 5], "email": ["a", "b", "c"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    r = client.post("/projects/p1/feature-views/stats/files?format=parquet", content=buf.getvalue())
    assert r.status_code == 200, r.text
    assert (r.json()["rows_written"], r.json()["rows_quarantined"]) == (2, 1)
    assert client.post("/projects/p1/feature-views/stats/files?format=csv",
                       content=b"user_id,event_timestamp\nu1,2024-01-01T00:00:00\n").status_code == 422
    r = client.post("/projects/p1/historical-features", json={
        "entities": {"user_id": ["u2", "u1"], "event_timestamp": [datetime.now(UTC).isoformat()] * 2},
        "features": ["stats:clicks"]})
    assert r.status_code == 200
    out = ipc.open_stream(r.content).read_all()
    assert out.column("stats__clicks").to_pylist() == [4, 3]
    r = client.post("/projects/p1/historical-features", json={
        "entities": {"user_id": ["u1"], "event_timestamp": ["2024-01-01T00:00:00"]}, "features": ["stats:clicks"]})
    assert r.status_code == 422 and "time zone" in r.json()["detail"]
    assert client.post("/projects/p1/feature-views/stats/materialize", json={}).json()["entities_written"] == 2
    r = client.post("/projects/p1/online-features", json={"entities": {"user_id": ["u1", "zz"]},
                                                          "features": ["stats:clicks"]})
    assert r.json()["features"]["stats__clicks"]["values"] == [3, None]
    assert r.json()["features"]["stats__clicks"]["statuses"] == ["PRESENT", "NOT_FOUND"]
    r = client.post("/projects/p1/online-features", json={"entities": {"user_id": ["u1"]},
                                                          "features": ["stats:email"]})
    assert r.status_code == 403
    pii = _client(fs, {"features:read", "features:read-pii"})
    assert pii.post("/projects/p1/online-features", json={"entities": {"user_id": ["u1"]},
                                                          "features": ["stats:email"]}).status_code == 200


def test_other_project_is_not_found(fs) -> None:
    c = _client(fs, {"features:read", "features:write"}, {"p2"})
    assert c.get("/projects/p1/entities").status_code == 404
    assert c.post("/projects/p1/online-features", json={"entities": {"user_id": ["u1"]},
                                                       "features": ["x:y"]}).status_code == 404


def test_bodies_refuse_unknown_fields(client: TestClient) -> None:
    client.post("/projects/p1/apply", content=YAML, headers={"content-type": "application/yaml"})
    for path, body in [
        ("/projects/p1/online-features", {"features": ["stats:clicks"], "entities": {"user_id": ["u1"]},
                                          "project": "other"}),
        ("/projects/p1/feature-views/stats/materialize", {"owner": "mallory"}),
        ("/projects/p1/erasures", {"entity": "user", "keys": {"user_id": "u1"}, "tenant": "x"}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
