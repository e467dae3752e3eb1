"""Writer lease on upload sessions: one stream at a time may write to a session.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("registry_uploads", sa.Column("lease_id", sa.String(length=32), nullable=True))
    op.add_column("registry_uploads", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_uploads") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_id")
