"""The fast online port answers exactly as the app's route: same bodies, statuses and problems."""

from __future__ import annotations

import json

import httpx
import pytest

from mlp_core.testing.tokens import TestIssuer

from .grpc_support import Running, free_port, running_host
from .test_grpc import _define

PATH = "/api/v1/feature-store/projects/{project}/online-features"


@pytest.fixture
async def fast(test_issuer: TestIssuer, pg_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    async with running_host(test_issuer, pg_url, redis_url, feature_store_online_port=free_port()) as running:
        app_port = await running.host.start_http("127.0.0.1", 0, lifespan="off")
        try:
            yield running, app_port, running.host.fast_bound_port
        finally:
            await running.host.stop_http()


def _token(r: Running, scope: str = "features:read", projects: tuple[str, ...] = ("p1",)) -> str:
    return r.issuer.mint(scope=scope, projects=list(projects))


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.headers["content-type"] == b.headers["content-type"]
    left, right = a.json(), b.json()
    if isinstance(left, dict) and "features" in left:  # ages move on between the two calls
        for body in (left, right):
            for col in body["features"].values():
                col["ages_s"] = [age is None for age in col["ages_s"]]
    for body in (left, right):
        if isinstance(body, dict):
            body.pop("trace_id", None)
    assert left == right


async def test_answers_match_the_app_route(fast) -> None:  # type: ignore[no-untyped-def]
    r, app_port, fast_port = fast
    await _define(r)
    reader = _token(r)
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("p1", {"authorization": f"Bearer {reader}"},
         json.dumps({"features": ["stats:clicks", "stats:views"], "entities": {"user_id": ["u1", "u2", "nobody"]},
                     "max_staleness_s": 3600}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"},  # PII without the PII scope
         json.dumps({"features": ["stats:email"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {"authorization": f"Bearer {_token(r, 'features:read features:read-pii')}"},
         json.dumps({"features": ["stats:email"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"},  # unknown feature
         json.dumps({"features": ["stats:nope"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"},  # wrong type of entity key
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": [{"x": 1}]}}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"},  # mass assignment
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}, "tenant": "p2"}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"},  # not a positive staleness
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}, "max_staleness_s": 0}).encode()),
        ("p1", {"authorization": f"Bearer {reader}"}, b'{"features": ["stats:clicks"], "entities": '),  # broken
        ("p2", {"authorization": f"Bearer {reader}"},  # another tenant's project
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {}, json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {"authorization": "Bearer not.a.token"},
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}}).encode()),
        ("p1", {"authorization": f"Basic {reader}"},
         json.dumps({"features": ["stats:clicks"], "entities": {"user_id": ["u1"]}}).encode()),
    ]
    statuses = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app_port}") as app, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{fast_port}") as edge:
        for project, headers, body in cases:
            headers = {**headers, "content-type": "application/json"}
            a = await app.post(PATH.format(project=project), headers=headers, content=body)
            b = await edge.post(PATH.format(project=project), headers=headers, content=body)
            _same(a, b)
            statuses.append(b.status_code)
        # the answers are real: values, then each refusal with its own status
        assert statuses == [200, 403, 200, 422, 422, 422, 422, 422, 404, 401, 401, 401], str(statuses)
        good = (await edge.post(PATH.format(project="p1"), headers={"authorization": f"Bearer {reader}"},
                                content=cases[0][2])).json()
        assert good["features"]["stats__clicks"]["values"] == [3, 5, None]
        assert good["features"]["stats__clicks"]["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
        # the fast port serves nothing else
        other = await edge.get("/api/v1/feature-store/projects/p1/feature-views",
                               headers={"authorization": f"Bearer {reader}"})
        assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"
