"""The fast online port answers exactly as the app's route: same bodies, statuses and problems."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from mlp_core.testing.tokens import TestIssuer
from mlp_feature_store.api.fast_online import GET_ONLINE_FEATURES
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

from .conftest import Caller
from .grpc_support import Running, free_port, ints, running_host, strings
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


def _aged(response: pb.GetOnlineFeaturesResponse) -> pb.GetOnlineFeaturesResponse:
    """The response with each age reduced to 'known or not' (ages move on between two calls)."""
    for part in (*response.columns, *response.status_groups):
        known = [int(age >= 0) for age in part.age_ms]
        del part.age_ms[:]
        part.age_ms.extend(known)
    return response


async def _outcome(call: Any) -> tuple[grpc.StatusCode, str, bytes]:
    try:
        answer = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""
    if isinstance(answer, bytes):
        answer = pb.GetOnlineFeaturesResponse.FromString(answer)
    return grpc.StatusCode.OK, "", _aged(answer).SerializeToString(deterministic=True)


async def test_grpc_answers_match_the_grpc_server(fast) -> None:  # type: ignore[no-untyped-def]
    """GetOnlineFeatures over h2c on the fast port: same messages, codes and details as grpc.aio's server."""
    r, _app_port, fast_port = fast
    await _define(r)
    r.wiring.service.registry.apply(Caller(), "p1", [("transformation", {
        "name": "ctr", "function": "ratio", "inputs": ["stats:clicks", "stats:views"],
        "outputs": [{"name": "ratio", "dtype": "float64"}]})])
    reader = [("authorization", f"Bearer {_token(r)}")]
    users = {"user_id": strings("u1", "u2", "nobody")}
    request = pb.GetOnlineFeaturesRequest
    cases: list[tuple[bytes, list[tuple[str, str]]]] = [
        (request(project="p1", features=["stats:clicks", "ctr:ratio"], entities=users).SerializeToString(), reader),
        (request(project="p1", features=["stats:clicks", "stats:views"], entities=users, status_per_view=True,
                 full_feature_names=True).SerializeToString(), reader),
        (request(project="p1", features=["stats:email"], entities=users).SerializeToString(), reader),  # PII
        (request(project="p1", features=["stats:email"], entities=users).SerializeToString(),
         [("authorization", f"Bearer {_token(r, 'features:read features:read-pii')}")]),
        (request(project="p1", features=["stats:clicks"], entities=users,
                 max_staleness=Duration(nanos=1000)).SerializeToString(), reader),  # all stale
        (request(project="p1", features=["stats:nope"], entities=users).SerializeToString(), reader),
        (request(project="p1", features=["stats:clicks"], entities={"user_id": ints(1)}).SerializeToString(),
         reader),  # an int key for a string entity: looked up as "1", not found
        (request(project="p1", features=["stats:clicks"], entities=users,
                 max_staleness=Duration(seconds=-1)).SerializeToString(), reader),
        (request(project="p1", features=["stats:clicks"], entities={}).SerializeToString(), reader),
        (request(project="p2", features=["stats:clicks"], entities=users).SerializeToString(), reader),
        (request(project="p1", features=["stats:clicks"], entities=users).SerializeToString(), []),
        (request(project="p1", features=["stats:clicks"], entities=users).SerializeToString(),
         [("authorization", "Bearer not.a.token")]),
        (request(project="p1", features=["stats:clicks"], entities=users).SerializeToString(), reader + reader),
        (b"\xff\xff\xff not a message", reader),
        (b"\xff\xff\xff not a message", []),  # the token is checked first
    ]
    codes = []
    assert r.host.grpc_server is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fast_port}") as fast_channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{r.host.grpc_server.port}") as main_channel:
        main = main_channel.unary_unary(GET_ONLINE_FEATURES)
        edge = fast_channel.unary_unary(GET_ONLINE_FEATURES)
        for body, metadata in cases:
            expected = await _outcome(main(body, metadata=metadata))
            got = await _outcome(edge(body, metadata=metadata))
            assert got == expected, (got[:2], expected[:2])
            codes.append(got[0].name)
        # the answers are real: values, then each refusal with its own status
        assert codes == ["OK", "OK", "PERMISSION_DENIED", "OK", "OK", "INVALID_ARGUMENT", "OK",
                         "INVALID_ARGUMENT", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED",
                         "UNAUTHENTICATED", "UNAUTHENTICATED", "INVALID_ARGUMENT", "UNAUTHENTICATED"], codes
        typed = await pb_grpc.FeatureStoreServiceStub(fast_channel).GetOnlineFeatures(
            request(project="p1", features=["stats:clicks"], entities=users), metadata=reader)
        assert list(typed.columns[1].values.int64_list_val.values) == [3, 5, 0]
        assert list(typed.columns[1].statuses) == [pb.FEATURE_STATUS_PRESENT, pb.FEATURE_STATUS_PRESENT,
                                                   pb.FEATURE_STATUS_NOT_FOUND]
        # every other method is the gRPC server's, not the fast port's
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await pb_grpc.FeatureStoreServiceStub(fast_channel).ListFeatureViews(
                pb.ListFeatureViewsRequest(project="p1"), metadata=reader)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    counted = r.host.registry.get_sample_value(
        "mlp_grpc_requests_total", {"service": r.host.settings.service_name, "method": GET_ONLINE_FEATURES,
                                    "code": "PERMISSION_DENIED"})
    assert counted == 2  # one on each port
