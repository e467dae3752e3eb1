"""Events the feature store emits (CloudEvents types) and the port that publishes them."""

from __future__ import annotations

from typing import Any, Protocol

SOURCE = "mlp.feature-store"
DEFINITION_APPLIED = "mlp.feature-store.definition-applied"
INGESTION_COMPLETED = "mlp.feature-store.ingestion-completed"
QUALITY_FAILED = "mlp.feature-store.quality-failed"
MATERIALIZATION_COMPLETED = "mlp.feature-store.materialization-completed"
ENTITY_ERASED = "mlp.feature-store.entity-erased"


class EventPublisher(Protocol):
    """Where domain events go (an outbox in production, a list in tests)."""

    def publish(self, type: str, subject: str, data: dict[str, Any]) -> None:
        """Record one event for delivery."""


class RecordingPublisher:
    """Keeps events in memory; for tests and for running without Kafka."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, type: str, subject: str, data: dict[str, Any]) -> None:
        """Append the event."""
        self.events.append((type, subject, data))

    def of_type(self, type: str) -> list[dict[str, Any]]:
        """Data of the recorded events of one type."""
        return [d for t, _s, d in self.events if t == type]
