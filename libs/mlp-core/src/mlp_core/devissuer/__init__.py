"""The dev OIDC issuer: discovery, JWKS and the client-credentials grant for local use.

Run with ``mlp-dev-issuer`` (or ``python -m mlp_core.devissuer``); never use it in production.
"""

from mlp_core.devissuer.app import create_app
from mlp_core.devissuer.clients import ClientConfig, default_clients, load_clients
from mlp_core.devissuer.keys import SigningKeys

__all__ = ["ClientConfig", "SigningKeys", "create_app", "default_clients", "load_clients"]
