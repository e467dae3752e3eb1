"""Alembic environment: shared runner with this service's version table."""

from mlp_core.migrations_env import run_migrations

run_migrations()
