"""SQL tables of the audit log (created by the gateway's migration 0002)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text

metadata = MetaData()

audit_records = Table(
    "audit_records", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", String(40), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("client_id", String(256), nullable=False),
    Column("action", String(512), nullable=False),
    Column("object", String(1024), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("transport", String(8), nullable=False),
    Column("trace_id", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One row (id 1): the newest seq and hash; locked per batch so replicas extend one chain in turn.
audit_chain_head = Table(
    "audit_chain_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("signed_at", String(40), nullable=False),
)
