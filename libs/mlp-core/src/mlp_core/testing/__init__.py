"""Pytest fixtures for real backing services: PostgreSQL, Redis, a Tansu Kafka broker, tokens.

Enable with ``pytest_plugins = ["mlp_core.testing.fixtures"]`` in a conftest.
"""
