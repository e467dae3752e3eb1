"""Feature store tables: definitions, ingestion runs and quarantine, materialization, lineage, erasures.

Per-feature-view offline tables are created at apply time by the offline store (their columns follow
the definitions), not here.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fs_definitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("project", "kind", "name", "version", name="uq_fs_definitions_identity"),
    )
    op.create_table(
        "fs_ingestion_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False, index=True),
        sa.Column("view", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("rows_in", sa.BigInteger, nullable=False),
        sa.Column("rows_written", sa.BigInteger, nullable=False),
        sa.Column("rows_quarantined", sa.BigInteger, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("ingested_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fs_quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False, index=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("view", sa.String(64), nullable=False),
        sa.Column("row", sa.JSON, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
    )
    op.create_table(
        "fs_materialization_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False, index=True),
        sa.Column("view", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("from_us", sa.BigInteger, nullable=True),
        sa.Column("to_us", sa.BigInteger, nullable=True),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("entities_written", sa.BigInteger, nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=False),
        sa.Column("finished_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fs_watermarks",
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("view", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("ingested_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fs_push_receipts",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("received_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fs_lineage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False, index=True),
        sa.Column("feature_service", sa.String(64), nullable=False),
        sa.Column("consumer_kind", sa.String(32), nullable=False),
        sa.Column("consumer_ref", sa.String(256), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=True),
        sa.Column("recorded_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("project", "feature_service", "consumer_kind", "consumer_ref", name="uq_fs_lineage"),
    )
    op.create_table(
        "fs_erasures",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False, index=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(256), nullable=False),
        sa.Column("offline_rows", sa.BigInteger, nullable=False),
        sa.Column("online_keys", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("erased_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in ("fs_erasures", "fs_lineage", "fs_push_receipts", "fs_watermarks", "fs_materialization_runs",
                 "fs_quarantine", "fs_ingestion_runs", "fs_definitions"):
        op.drop_table(name)
