"""Fixtures for mlp-core tests."""

from mlp_core.testing.fixtures import any_db_url, pg_url, sqlite_url  # noqa: F401
from mlp_core.testing.kafka import kafka_bootstrap, kafka_broker, unique_topic  # noqa: F401
