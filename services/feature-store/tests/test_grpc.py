"""gRPC API against a real grpc.aio server with real tokens: good paths and every refusal code."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import generate_latest

from mlp_core.testing.tokens import TestIssuer
from mlp_protos.mlp.common.v1 import common_pb2
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb

from .conftest import Caller
from .grpc_support import Running, ints, running_host, strings

NOW = datetime.now(UTC).isoformat()


@pytest.fixture
async def fs_grpc(test_issuer: TestIssuer, pg_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    async with running_host(test_issuer, pg_url, redis_url) as running:
        yield running


async def _define(r: Running) -> None:
    md = r.auth()
    await r.stub.CreateEntity(pb.CreateEntityRequest(entity=pb.Entity(
        project="p1", name="user", join_keys=["user_id"], value_type=common_pb2.DATA_TYPE_STRING)), metadata=md)
    view = pb.FeatureView(project="p1", name="stats", entities=["user"], online=True, ttl=Duration(seconds=3600),
                          features=[pb.Feature(name="clicks", dtype=common_pb2.DATA_TYPE_INT64),
                                    pb.Feature(name="views", dtype=common_pb2.DATA_TYPE_INT64),
                                    pb.Feature(name="email", dtype=common_pb2.DATA_TYPE_STRING, pii=True)])
    await r.stub.CreateFeatureView(pb.CreateFeatureViewRequest(feature_view=view), metadata=md)
    pushed = await r.stub.PushFeatures(pb.PushFeaturesRequest(
        project="p1", feature_view="stats", idempotency_key="push-1", columns={
            "user_id": strings("u1", "u2"), "clicks": ints(3, 5), "views": ints(10, 0),
            "email": strings("a@x", "b@x"), "event_timestamp": strings(NOW, NOW)}), metadata=md)
    assert pushed.rows_written == 2


async def test_online_features_good_path(fs_grpc: Running) -> None:
    r = fs_grpc
    await _define(r)
    r.wiring.service.registry.apply(Caller(), "p1", [("transformation", {
        "name": "ctr", "function": "ratio", "inputs": ["stats:clicks", "stats:views"],
        "outputs": [{"name": "ratio", "dtype": "float64"}]})])
    resp = await r.stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
        project="p1", features=["stats:clicks", "ctr:ratio"], entities={"user_id": strings("u1", "u2", "nobody")}),
        metadata=r.auth())
    cols = {c.name: c for c in resp.columns}
    assert resp.row_count == 3 and [c.name for c in resp.columns] == ["user_id", "clicks", "ratio"]
    assert list(cols["clicks"].values.int64_list_val.values) == [3, 5, 0]
    assert list(cols["clicks"].statuses) == [pb.FEATURE_STATUS_PRESENT, pb.FEATURE_STATUS_PRESENT,
                                             pb.FEATURE_STATUS_NOT_FOUND]
    assert cols["clicks"].age_ms[2] == -1 and cols["clicks"].age_ms[0] >= 0
    assert cols["clicks"].dtype == common_pb2.DATA_TYPE_INT64
    assert cols["ratio"].values.double_list_val.values[0] == pytest.approx(0.3)
    # u2 has views == 0: the transformation returns null for it
    assert cols["ratio"].statuses[1] == pb.FEATURE_STATUS_NULL_VALUE
    # PII with the PII scope; full feature names; staleness
    resp = await r.stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
        project="p1", features=["stats:email"], entities={"user_id": strings("u1")}, full_feature_names=True,
        max_staleness=Duration(nanos=1000)), metadata=r.auth("features:read features:read-pii"))
    assert resp.columns[1].name == "stats__email"
    assert list(resp.columns[1].statuses) == [pb.FEATURE_STATUS_STALE]


def _expand(resp: pb.GetOnlineFeaturesResponse) -> dict[str, tuple[list[int], list[int]]]:
    """Per column (statuses, ages) of a ``status_per_view`` response, in the per-column shape."""
    out = {}
    for c in resp.columns:
        group = resp.status_groups[c.status_group]
        statuses = list(group.statuses)
        for row in c.null_rows:
            statuses[row] = pb.FEATURE_STATUS_NULL_VALUE
        out[c.name] = (statuses, list(group.age_ms))
    return out


async def test_status_per_view_matches_the_per_column_shape(fs_grpc: Running) -> None:
    r = fs_grpc
    await _define(r)
    r.wiring.service.registry.apply(Caller(), "p1", [("transformation", {
        "name": "ctr", "function": "ratio", "inputs": ["stats:clicks", "stats:views"],
        "outputs": [{"name": "ratio", "dtype": "float64"}]})])
    request = pb.GetOnlineFeaturesRequest(project="p1", features=["stats:clicks", "stats:views", "ctr:ratio"],
                                          entities={"user_id": strings("u1", "u2", "nobody")})
    per_column = await r.stub.GetOnlineFeatures(request, metadata=r.auth())
    request.status_per_view = True
    grouped = await r.stub.GetOnlineFeatures(request, metadata=r.auth())
    assert [c.name for c in grouped.columns] == [c.name for c in per_column.columns]
    assert all(not c.statuses and not c.age_ms for c in grouped.columns)
    # join keys, the view (shared by clicks and views), the transformation
    assert len(grouped.status_groups) == 3
    assert [c.status_group for c in grouped.columns] == [0, 1, 1, 2]
    assert list(grouped.columns[3].null_rows) == [1]  # u2: views == 0, so the ratio is null
    expanded = _expand(grouped)
    for c in per_column.columns:
        statuses, ages = expanded[c.name]
        assert statuses == list(c.statuses), c.name
        assert [a >= 0 for a in ages] == [a >= 0 for a in c.age_ms], c.name
    for a, b in zip(grouped.columns, per_column.columns, strict=True):
        assert a.values == b.values and a.dtype == b.dtype


async def test_refusals_have_the_right_codes(fs_grpc: Running) -> None:
    r = fs_grpc
    await _define(r)
    request = pb.GetOnlineFeaturesRequest(project="p1", features=["stats:clicks"],
                                          entities={"user_id": strings("u1")})
    cases = [
        (request, r.auth(projects=["p2"]), grpc.StatusCode.NOT_FOUND),          # another project's view
        (pb.GetOnlineFeaturesRequest(project="p1", features=["stats:email"], entities={"user_id": strings("u1")}),
         r.auth(), grpc.StatusCode.PERMISSION_DENIED),                          # PII without the scope
        (pb.GetOnlineFeaturesRequest(project="p1", features=["stats:nope"], entities={"user_id": strings("u1")}),
         r.auth(), grpc.StatusCode.INVALID_ARGUMENT),                           # unknown feature
        (pb.GetOnlineFeaturesRequest(project="p1", features=["stats:clicks"], entities={"wrong": strings("u1")}),
         r.auth(), grpc.StatusCode.INVALID_ARGUMENT),                           # missing join key
        (request, [], grpc.StatusCode.UNAUTHENTICATED),                          # no token
        (request, [("authorization", "Bearer not-a-jwt")], grpc.StatusCode.UNAUTHENTICATED),
    ]
    for req, md, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.stub.GetOnlineFeatures(req, metadata=md)
        assert err.value.code() == code, (req, err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:  # write scope needed
        await r.stub.DeleteFeatureView(pb.DeleteFeatureViewRequest(project="p1", name="stats"),
                                       metadata=r.auth("features:read"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_crud_materialize_and_erase(fs_grpc: Running) -> None:
    r = fs_grpc
    md = r.auth()
    await _define(r)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.CreateEntity(pb.CreateEntityRequest(entity=pb.Entity(
            project="p1", name="user", join_keys=["user_id"])), metadata=md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    view = await r.stub.GetFeatureView(pb.GetFeatureViewRequest(project="p1", name="stats"), metadata=md)
    assert view.revision == 1 and view.ttl.seconds == 3600 and [f.name for f in view.features][-1] == "email"
    # a compatible upsert keeps the version; a breaking one without revision+1 is refused
    view.features.append(pb.Feature(name="spend", dtype=common_pb2.DATA_TYPE_FLOAT64))
    view.revision = 0
    updated = await r.stub.CreateFeatureView(pb.CreateFeatureViewRequest(feature_view=view, upsert=True), metadata=md)
    assert updated.revision == 1 and len(updated.features) == 4
    del view.features[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.CreateFeatureView(pb.CreateFeatureViewRequest(feature_view=view, upsert=True), metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    service = pb.FeatureService(project="p1", name="model_a", projections=[
        pb.FeatureViewProjection(feature_view="stats", features=["clicks", "views"])])
    await r.stub.CreateFeatureService(pb.CreateFeatureServiceRequest(feature_service=service), metadata=md)
    listed = await r.stub.ListFeatureServices(pb.ListFeatureServicesRequest(project="p1", page_size=1), metadata=md)
    assert [s.name for s in listed.feature_services] == ["model_a"] and listed.next_page_token == ""
    page = await r.stub.ListEntities(pb.ListEntitiesRequest(project="p1", page_size=1), metadata=md)
    assert [e.name for e in page.entities] == ["user"]
    resp = await r.stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
        project="p1", feature_service="model_a", entities={"user_id": strings("u2")}), metadata=md)
    assert [c.name for c in resp.columns] == ["user_id", "clicks", "views"]
    job = await r.stub.MaterializeRange(pb.MaterializeRangeRequest(project="p1", feature_views=["stats"]), metadata=md)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.run_ids == [job.id]
    again = await r.stub.GetMaterializationJob(pb.GetMaterializationJobRequest(project="p1", id=job.id), metadata=md)
    assert again.id == job.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.GetMaterializationJob(pb.GetMaterializationJobRequest(project="p1", id="nope"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    erased = await r.stub.EraseEntity(pb.EraseEntityRequest(
        project="p1", entity="user", key={"user_id": strings("u1").values[0]}, reason="gdpr-1"), metadata=md)
    assert erased.rows_erased == 2 and "online:default" in erased.stores  # one offline row, one online record
    resp = await r.stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
        project="p1", features=["stats:clicks"], entities={"user_id": strings("u1")}), metadata=md)
    assert list(resp.columns[1].statuses) == [pb.FEATURE_STATUS_NOT_FOUND]


async def test_ingest_stream_push_idempotency_and_quality_metrics(fs_grpc: Running) -> None:
    r = fs_grpc
    md = r.auth()
    await _define(r)

    async def stream():  # type: ignore[no-untyped-def]
        yield pb.IngestRowsRequest(project="p1", feature_view="stats", columns={
            "user_id": strings("u3"), "clicks": ints(1), "event_timestamp": strings(NOW)})
        yield pb.IngestRowsRequest(columns={"user_id": strings("u4"), "clicks": strings("not a number"),
                                            "event_timestamp": strings(NOW)})

    result = await r.stub.IngestRows(stream(), metadata=md)
    assert result.rows_written == 1 and result.rows_flagged == 1 and result.quality_check_id
    again = await r.stub.PushFeatures(pb.PushFeaturesRequest(
        project="p1", feature_view="stats", idempotency_key="push-1", columns={
            "user_id": strings("u1"), "clicks": ints(99), "event_timestamp": strings(NOW)}), metadata=md)
    assert again.duplicate and again.rows_written == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await r.stub.PushFeatures(pb.PushFeaturesRequest(project="p1", feature_view="stats",
                                                         target=pb.PUSH_TARGET_ONLINE, columns={
                                                             "user_id": strings("u1")}), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = generate_latest(r.host.registry).decode()
    assert 'mlp_feature_store_rows_total{outcome="quarantined",project="p1",view="stats"} 1.0' in text
    assert 'mlp_feature_store_quality_failures_total{project="p1",rule="type",view="stats"} 1.0' in text
