"""Cross-service tests use the real components of this machine (see mlp_core.testing)."""

pytest_plugins = ["mlp_core.testing.fixtures", "mlp_core.testing.tokens", "mlp_core.testing.kafka"]
