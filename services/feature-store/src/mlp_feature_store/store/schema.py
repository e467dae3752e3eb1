"""SQL tables of the feature store (fixed ones; per-view offline tables are built in ``offline_tables``).

Timestamps that take part in point-in-time logic are stored as integer microseconds since the Unix
epoch (UTC), so that SQLite and PostgreSQL compare them identically and no time zone is implied.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

definitions = Table(
    "fs_definitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    UniqueConstraint("project", "kind", "name", "version", name="uq_fs_definitions_identity"),
)

ingestion_runs = Table(
    "fs_ingestion_runs", metadata,
    Column("id", String(36), primary_key=True),
    Column("project", String(64), nullable=False, index=True),
    Column("view", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", String(32), nullable=False),
    Column("rows_in", BigInteger, nullable=False),
    Column("rows_written", BigInteger, nullable=False),
    Column("rows_quarantined", BigInteger, nullable=False),
    Column("report", JSON, nullable=False),
    Column("ingested_us", BigInteger, nullable=False),
)

quarantine = Table(
    "fs_quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False, index=True),
    Column("project", String(64), nullable=False),
    Column("view", String(64), nullable=False),
    Column("row", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
)

materialization_runs = Table(
    "fs_materialization_runs", metadata,
    Column("id", String(36), primary_key=True),
    Column("project", String(64), nullable=False, index=True),
    Column("view", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("from_us", BigInteger, nullable=True),
    Column("to_us", BigInteger, nullable=True),
    Column("rows_read", BigInteger, nullable=False),
    Column("entities_written", BigInteger, nullable=False),
    Column("started_us", BigInteger, nullable=False),
    Column("finished_us", BigInteger, nullable=False),
)

watermarks = Table(
    "fs_watermarks", metadata,
    Column("project", String(64), primary_key=True),
    Column("view", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("ingested_us", BigInteger, nullable=False),
)

push_receipts = Table(
    "fs_push_receipts", metadata,
    Column("event_id", String(128), primary_key=True),
    Column("received_us", BigInteger, nullable=False),
)

lineage = Table(
    "fs_lineage", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", String(64), nullable=False, index=True),
    Column("feature_service", String(64), nullable=False),
    Column("consumer_kind", String(32), nullable=False),
    Column("consumer_ref", String(256), nullable=False),
    Column("event_id", String(128), nullable=True),
    Column("recorded_us", BigInteger, nullable=False),
    UniqueConstraint("project", "feature_service", "consumer_kind", "consumer_ref", name="uq_fs_lineage"),
)

erasures = Table(
    "fs_erasures", metadata,
    Column("id", String(36), primary_key=True),
    Column("project", String(64), nullable=False, index=True),
    Column("entity", String(64), nullable=False),
    Column("key_digest", String(64), nullable=False),
    Column("requested_by", String(256), nullable=False),
    Column("offline_rows", BigInteger, nullable=False),
    Column("online_keys", BigInteger, nullable=False),
    Column("detail", Text, nullable=False),
    Column("erased_us", BigInteger, nullable=False),
)
