"""The start-up sequence every service shares: logging, migrations, stores, host, outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlp_core.db import Database, migrate
from mlp_core.host import Probe, ServiceHost, ServiceParts, setup_process, tcp_probe
from mlp_core.settings import CoreSettings

S = TypeVar("S", bound=CoreSettings)


def standard_probes(settings: CoreSettings, db: Database) -> dict[str, Probe]:
    """Database and Kafka probes that every service's /readyz runs."""
    probes: dict[str, Probe] = {"database": db.ping}
    if settings.kafka_servers:
        probes["kafka"] = tcp_probe(settings.kafka_servers[0])
    return probes


def build_host(settings: S, migrations_dir: Path, build: Callable[[S, Database], ServiceParts],
               *, with_outbox_relay: bool = True) -> ServiceHost:
    """Migrate the service's database, build its parts, and add the standard probes and relay."""
    url = settings.resolved_database_url
    migrate(url, migrations_dir, version_table=f"alembic_version_{settings.service_name.replace('-', '_')}")
    db = Database(url)
    parts = build(settings, db)
    parts.probes = {**standard_probes(settings, db), **parts.probes}
    background = list(parts.background)
    if with_outbox_relay and settings.kafka_servers:
        from mlp_core.events import OutboxRelay

        background.append(OutboxRelay(db, settings.kafka_bootstrap_servers).run)
    parts.background = background
    parts.on_shutdown = [*parts.on_shutdown, db.dispose]
    return ServiceHost(settings, parts)


def run(settings: S, migrations_dir: Path, build: Callable[[S, Database], ServiceParts]) -> None:
    """Entry point body of a service's ``main()``."""
    setup_process(settings)
    host = build_host(settings, migrations_dir, build)
    asyncio.run(host.serve())
