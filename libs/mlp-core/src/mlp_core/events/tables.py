"""The ``outbox`` and ``processed_events`` tables every service keeps in its own database.

Services get them through their own first Alembic migration (``create_event_tables(op)``) and may
also add them to their SQLAlchemy metadata (``event_tables(metadata)``) for autogenerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text

OUTBOX = "outbox"
PROCESSED_EVENTS = "processed_events"

# BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (rowid, autoincrement) on SQLite.
_Id = BigInteger().with_variant(Integer(), "sqlite")


def _outbox_columns() -> list[Column[Any]]:
    return [
        Column("id", _Id, primary_key=True, autoincrement=True),
        Column("event_id", String(255), nullable=False, unique=True),
        Column("event_type", String(249), nullable=False),
        Column("topic", String(249), nullable=False),
        Column("key", String(1024), nullable=True),
        Column("payload", Text, nullable=False),
        Column("headers", Text, nullable=False, default="{}"),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False, default=0, server_default="0"),
        Column("last_error", Text, nullable=True),
        Column("published_at", DateTime(timezone=True), nullable=True),
        Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    ]


def _processed_columns() -> list[Column[Any]]:
    return [
        Column("consumer_group", String(255), primary_key=True),
        Column("event_id", String(255), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    ]


@dataclass(frozen=True)
class EventTables:
    """The two Table objects, bound to one MetaData."""

    outbox: Table
    processed_events: Table


def event_tables(metadata: MetaData, prefix: str = "") -> EventTables:
    """Add ``<prefix>outbox`` and ``<prefix>processed_events`` to ``metadata`` and return them.

    The prefix is for services that must share one schema; the default is no prefix.
    """
    outbox = Table(prefix + OUTBOX, metadata, *_outbox_columns())
    Index(f"ix_{prefix}{OUTBOX}_pending", outbox.c.published_at, outbox.c.id)
    processed = Table(prefix + PROCESSED_EVENTS, metadata, *_processed_columns())
    return EventTables(outbox=outbox, processed_events=processed)


def create_event_tables(op: Any, prefix: str = "") -> None:
    """Create both tables from a service's Alembic migration (``op`` is ``alembic.op``)."""
    op.create_table(prefix + OUTBOX, *_outbox_columns())
    op.create_index(f"ix_{prefix}{OUTBOX}_pending", prefix + OUTBOX, ["published_at", "id"])
    op.create_table(prefix + PROCESSED_EVENTS, *_processed_columns())


def drop_event_tables(op: Any, prefix: str = "") -> None:
    """The downgrade of ``create_event_tables``."""
    op.drop_table(prefix + PROCESSED_EVENTS)
    op.drop_index(f"ix_{prefix}{OUTBOX}_pending", table_name=prefix + OUTBOX)
    op.drop_table(prefix + OUTBOX)


DEFAULT_TABLES = event_tables(MetaData())
