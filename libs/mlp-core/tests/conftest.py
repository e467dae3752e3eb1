"""Shared fixtures for mlp-core tests: real PostgreSQL/Redis, and a local OIDC test issuer."""

pytest_plugins = ["mlp_core.testing.fixtures", "mlp_core.testing.tokens"]

# Tansu broker fixtures for the events tests (kafka_bootstrap, kafka_broker, unique_topic).
pytest_plugins = [*pytest_plugins, "mlp_core.testing.kafka"]
