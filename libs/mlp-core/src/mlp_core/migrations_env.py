"""The body of every service's Alembic ``env.py``: online migrations with a per-service version table."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool


def run_migrations() -> None:
    """Run the pending revisions against the URL and version table set by ``mlp_core.db.migrate``."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    version_table = config.attributes.get("version_table", "alembic_version")
    engine = create_engine(url or "sqlite://", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
