"""Root test configuration: real PostgreSQL, Redis, a Tansu broker and OIDC test tokens for every suite.

Plugins are declared only here (pytest allows ``pytest_plugins`` in the root conftest alone).
"""

pytest_plugins = ["mlp_core.testing.fixtures", "mlp_core.testing.tokens", "mlp_core.testing.kafka"]
