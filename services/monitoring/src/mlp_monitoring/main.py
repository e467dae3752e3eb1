"""Composition root of the monitoring service: builds its parts and hands them to the host."""

from __future__ import annotations

from pathlib import Path

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.host import ServiceParts
from mlp_monitoring.settings import MonitoringSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def build(settings: MonitoringSettings, db: Database) -> ServiceParts:
    """Wire the monitoring service. Its domain arrives with its own issue (see ROADMAP.md)."""
    return ServiceParts(title="MLP monitoring service")


def main() -> None:
    """Console entry point ``mlp-monitoring``."""
    bootstrap.run(MonitoringSettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
