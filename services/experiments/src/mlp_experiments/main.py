"""Composition root of the experiments service: builds its parts and hands them to the host."""

from __future__ import annotations

from pathlib import Path

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.host import ServiceParts
from mlp_experiments.settings import ExperimentsSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build(settings: ExperimentsSettings, db: Database) -> ServiceParts:
    """Wire the experiments service. Its domain arrives with its own issue (see ROADMAP.md)."""
    return ServiceParts(title="MLP experiments service")


def main() -> None:
    """Console entry point ``mlp-experiments``."""
    bootstrap.run(ExperimentsSettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
