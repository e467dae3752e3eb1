"""The transactional outbox of ``mlp_core.events`` as the feature store's ``EventSink``."""

from __future__ import annotations

from typing import Any

from mlp_core.events import Outbox
from mlp_feature_store.domain.events import DomainEvent


class OutboxSink:
    """Writes each event into the outbox table of the database whose transaction it joins.

    The row commits or rolls back with the state change; an ``OutboxRelay`` per database publishes it,
    so a broker outage delays events and a failed change never emits one.
    """

    def __init__(self, source: str = "/mlp/feature-store") -> None:
        self.outbox = Outbox(source)

    def add(self, tx: Any, event: DomainEvent) -> None:
        """Insert the outbox row with ``tx`` (a Session or Connection inside a transaction)."""
        self.outbox.add(tx, type=event.type, subject=event.subject, data=event.data,
                        tenant=event.data.get("project"))
