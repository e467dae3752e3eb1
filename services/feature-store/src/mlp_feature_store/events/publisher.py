"""Publishes domain events through the transactional outbox of ``mlp_core.events``."""

from __future__ import annotations

from typing import Any

from mlp_core.db import Database
from mlp_core.events import Outbox


class OutboxPublisher:
    """``EventPublisher`` that writes each event to the service database's outbox table.

    The relay (``OutboxRelay``) delivers them to Kafka, so a broker outage delays events, never loses them.
    """

    def __init__(self, db: Database, source: str = "/mlp/feature-store") -> None:
        self.db = db
        self.outbox = Outbox(source)

    def publish(self, type: str, subject: str, data: dict[str, Any]) -> None:
        """Record the event in the outbox (its own transaction; see the report on atomicity)."""
        with self.db.session() as session:
            self.outbox.add(session, type=type, subject=subject, data=data, tenant=data.get("project"))
