"""Events the feature store emits (CloudEvents types) and the port the stores write them through.

A state change and the event that describes it commit together: the domain hands ``DomainEvent``s to
the store method that makes the change, and the store adds them to its transaction through an
``EventSink`` (the transactional outbox in production, a list in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SOURCE = "mlp.feature-store"
DEFINITION_APPLIED = "mlp.feature-store.definition-applied"
INGESTION_COMPLETED = "mlp.feature-store.ingestion-completed"
QUALITY_FAILED = "mlp.feature-store.quality-failed"
MATERIALIZATION_COMPLETED = "mlp.feature-store.materialization-completed"
ENTITY_ERASED = "mlp.feature-store.entity-erased"


@dataclass(frozen=True)
class DomainEvent:
    """One event to publish: its type, the subject (the Kafka key) and a JSON object."""

    type: str
    subject: str
    data: dict[str, Any]


class EventSink(Protocol):
    """Adds events to the caller's open transaction (a SQLAlchemy ``Session`` or ``Connection``)."""

    def add(self, tx: Any, event: DomainEvent) -> None:
        """Record ``event`` so that it commits or rolls back with ``tx``."""


class RecordingSink:
    """Keeps events in memory (for tests); it cannot roll back, so only use it where that is fine."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, tx: Any, event: DomainEvent) -> None:
        """Append the event."""
        self.events.append((event.type, event.subject, event.data))

    def of_type(self, type: str) -> list[dict[str, Any]]:
        """Data of the recorded events of one type."""
        return [d for t, _s, d in self.events if t == type]
