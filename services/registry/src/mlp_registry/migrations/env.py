"""Alembic environment of the registry: the shared runner with the registry's version table."""

from mlp_core.migrations_env import run_migrations

run_migrations()
