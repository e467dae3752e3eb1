"""Alembic environment of the events test migrations: the shared runner."""

from mlp_core.migrations_env import run_migrations

run_migrations()
