"""The start-up sequence every service shares: logging, migrations, stores, host, outbox relay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlp_core.db import Database, migrate
from mlp_core.host import Probe, ServiceHost, ServiceParts, setup_process, tcp_probe
from mlp_core.settings import CoreSettings

if TYPE_CHECKING:
    from mlp_core.events import OutboxRelay

S = TypeVar("S", bound=CoreSettings)


def standard_probes(settings: CoreSettings, db: Database) -> dict[str, Probe]:
    """Database and Kafka probes that every service's /readyz runs."""
    probes: dict[str, Probe] = {"database": db.ping}
    if settings.kafka_servers:
        probes["kafka"] = tcp_probe(settings.kafka_servers[0])
    return probes


def build_host(settings: S, migrations_dir: Path, build: Callable[[S, Database], ServiceParts],
               *, with_outbox_relay: bool = True, verifier: Any | None = None) -> ServiceHost:
    """Migrate the service's database, build its parts, and add the standard probes and relay.

    ``verifier`` replaces the token verifier built from settings (the gateway shares one with its guard).
    """
    url = settings.resolved_database_url
    migrate(url, migrations_dir, version_table=f"alembic_version_{settings.service_name.replace('-', '_')}")
    db = Database(url)
    _instrument_sqlalchemy(db)
    parts = build(settings, db)
    parts.probes = {**standard_probes(settings, db), **parts.probes}
    background = list(parts.background)
    registry = CollectorRegistry()
    if with_outbox_relay and settings.kafka_servers:
        from mlp_core.events import OutboxRelay

        relay = OutboxRelay(db, settings.kafka_bootstrap_servers)
        background.append(relay.run)
        registry.register(RelayCollector(relay, settings.service_name))
        parts.on_shutdown = [*parts.on_shutdown, relay.close]
    parts.background = background
    parts.on_shutdown = [*parts.on_shutdown, db.dispose]
    return ServiceHost(settings, parts, registry=registry, verifier=verifier)


def _instrument_sqlalchemy(db: Database) -> None:
    """Trace every statement as a child span of the request that ran it."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=db.engine, enable_commenter=False)


class RelayCollector(Collector):
    """Exports the outbox relay's counters: ``mlp_outbox_published_total``, ``..._failed_total``, ``mlp_outbox_pending``."""

    def __init__(self, relay: OutboxRelay, service: str) -> None:
        self.relay = relay
        self.service = service

    def collect(self) -> Iterator[Metric]:
        """Read the relay's counters at scrape time (one small COUNT query for the backlog)."""
        stats = self.relay.stats()
        published = CounterMetricFamily("mlp_outbox_published", "Events the relay published", labels=["service"])
        published.add_metric([self.service], stats.published)
        failed = CounterMetricFamily("mlp_outbox_failed", "Failed publish attempts", labels=["service"])
        failed.add_metric([self.service], stats.failed)
        pending = GaugeMetricFamily("mlp_outbox_pending", "Events waiting in the outbox", labels=["service"])
        pending.add_metric([self.service], stats.pending)
        yield from (published, failed, pending)


def run(settings: S, migrations_dir: Path, build: Callable[[S, Database], ServiceParts]) -> None:
    """Entry point body of a service's ``main()``."""
    setup_process(settings)
    host = build_host(settings, migrations_dir, build)
    host.run()
