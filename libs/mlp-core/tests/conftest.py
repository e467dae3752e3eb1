"""mlp-core tests use the root conftest plugins (PostgreSQL, Redis, Tansu, test issuer)."""
