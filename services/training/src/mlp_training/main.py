"""Composition root of the training service: builds its parts and hands them to the host."""

from __future__ import annotations

from pathlib import Path

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.host import ServiceParts
from mlp_training.settings import TrainingSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build(settings: TrainingSettings, db: Database) -> ServiceParts:
    """Wire the training service. Its domain arrives with its own issue (see ROADMAP.md)."""
    return ServiceParts(title="MLP training pipelines service")


def main() -> None:
    """Console entry point ``mlp-training``."""
    bootstrap.run(TrainingSettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
