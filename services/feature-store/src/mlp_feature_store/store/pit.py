"""Point-in-time join SQL, built with SQLAlchemy Core and pushed down to the database.

For every entity row and every feature view, pick the view row with the same keys whose event time is at
or before the entity row's time (and within TTL, and optionally ingested by then), newest first, ties
broken by ingestion time and then by insertion order. PostgreSQL uses ``LEFT JOIN LATERAL ... LIMIT 1``
over the (keys, event_ts, ingested_ts, row_id) index; SQLite, which has no LATERAL, computes the winning
``row_id`` per view with correlated scalar subqueries in a CTE and joins on the primary key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, Select, Table, select, true
from sqlalchemy.sql.elements import ColumnElement

from mlp_feature_store.domain.models import JoinKey
from mlp_feature_store.store.base import PitRequest
from mlp_feature_store.store.offline_tables import feat_col, key_col, sql_type, view_table


def entity_table(name: str, keys: Sequence[JoinKey]) -> Table:
    """The temporary table that holds the entity rows (row index, keys, timestamp in µs)."""
    return Table(name, MetaData(),
                 Column("row_idx", BigInteger, primary_key=True, autoincrement=False),
                 *[Column(key_col(k.name), sql_type(k.dtype), nullable=True) for k in keys],
                 Column("ts", BigInteger, nullable=False),
                 prefixes=["TEMPORARY"])


def _conditions(req: PitRequest, r: Any, e: Table, no_backfill: bool) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [r.c[key_col(k)] == e.c[key_col(k)] for k in req.layout.key_names]
    conds.append(r.c.event_ts <= e.c.ts)
    ttl = req.layout.view.ttl_seconds
    if ttl is not None:
        conds.append(r.c.event_ts >= e.c.ts - ttl * 1_000_000)
    if no_backfill:
        conds.append(r.c.ingested_ts <= e.c.ts)
    return conds


def _newest_first(r: Any) -> list[Any]:
    return [r.c.event_ts.desc(), r.c.ingested_ts.desc(), r.c.row_id.desc()]


def pit_query(requests: Sequence[PitRequest], e: Table, dialect: str, no_backfill: bool) -> Select[Any]:
    """The SELECT that yields (row_idx, feature columns...) ordered by row_idx."""
    if dialect == "postgresql":
        return _lateral_query(requests, e, no_backfill)
    return _cte_query(requests, e, no_backfill)


def _lateral_query(requests: Sequence[PitRequest], e: Table, no_backfill: bool) -> Select[Any]:
    cols: list[Any] = [e.c.row_idx]
    joined: Any = e
    for i, req in enumerate(requests):
        r = view_table(req.layout).alias(f"r{i}")
        lat = (select(*[r.c[feat_col(f)] for f in req.features])
               .where(*_conditions(req, r, e, no_backfill))
               .order_by(*_newest_first(r)).limit(1).lateral(f"l{i}"))
        joined = joined.outerjoin(lat, true())
        cols += [lat.c[feat_col(f)].label(f"{req.prefix}{f}") for f in req.features]
    return select(*cols).select_from(joined).order_by(e.c.row_idx)


def _cte_query(requests: Sequence[PitRequest], e: Table, no_backfill: bool) -> Select[Any]:
    picks: list[Any] = [e.c.row_idx]
    for i, req in enumerate(requests):
        r = view_table(req.layout).alias(f"r{i}")
        picks.append(select(r.c.row_id).where(*_conditions(req, r, e, no_backfill))
                     .order_by(*_newest_first(r)).limit(1).scalar_subquery().label(f"rid{i}"))
    m = select(*picks).cte("pit_pick")
    cols: list[Any] = [m.c.row_idx]
    joined: Any = m
    for i, req in enumerate(requests):
        t = view_table(req.layout).alias(f"t{i}")
        joined = joined.outerjoin(t, t.c.row_id == m.c[f"rid{i}"])
        cols += [t.c[feat_col(f)].label(f"{req.prefix}{f}") for f in req.features]
    return select(*cols).select_from(joined).order_by(m.c.row_idx)
