"""Outbox and processed-event tables from mlp_core.events.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from alembic import op
from mlp_core.events import create_event_tables, drop_event_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_event_tables(op)


def downgrade() -> None:
    drop_event_tables(op)
