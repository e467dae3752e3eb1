"""Point-in-time retrieval against a plain Python reference, on SQLite and PostgreSQL (hypothesis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp_core.db import Database
from mlp_feature_store.domain.events import RecordingSink
from mlp_feature_store.domain.models import Feature, FeatureView, JoinKey, ValueType
from mlp_feature_store.store.base import IngestResult, PitRequest, PreparedBatch, ViewLayout
from mlp_feature_store.store.offline_sql import SqlOfflineStore

T0 = datetime(2024, 1, 1, tzinfo=UTC)
US = 1_000_000


def _layout(name: str, ttl: int | None) -> ViewLayout:
    view = FeatureView(name=name, entities=["user"], ttl_seconds=ttl,
                       features=[Feature(name="x", dtype=ValueType.INT64)])
    # Composite key: (a, b), chosen so that naive string concatenation would collide ("1"+"12" == "11"+"2").
    return ViewLayout(project="p1", view=view, keys=(JoinKey(name="a", dtype=ValueType.STRING),
                                                     JoinKey(name="b", dtype=ValueType.STRING)))


KEYS = st.sampled_from([("1", "12"), ("11", "2"), ("2", "")])
# A feature row: key, event second, ingestion batch index, value.
ROW = st.tuples(KEYS, st.integers(0, 20), st.integers(0, 3), st.integers(-5, 5))
QUERY = st.tuples(KEYS, st.integers(0, 25))


def reference(rows: list[tuple[tuple[str, str], int, int, int, int]], key: tuple[str, str], ts: int,
              ttl: int | None, no_backfill: bool) -> Any:
    """The plain definition: newest event ≤ ts within TTL, ties by ingestion time then insertion order."""
    best = None
    for order, (k, ev, ing, val, _) in enumerate(rows):
        if k != key or ev > ts or (ttl is not None and ev < ts - ttl) or (no_backfill and ing > ts):
            continue
        rank = (ev, ing, order)
        if best is None or rank > best[0]:
            best = (rank, val)
    return None if best is None else best[1]


def run_case(store: SqlOfflineStore, ttl: int | None, no_backfill: bool,
             rows: list[tuple[tuple[str, str], int, int, int]], queries: list[tuple[tuple[str, str], int]]
             ) -> None:
    layout = _layout(f"v{uuid.uuid4().hex[:8]}", ttl)
    store.ensure_table(layout)
    # Ingestion batches at seconds 0, 5, 10, 15: batch i is one ingest with ingested_ts = i*5 s.
    stored: list[tuple[tuple[str, str], int, int, int, int]] = []
    for batch_idx in range(4):
        good = [{"k_a": k[0], "k_b": k[1], "event_ts": (T0 + timedelta(seconds=ev)).timestamp() * US, "f_x": v}
                for (k, ev, b, v) in rows if b == batch_idx]
        for g in good:
            g["event_ts"] = int(g["event_ts"])
        ingested = int((T0 + timedelta(seconds=batch_idx * 5)).timestamp() * US)
        store.write(layout, [PreparedBatch(good=good, bad=[])],
                    IngestResult(run_id=str(uuid.uuid4()), ingested_us=ingested), "test")
        stored += [(k, ev, batch_idx * 5, v, 0) for (k, ev, b, v) in rows if b == batch_idx]
    entity = pa.table({
        "a": [q[0][0] for q in queries], "b": [q[0][1] for q in queries],
        "event_timestamp": pa.array([T0 + timedelta(seconds=q[1]) for q in queries],
                                    type=pa.timestamp("us", tz="UTC")),
        "label": list(range(len(queries))),
    })
    batches = list(store.historical([PitRequest(layout=layout, features=("x",), prefix="fv__")], entity,
                                    "event_timestamp", no_backfill, batch_size=7))
    out = pa.Table.from_batches(batches)
    assert out.num_rows == len(queries)
    assert out.column("label").to_pylist() == list(range(len(queries)))
    expected = [reference(stored, q[0], q[1], ttl, no_backfill) for q in queries]
    assert out.column("fv__x").to_pylist() == expected


@pytest.mark.parametrize("no_backfill", [False, True])
@pytest.mark.parametrize("ttl", [None, 4])
def test_pit_matches_reference(db: Database, ttl: int | None, no_backfill: bool) -> None:
    store = SqlOfflineStore(db, RecordingSink())

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rows=st.lists(ROW, max_size=25), queries=st.lists(QUERY, min_size=1, max_size=20))
    def check(rows: list[Any], queries: list[Any]) -> None:
        run_case(store, ttl, no_backfill, rows, queries)

    check()
