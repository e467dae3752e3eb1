"""Writing events into the outbox, in the same transaction as the state change they describe."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mlp_core.errors import InvalidArgument
from mlp_core.events.envelope import CloudEvent, to_kafka, topic_for
from mlp_core.events.tables import DEFAULT_TABLES, EventTables
from mlp_core.events.tracing import current_trace_headers

#: Below Kafka's default ``message.max.bytes`` (1 MiB) with room for headers: an event the broker
#: would always refuse must fail its transaction now, not block the outbox forever later.
MAX_EVENT_BYTES = 900_000


class EventTooLarge(InvalidArgument):
    """The event's envelope is over ``MAX_EVENT_BYTES``; events carry references, not payloads."""


class Outbox:
    """Adds CloudEvents from one source (``/mlp/<service>``) to the outbox table.

    The row commits or rolls back with the caller's session; ``OutboxRelay`` publishes it later.
    """

    def __init__(self, source: str, tables: EventTables = DEFAULT_TABLES,
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        if not source:
            raise ValueError("source must be a non-empty URI reference such as '/mlp/registry'")
        self.source = source
        self.max_event_bytes = max_event_bytes
        self._table = tables.outbox

    def add(
        self,
        session: Session,
        *,
        type: str,
        subject: str,
        data: dict[str, Any],
        tenant: str | None = None,
    ) -> CloudEvent:
        """Record one event in the caller's transaction; it carries the current trace context."""
        topic_for(type)
        trace = current_trace_headers()
        event = CloudEvent(
            source=self.source,
            type=type,
            subject=subject,
            data=data,
            tenant=tenant,
            traceparent=trace.get("traceparent"),
            tracestate=trace.get("tracestate") or None,
        )
        message = to_kafka(event)
        if len(message.value) > self.max_event_bytes:
            raise EventTooLarge(
                f"event {type} for '{subject}' is {len(message.value):,} bytes, over the limit of "
                f"{self.max_event_bytes:,}; put large data in a store and reference it from the event")
        session.execute(
            insert(self._table).values(
                event_id=event.id,
                event_type=event.type,
                topic=message.topic,
                key=subject,
                payload=message.value.decode(),
                headers=json.dumps({k: v.decode() for k, v in message.headers}),
                created_at=datetime.now(UTC),
                attempts=0,
            )
        )
        return event
