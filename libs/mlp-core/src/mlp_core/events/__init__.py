"""Events: CloudEvents envelope, transactional outbox, relay to Kafka, idempotent consumer.

Topic = event type = ``mlp.<service>.<event>``. Producers call ``Outbox.add(session, ...)`` in the
same transaction as the state change; ``OutboxRelay`` publishes; ``EventConsumer`` applies each
event id once per consumer group. See docs/PLUMBING.md.
"""

from mlp_core.events.consumer import EventConsumer, EventHandler
from mlp_core.events.envelope import (
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    KafkaMessage,
    from_kafka,
    to_kafka,
    topic_for,
)
from mlp_core.events.outbox import Outbox
from mlp_core.events.relay import OutboxRelay, RelayStats
from mlp_core.events.tables import (
    DEFAULT_TABLES,
    EventTables,
    create_event_tables,
    drop_event_tables,
    event_tables,
)
from mlp_core.events.tracing import current_trace_headers, extract_context, inject_headers

__all__ = [
    "DEFAULT_TABLES",
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "EventConsumer",
    "EventHandler",
    "EventTables",
    "InvalidEvent",
    "KafkaMessage",
    "Outbox",
    "OutboxRelay",
    "RelayStats",
    "create_event_tables",
    "current_trace_headers",
    "drop_event_tables",
    "event_tables",
    "extract_context",
    "from_kafka",
    "inject_headers",
    "to_kafka",
    "topic_for",
]
