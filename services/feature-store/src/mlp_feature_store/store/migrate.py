"""Runs the feature store's Alembic migrations on one database."""

from __future__ import annotations

from pathlib import Path

from mlp_core.db import migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "alembic_version_feature_store"


def migrate_database(url: str) -> None:
    """Bring ``url`` to the newest feature-store revision."""
    migrate(url, MIGRATIONS_DIR, version_table=VERSION_TABLE)
