"""The offline store in SQL (SQLite and PostgreSQL): append-only tables per feature view version."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from mlp_core.db import Database
from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.events import EventSink
from mlp_feature_store.domain.ingest import ConversionError, convert
from mlp_feature_store.domain.models import JoinKey
from mlp_feature_store.store.arrow_types import to_arrow
from mlp_feature_store.store.base import (
    IngestEvents,
    IngestResult,
    OfflineStore,
    PitRequest,
    PreparedBatch,
    ViewLayout,
)
from mlp_feature_store.store.offline_tables import key_col, view_table
from mlp_feature_store.store.pit import entity_table, pit_query
from mlp_feature_store.store.schema import ingestion_runs, push_receipts, quarantine

_LOAD_CHUNK = 10_000


class SqlOfflineStore(OfflineStore):
    """Offline rows in one database (one per residency region)."""

    def __init__(self, db: Database, events: EventSink) -> None:
        self.db = db
        self.events = events

    # -- schema ------------------------------------------------------------------------------

    def ensure_table(self, layout: ViewLayout) -> None:
        """See ``OfflineStore.ensure_table``; adds nullable columns for new features.

        Safe against a concurrent apply of the same view: a losing CREATE/ALTER is retried once, and
        then finds the table (or column) the winner made.
        """
        try:
            self._ensure_table(layout)
        except (IntegrityError, ProgrammingError, OperationalError):
            self._ensure_table(layout)

    def _ensure_table(self, layout: ViewLayout) -> None:
        table = view_table(layout)
        with self.db.engine.begin() as conn:
            if not inspect(conn).has_table(table.name):
                table.create(conn)
                return
            have = {c["name"] for c in inspect(conn).get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    ddl = col.type.compile(dialect=conn.dialect)
                    conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {ddl}'))

    # -- writes ------------------------------------------------------------------------------

    def write(self, layout: ViewLayout, batches: Iterable[PreparedBatch], result: IngestResult,
              source: str, receipt: str | None = None, events: IngestEvents | None = None
              ) -> IngestResult | None:
        """See ``OfflineStore.write``; everything happens in one transaction."""
        table = view_table(layout)
        failures: dict[str, int] = {}
        with self.db.engine.begin() as conn:
            if receipt is not None:
                seen = conn.execute(select(push_receipts.c.event_id).where(
                    push_receipts.c.event_id == receipt).with_for_update()).first()
                if seen is not None:
                    return None
                # A concurrent duplicate fails here on the primary key and rolls back everything.
                conn.execute(push_receipts.insert().values(event_id=receipt, received_us=result.ingested_us))
            for batch in batches:
                result.rows_in += len(batch.good) + len(batch.bad)
                if batch.good:
                    for row in batch.good:
                        row["ingested_ts"] = result.ingested_us
                    conn.execute(table.insert(), batch.good)
                    result.rows_written += len(batch.good)
                if batch.bad:
                    conn.execute(quarantine.insert(), [
                        {"run_id": result.run_id, "project": layout.project, "view": layout.view.name,
                         "row": row, "reasons": reasons} for row, reasons in batch.bad])
                    result.rows_quarantined += len(batch.bad)
                    for _row, reasons in batch.bad:
                        for reason in reasons:
                            rule = reason.split(":", 1)[0]
                            failures[rule] = failures.get(rule, 0) + 1
            result.failures = failures
            conn.execute(ingestion_runs.insert().values(
                id=result.run_id, project=layout.project, view=layout.view.name, version=layout.view.version,
                source=source, rows_in=result.rows_in, rows_written=result.rows_written,
                rows_quarantined=result.rows_quarantined, report={"failures": failures},
                ingested_us=result.ingested_us))
            for event in events(result) if events is not None else ():
                self.events.add(conn, event)
        return result

    def receipt_time(self, receipt: str) -> int | None:
        """See ``OfflineStore.receipt_time``."""
        with self.db.engine.connect() as conn:
            return conn.execute(select(push_receipts.c.received_us).where(
                push_receipts.c.event_id == receipt)).scalar_one_or_none()

    def erase(self, layout: ViewLayout, key_values: dict[str, Any]) -> int:
        """See ``OfflineStore.erase``."""
        table = view_table(layout)
        with self.db.engine.begin() as conn:
            if not inspect(conn).has_table(table.name):
                return 0
            res = conn.execute(delete(table).where(
                *[table.c[key_col(k)] == v for k, v in key_values.items()]))
            return int(res.rowcount or 0)

    def erase_quarantined(self, project: str, view: str, key_values: dict[str, Any]) -> int:
        """See ``OfflineStore.erase_quarantined``; raw rows are matched in Python (their keys are untyped)."""
        q = select(quarantine.c.id, quarantine.c.row).where(quarantine.c.project == project,
                                                            quarantine.c.view == view)
        with self.db.engine.begin() as conn:
            ids = [r.id for r in conn.execute(q) if _raw_matches(r.row, key_values)]
            for start in range(0, len(ids), 1_000):
                conn.execute(delete(quarantine).where(quarantine.c.id.in_(ids[start:start + 1_000])))
        return len(ids)

    # -- reads -------------------------------------------------------------------------------

    def ingestion_runs(self, project: str, view: str, limit: int = 50) -> list[dict[str, Any]]:
        """See ``OfflineStore.ingestion_runs``."""
        q = (select(ingestion_runs).where(ingestion_runs.c.project == project, ingestion_runs.c.view == view)
             .order_by(ingestion_runs.c.ingested_us.desc()).limit(limit))
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def quarantined(self, run_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Quarantined rows of one ingestion run with their reasons."""
        q = select(quarantine.c.row, quarantine.c.reasons).where(quarantine.c.run_id == run_id).limit(limit)
        with self.db.engine.connect() as conn:
            return [{"row": r.row, "reasons": r.reasons} for r in conn.execute(q)]

    def latest_rows(self, layout: ViewLayout, *, after_ingested_us: int | None, until_ingested_us: int,
                    event_from_us: int | None = None, event_to_us: int | None = None
                    ) -> Iterator[dict[str, Any]]:
        """See ``OfflineStore.latest_rows``; a window function keeps the newest row per entity."""
        t = view_table(layout)
        keys = [t.c[key_col(k)] for k in layout.key_names]
        conds = [t.c.ingested_ts <= until_ingested_us]
        if after_ingested_us is not None:
            conds.append(t.c.ingested_ts > after_ingested_us)
        if event_from_us is not None:
            conds.append(t.c.event_ts >= event_from_us)
        if event_to_us is not None:
            conds.append(t.c.event_ts < event_to_us)
        rank = func.row_number().over(partition_by=keys, order_by=[
            t.c.event_ts.desc(), t.c.ingested_ts.desc(), t.c.row_id.desc()]).label("rn")
        inner = select(t, rank).where(*conds).subquery()
        q = select(inner).where(inner.c.rn == 1)
        with self.db.engine.connect() as conn:
            if not inspect(conn).has_table(t.name):
                return
            result = conn.execute(q, execution_options={"stream_results": True, "yield_per": 5_000})
            for r in result:
                yield dict(r._mapping)

    def historical(self, requests: Sequence[PitRequest], entity_rows: pa.Table, ts_column: str,
                   no_backfill: bool, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        """See ``OfflineStore.historical``; the input is checked before the first batch is asked for."""
        keys = _union_keys(requests)
        ts_us = _timestamps_us(entity_rows, ts_column)
        key_values = [_key_values(entity_rows, k) for k in keys]
        return self._stream(requests, entity_rows, keys, key_values, ts_us, no_backfill, batch_size)

    def _stream(self, requests: Sequence[PitRequest], entity_rows: pa.Table, keys: list[JoinKey],
                key_values: list[list[Any]], ts_us: list[int], no_backfill: bool, batch_size: int
                ) -> Iterator[pa.RecordBatch]:
        e = entity_table(f"fs_pit_{uuid.uuid4().hex[:12]}", keys)
        out_fields = [pa.field(f"{req.prefix}{f}", to_arrow(req.layout.view.feature(f).dtype, []).type)
                      for req in requests for f in req.features]
        dtypes = [req.layout.view.feature(f).dtype for req in requests for f in req.features]
        with self.db.engine.connect() as conn, conn.begin():
            e.create(conn)
            try:
                self._load_entities(conn, e, keys, key_values, ts_us)
                stmt = pit_query(requests, e, conn.dialect.name, no_backfill)
                result = conn.execute(stmt, execution_options={"stream_results": True, "yield_per": batch_size})
                offset = 0
                for part in result.partitions():
                    n = len(part)
                    idx = [r[0] for r in part]
                    if idx[0] != offset or idx[-1] != offset + n - 1:
                        raise RuntimeError("point-in-time join returned rows out of order")  # never expected
                    base = entity_rows.slice(offset, n)
                    arrays = list(base.columns) + [
                        to_arrow(dt, [r[j + 1] for r in part]) for j, dt in enumerate(dtypes)]
                    schema = pa.schema(list(base.schema) + out_fields)
                    yield pa.RecordBatch.from_arrays([_combine(a) for a in arrays], schema=schema)
                    offset += n
                if offset != entity_rows.num_rows:
                    raise RuntimeError("point-in-time join lost rows")  # never expected
            finally:
                e.drop(conn, checkfirst=True)

    def _load_entities(self, conn: Connection, e: Any, keys: Sequence[JoinKey],
                       key_values: list[list[Any]], ts_us: list[int]) -> None:
        names = ["row_idx", *[key_col(k.name) for k in keys], "ts"]
        if conn.dialect.name == "postgresql":
            raw = conn.connection.driver_connection
            with raw.cursor() as cur, cur.copy(  # type: ignore[union-attr]
                    f'COPY "{e.name}" ({", ".join(names)}) FROM STDIN') as copy:
                for i, ts in enumerate(ts_us):
                    copy.write_row((i, *[kv[i] for kv in key_values], ts))
            conn.execute(text(f'ANALYZE "{e.name}"'))
            return
        for start in range(0, len(ts_us), _LOAD_CHUNK):
            stop = min(start + _LOAD_CHUNK, len(ts_us))
            conn.execute(e.insert(), [
                dict(zip(names, (i, *[kv[i] for kv in key_values], ts_us[i]), strict=True))
                for i in range(start, stop)])


def _raw_matches(row: Any, key_values: dict[str, Any]) -> bool:
    """Whether a quarantined raw row holds the key: equal as typed, or equal as text."""
    if not isinstance(row, dict):
        return False
    for name, want in key_values.items():
        got = row.get(name)
        if got is None or (got != want and str(got).strip() != str(want)):
            return False
    return True


def _combine(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _union_keys(requests: Sequence[PitRequest]) -> list[JoinKey]:
    keys: dict[str, JoinKey] = {}
    for req in requests:
        for k in req.layout.keys:
            if k.name in keys and keys[k.name].dtype != k.dtype:
                raise InvalidArgument(f"join key '{k.name}' has different types in the requested views")
            keys.setdefault(k.name, k)
    return list(keys.values())


def _timestamps_us(rows: pa.Table, ts_column: str) -> list[int]:
    if ts_column not in rows.column_names:
        raise InvalidArgument(f"the entity rows lack the timestamp column '{ts_column}'")
    col = rows.column(ts_column)
    if not pa.types.is_timestamp(col.type):
        raise InvalidArgument(f"column '{ts_column}' must be a timestamp with time zone, not {col.type}")
    if col.type.tz is None:
        raise InvalidArgument(f"column '{ts_column}' has no time zone; time zones must be explicit")
    if col.null_count:
        raise InvalidArgument(f"column '{ts_column}' has null timestamps")
    as_us = pc.cast(col, pa.timestamp("us", tz="UTC"), safe=False)
    return pc.cast(as_us, pa.int64()).to_pylist()  # type: ignore[no-any-return]


def _key_values(rows: pa.Table, key: JoinKey) -> list[Any]:
    if key.name not in rows.column_names:
        raise InvalidArgument(f"the entity rows lack the join key column '{key.name}'")
    try:
        return [convert(key.dtype, v) for v in rows.column(key.name).to_pylist()]
    except ConversionError as exc:
        raise InvalidArgument(f"join key column '{key.name}': {exc}") from exc
