"""Idempotency keys: a retried RegisterVersion with the same key returns the same draft.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_idempotency_keys",
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("caller", sa.String(length=256), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"]),
        sa.PrimaryKeyConstraint("operation", "model_id", "caller", "key"),
    )


def downgrade() -> None:
    op.drop_table("registry_idempotency_keys")
