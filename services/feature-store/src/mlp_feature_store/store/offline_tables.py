"""Per-feature-view offline tables: one per (project, view, version), typed columns, PIT index."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, Table, Text
from sqlalchemy.types import TypeEngine

from mlp_feature_store.domain.models import ValueType
from mlp_feature_store.store.base import ViewLayout


def sql_type(dtype: ValueType) -> TypeEngine[Any]:
    """The SQL column type for a value type (timestamps: µs since the epoch, UTC, as BIGINT)."""
    if dtype in (ValueType.INT64, ValueType.TIMESTAMP):
        return BigInteger()
    if dtype == ValueType.FLOAT64:
        return Float(precision=53)
    if dtype == ValueType.BOOL:
        return Boolean()
    return Text()


def table_name(project: str, view: str, version: int) -> str:
    """A short, safe, collision-resistant table name for a view version."""
    digest = hashlib.sha256(f"{project}\x00{view}\x00{version}".encode()).hexdigest()[:24]
    return f"fsv_{digest}"


def key_col(name: str) -> str:
    """Column name of a join key (prefixed so that it can never collide with a feature)."""
    return f"k_{name}"


def feat_col(name: str) -> str:
    """Column name of a feature."""
    return f"f_{name}"


def view_table(layout: ViewLayout, metadata: MetaData | None = None) -> Table:
    """The SQLAlchemy table of a view version; index on (keys, event_ts, ingested_ts, row_id)."""
    md = metadata or MetaData()
    v = layout.view
    name = table_name(layout.project, v.name, v.version)
    keys = [Column(key_col(k.name), sql_type(k.dtype), nullable=False) for k in layout.keys]
    feats = [Column(feat_col(f.name), sql_type(f.dtype), nullable=True) for f in v.features]
    table = Table(
        name, md,
        Column("row_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        *keys,
        Column("event_ts", BigInteger, nullable=False),
        Column("ingested_ts", BigInteger, nullable=False),
        *feats,
    )
    Index(f"ix_{name}_pit", *[table.c[key_col(k.name)] for k in layout.keys], table.c.event_ts,
          table.c.ingested_ts, table.c.row_id)
    Index(f"ix_{name}_ing", table.c.ingested_ts)
    return table
