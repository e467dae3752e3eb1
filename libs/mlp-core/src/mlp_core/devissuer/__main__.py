"""``mlp-dev-issuer``: serve the dev OIDC issuer on host/port from arguments or ``MLP_DEV_ISSUER_*``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from mlp_core.devissuer.app import DEFAULT_TOKEN_LIFETIME_S, create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with defaults from the environment."""
    env = os.environ
    parser = argparse.ArgumentParser(prog="mlp-dev-issuer", description="Local OIDC issuer (dev only)")
    parser.add_argument("--host", default=env.get("MLP_DEV_ISSUER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("MLP_DEV_ISSUER_PORT", "8080")))
    parser.add_argument("--state-dir", type=Path, default=Path(env.get("MLP_STATE_DIR", ".mlp")))
    parser.add_argument("--issuer", default=env.get("MLP_DEV_ISSUER_URL"),
                        help="issuer URL (default http://<host>:<port>)")
    parser.add_argument("--clients", type=Path, default=env.get("MLP_DEV_ISSUER_CLIENTS") or None,
                        help="YAML/JSON clients file (default <state-dir>/issuer/clients.json)")
    parser.add_argument("--token-lifetime", type=int,
                        default=int(env.get("MLP_DEV_ISSUER_TOKEN_LIFETIME_S", str(DEFAULT_TOKEN_LIFETIME_S))))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = parse_args(argv)
    issuer = args.issuer or f"http://{args.host}:{args.port}"
    app = create_app(args.state_dir, issuer, args.clients, token_lifetime_s=args.token_lifetime)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
