"""Alembic environment of the feature store: the shared runner with our own version table."""

from mlp_core.migrations_env import run_migrations

run_migrations()
