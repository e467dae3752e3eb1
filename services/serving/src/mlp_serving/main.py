"""Composition root of the serving service: builds its parts and hands them to the host."""

from __future__ import annotations

from pathlib import Path

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.host import ServiceParts
from mlp_serving.settings import ServingSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build(settings: ServingSettings, db: Database) -> ServiceParts:
    """Wire the serving service. Its domain arrives with its own issue (see ROADMAP.md)."""
    return ServiceParts(title="MLP model serving service")


def main() -> None:
    """Console entry point ``mlp-serving``."""
    bootstrap.run(ServingSettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
