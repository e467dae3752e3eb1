"""Ingest with quality checks, historical and online reads, materialization, push, erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from mlp_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mlp_feature_store.domain.events import ENTITY_ERASED, INGESTION_COMPLETED, QUALITY_FAILED
from mlp_feature_store.domain.ingestion import rows_to_batch
from mlp_feature_store.domain.retrieval import ValueStatus
from mlp_feature_store.domain.timeutil import to_us

from .conftest import Caller

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PII_READER = Caller(scopes=frozenset({"features:read", "features:write", "features:read-pii"}))


def _rows(*rows: tuple[str, datetime, int | str | None, int, str]) -> list[pa.RecordBatch]:
    return [rows_to_batch([{"user_id": u, "event_timestamp": t.isoformat(), "clicks": c, "views": v,
                            "email": e} for u, t, c, v, e in rows])]


def _entity(users: list[str], times: list[datetime]) -> pa.Table:
    return pa.table({"user_id": users, "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC"))})


def test_ingest_quarantines_bad_rows_and_reports(applied) -> None:
    result = applied.ingestion.ingest(Caller(), "p1", "stats", _rows(
        ("u1", T0, 3, 10, "a@x"), ("u2", T0, -1, 10, "b@x"), ("u3", T0, "many", 1, "c@x")))
    assert (result.rows_in, result.rows_written, result.rows_quarantined) == (3, 1, 2)
    assert result.failures == {"range": 1, "type": 1}
    [run] = applied.ingestion.runs(Caller(), "p1", "stats")
    assert run["rows_quarantined"] == 2 and run["report"] == {"failures": {"range": 1, "type": 1}}
    types = [t for t, _s, _d in applied.events.events]
    assert INGESTION_COMPLETED in types and QUALITY_FAILED in types


def test_schema_errors_write_nothing(applied) -> None:
    naive = pa.RecordBatch.from_pydict({"user_id": ["u1"], "event_timestamp": pa.array(
        [datetime(2024, 1, 1)], pa.timestamp("us")), "clicks": [1]})
    with pytest.raises(InvalidArgument, match="without time zone"):
        applied.ingestion.ingest(Caller(), "p1", "stats", [naive])
    with pytest.raises(InvalidArgument, match="not features"):
        applied.ingestion.ingest(Caller(), "p1", "stats", [rows_to_batch([
            {"user_id": "u1", "event_timestamp": T0.isoformat(), "bogus": 1}])])
    good = _rows(("u1", T0, 1, 1, "a@x"))[0]
    with pytest.raises(InvalidArgument, match="lack column"):
        # The second batch is broken: the first one must not stay written.
        applied.ingestion.ingest(Caller(), "p1", "stats", [good, good.drop_columns(["user_id"])])
    assert applied.ingestion.runs(Caller(), "p1", "stats") == []
    out = pa.Table.from_batches(applied.retrieval.historical(
        Caller(), "p1", _entity(["u1"], [T0 + timedelta(hours=1)]), features=["stats:clicks"]))
    assert out.column("stats__clicks").to_pylist() == [None]


def test_historical_with_feature_service_and_transformation(applied) -> None:
    applied.registry.apply(Caller(), "p1", [
        ("transformation", {"name": "ctr", "function": "ratio", "inputs": ["stats:clicks", "stats:views"],
                            "outputs": [{"name": "ratio", "dtype": "float64"}]}),
        ("feature_service", {"name": "model_a", "features": ["stats:clicks", "ctr:ratio"]})])
    applied.ingestion.ingest(Caller(), "p1", "stats", _rows(
        ("u1", T0, 1, 4, "a@x"), ("u1", T0 + timedelta(minutes=30), 2, 4, "a@x"), ("u2", T0, 5, 10, "b@x")))
    entity = _entity(["u1", "u1", "u2", "u2", "zz"], [
        T0 + timedelta(minutes=10), T0 + timedelta(minutes=40), T0 - timedelta(seconds=1),
        T0 + timedelta(hours=2), T0])
    out = pa.Table.from_batches(applied.retrieval.historical(Caller(), "p1", entity, feature_service="model_a"))
    assert out.column_names == ["user_id", "event_timestamp", "stats__clicks", "ctr__ratio"]
    assert out.column("stats__clicks").to_pylist() == [1, 2, None, None, None]  # u2 @+2h: past TTL (1h)
    assert out.column("ctr__ratio").to_pylist() == [0.25, 0.5, None, None, None]
    with pytest.raises(InvalidArgument, match="time zone"):
        applied.retrieval.historical(Caller(), "p1", pa.table({"user_id": ["u1"], "event_timestamp": pa.array(
            [datetime(2024, 1, 1)], pa.timestamp("us"))}), features=["stats:clicks"])
    with pytest.raises(InvalidArgument, match="join key"):
        list(applied.retrieval.historical(Caller(), "p1", pa.table({"event_timestamp": pa.array(
            [T0], pa.timestamp("us", tz="UTC"))}), features=["stats:clicks"]))


def test_pii_needs_scope_and_tenancy_hides(applied) -> None:
    entity = _entity(["u1"], [T0])
    with pytest.raises(PermissionDenied, match="PII"):
        applied.retrieval.historical(Caller(), "p1", entity, features=["stats"])
    with pytest.raises(PermissionDenied, match="PII"):
        applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:email"])
    assert applied.retrieval.online(PII_READER, "p1", {"user_id": ["u1"]}, features=["stats:email"])
    with pytest.raises(NotFound):
        applied.retrieval.online(Caller(projects=frozenset({"p2"})), "p1", {"user_id": ["u1"]},
                                 features=["stats:clicks"])


def test_online_statuses_ttl_and_staleness(applied) -> None:
    now = to_us(datetime.now(UTC))
    fresh, old = datetime.now(UTC) - timedelta(minutes=10), datetime.now(UTC) - timedelta(minutes=90)
    applied.ingestion.ingest(Caller(), "p1", "stats", _rows(("u1", fresh, 1, 2, "a"), ("u2", old, 7, 8, "b")))
    run = applied.materialization.materialize(Caller(), "p1", "stats")
    assert (run.rows_read, run.entities_written) == (2, 2)
    res = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1", "u2", "u3"]},
                                   features=["stats:clicks"], now=now)
    col = res.features["stats__clicks"]
    assert col.values == [1, None, None]
    assert col.statuses == [ValueStatus.PRESENT, ValueStatus.EXPIRED, ValueStatus.NOT_FOUND]
    assert 590 < col.ages_s[0] < 700
    res = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:clicks"],
                                   max_staleness_s=60, now=now)
    assert res.features["stats__clicks"].statuses == [ValueStatus.STALE]
    assert res.features["stats__clicks"].values == [None]
    with pytest.raises(InvalidArgument, match="no entities"):
        applied.retrieval.online(Caller(), "p1", {"user_id": []}, features=["stats:clicks"])
    with pytest.raises(InvalidArgument, match="needs join key"):
        applied.retrieval.online(Caller(), "p1", {"uid": ["u1"]}, features=["stats:clicks"])


def test_incremental_materialization_picks_late_rows_and_is_rerunnable(applied) -> None:
    t = datetime.now(UTC) - timedelta(minutes=5)
    applied.ingestion.ingest(Caller(), "p1", "stats", _rows(("u1", t, 1, 1, "a")))
    applied.materialization.materialize(Caller(), "p1", "stats")
    # A late row: event time before the current online value's, ingested after the last run.
    applied.ingestion.ingest(Caller(), "p1", "stats", _rows(("u1", t - timedelta(minutes=1), 99, 1, "a"),
                                                            ("u2", t - timedelta(minutes=1), 5, 1, "b")))
    run = applied.materialization.materialize(Caller(), "p1", "stats")
    assert run.rows_read == 2 and run.entities_written == 1  # u2 new; u1's late row loses to the newer one
    again = applied.materialization.materialize(Caller(), "p1", "stats")
    assert again.rows_read == 0
    col = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1", "u2"]},
                                   features=["stats:clicks"]).features["stats__clicks"]
    assert col.values == [1, 5]
    assert len(applied.materialization.history(Caller(), "p1", "stats")) == 3
    with pytest.raises(InvalidArgument):
        applied.materialization.materialize(Caller(), "p1", "stats", start_us=10, end_us=5)


def test_push_is_idempotent_and_updates_online(applied) -> None:
    t = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    rows = [{"user_id": "u9", "event_timestamp": t, "clicks": 4, "views": 8, "email": "z"}]
    first = applied.ingestion.push(Caller(), "p1", "stats", rows, event_id="evt-1")
    assert first is not None and first.rows_written == 1
    assert applied.ingestion.push(Caller(), "p1", "stats", rows, event_id="evt-1") is None
    assert len(applied.ingestion.runs(Caller(), "p1", "stats")) == 1
    col = applied.retrieval.online(Caller(), "p1", {"user_id": ["u9"]}, features=["stats:clicks"])
    assert col.features["stats__clicks"].values == [4]


def test_erasure_across_stores_is_audited(applied) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    applied.ingestion.ingest(Caller(), "p1", "stats", _rows(("u1", t, 1, 1, "a"), ("u2", t, 2, 2, "b")))
    applied.materialization.materialize(Caller(), "p1", "stats")
    record = applied.compliance.erase(Caller(), "p1", "user", {"user_id": "u1"})
    assert (record["offline_rows"], record["online_keys"]) == (1, 1)
    assert "u1" not in str(applied.compliance.erasures(Caller(), "p1"))  # only a digest is kept
    col = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1", "u2"]},
                                   features=["stats:clicks"]).features["stats__clicks"]
    assert col.values == [None, 2]
    out = pa.Table.from_batches(applied.retrieval.historical(
        Caller(), "p1", _entity(["u1", "u2"], [t, t]), features=["stats:clicks"]))
    assert out.column("stats__clicks").to_pylist() == [None, 2]
    assert applied.events.of_type(ENTITY_ERASED)
    with pytest.raises(InvalidArgument, match="identified by"):
        applied.compliance.erase(Caller(), "p1", "user", {"uid": "u1"})


def test_search_and_lineage(applied) -> None:
    applied.registry.apply(Caller(), "p1", [("feature_service", {"name": "svc", "features": ["stats"]})])
    assert {h["feature"] for h in applied.compliance.search(Caller(), "p1", pii=True)} == {"email"}
    assert len(applied.compliance.search(Caller(), "p1", tag="domain=ads", owner="team-a")) == 3
    assert applied.compliance.search(Caller(), "p1", owner="nobody") == []
    assert applied.compliance.record_usage("p1", "svc", "training_run", "run-1", "e1")
    assert not applied.compliance.record_usage("p1", "svc", "training_run", "run-1", "e1")
    lineage = applied.compliance.lineage(Caller(), "p1", "svc")
    assert lineage["feature_views"] == [{"view": "stats", "version": 1, "source": None}]
    assert lineage["consumers"] == [{"kind": "training_run", "ref": "run-1"}]


def test_region_without_store_is_refused_at_read(applied) -> None:
    with pytest.raises(FailedPrecondition):
        applied.ingestion.regions.get("eu")


def test_deleting_a_view_purges_its_online_records(applied, redis_url: str) -> None:
    import redis

    from mlp_feature_store.store.online_redis import key_prefix

    t = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    rows = [{"user_id": u, "event_timestamp": t, "clicks": 1, "views": 2, "email": f"{u}@x"} for u in ("a", "b")]
    applied.ingestion.push(Caller(), "p1", "stats", rows, event_id="evt-del")
    prefix = key_prefix(applied.registry.layout("p1", "stats"))
    client = redis.Redis.from_url(redis_url)
    assert len(list(client.scan_iter(match=prefix + "*"))) == 2
    applied.registry.delete(Caller(), "p1", "feature_view", "stats")
    assert list(client.scan_iter(match=prefix + "*")) == [], "personal values must not outlive the view"
    with pytest.raises(NotFound):
        applied.registry.load("p1", "feature_view", "stats")
    client.close()
