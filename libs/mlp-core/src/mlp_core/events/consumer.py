"""Consuming CloudEvents from Kafka idempotently: one DB transaction per event, offsets after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mlp_core.db import Database
from mlp_core.events.envelope import CloudEvent, InvalidEvent, from_kafka
from mlp_core.events.tables import DEFAULT_TABLES, EventTables
from mlp_core.events.tracing import extract_context

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mlp_core.events")

EventHandler = Callable[[Session, CloudEvent], None]


class EventConsumer:
    """Runs ``handler(session, event)`` once per event id for one consumer group.

    For each record: parse the CloudEvent (a malformed record is logged, counted, optionally sent to
    ``<topic>.dlq``, and skipped); open a consumer span childed to the producer's trace context; in
    one ``db.session()`` insert ``(group, event id)`` into ``processed_events`` and call the handler
    (an id already there is skipped); then commit the offset. A failing handler rolls back, the
    consumer seeks back to that record and retries it after ``retry_backoff_s``.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        group_id: str,
        topics: Sequence[str],
        handler: EventHandler,
        db: Database,
        *,
        max_poll_interval_ms: int = 300_000,
        dead_letter: bool = False,
        retry_backoff_s: float = 1.0,
        poll_timeout_ms: int = 500,
        tables: EventTables = DEFAULT_TABLES,
    ) -> None:
        if not topics:
            raise ValueError("EventConsumer needs at least one topic")
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.topics = list(topics)
        self.handler = handler
        self.db = db
        self.max_poll_interval_ms = max_poll_interval_ms
        self.dead_letter = dead_letter
        self.retry_backoff_s = retry_backoff_s
        self.poll_timeout_ms = poll_timeout_ms
        self._processed = tables.processed_events
        self._consumer: Any = None
        self._dlq_producer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.duplicates = 0
        self.malformed = 0
        self.handler_errors = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def _make_consumer(self) -> Any:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"mlp-consumer-{self.group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=self.max_poll_interval_ms,
            # kafka-python requires the session timeout to stay below the poll interval.
            session_timeout_ms=min(45_000, max(3_000, self.max_poll_interval_ms - 1_000)),
            heartbeat_interval_ms=min(3_000, max(500, self.max_poll_interval_ms // 5)),
        )
        consumer.subscribe(self.topics)
        return consumer

    def run_forever(self) -> None:
        """Poll and process until ``stop()``; connection errors are retried, never fatal."""
        try:
            while not self._stop.is_set():
                try:
                    if self._consumer is None:
                        self._consumer = self._make_consumer()
                    self.poll_once()
                except Exception:
                    log.exception("event consumer %s: poll failed; reconnecting", self.group_id)
                    self._close_consumer()
                    self._stop.wait(self.retry_backoff_s)
        finally:
            self._close_consumer()
            if self._dlq_producer is not None:
                with contextlib.suppress(Exception):
                    self._dlq_producer.close(timeout=1)
                self._dlq_producer = None

    def run_in_thread(self) -> threading.Thread:
        """Start ``run_forever`` in a daemon thread and return it."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name=f"consumer-{self.group_id}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the loop to end and wait for the thread (if one was started)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    async def run(self, stop_event: asyncio.Event) -> None:
        """Run in a worker thread until ``stop_event`` is set (for a service's background tasks)."""
        self._stop.clear()
        task = asyncio.create_task(asyncio.to_thread(self.run_forever))
        try:
            await stop_event.wait()
        finally:
            self._stop.set()
            await task

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)

    # -- processing -----------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Poll one batch and process it; returns the number of records handled (applied or skipped)."""
        from kafka.structs import OffsetAndMetadata

        assert self._consumer is not None, "consumer not started"
        batches = self._consumer.poll(timeout_ms=self.poll_timeout_ms)
        handled = 0
        for tp, records in batches.items():
            for record in records:
                if self._stop.is_set():
                    return handled
                if not self._process(record):
                    # Roll back to the failed record: it is fetched again after the backoff.
                    self._consumer.seek(tp, record.offset)
                    self._stop.wait(self.retry_backoff_s)
                    break
                self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
                handled += 1
        return handled

    def _process(self, record: Any) -> bool:
        """True when the record is done with (applied, duplicate or skipped); False to retry it."""
        try:
            event = from_kafka(record.value, record.headers)
        except InvalidEvent as exc:
            self.malformed += 1
            log.warning("event consumer %s: skipping malformed record %s[%d]@%d: %s",
                        self.group_id, record.topic, record.partition, record.offset, exc)
            self._dead_letter(record, str(exc))
            return True
        headers = list(record.headers or [])
        if not any(k.lower() == "traceparent" for k, _ in headers) and event.traceparent:
            headers.append(("traceparent", event.traceparent.encode()))
            if event.tracestate:
                headers.append(("tracestate", event.tracestate.encode()))
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self.group_id,
            "messaging.message.id": event.id,
            "cloudevents.event_type": event.type,
        }
        with _tracer.start_as_current_span(
            f"process {record.topic}", context=extract_context(headers),
            kind=trace.SpanKind.CONSUMER, attributes=attributes,
        ) as span:
            try:
                applied = self._apply(event)
            except Exception as exc:
                self.handler_errors += 1
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, str(exc))
                log.exception("event consumer %s: handler failed for event %s; will retry",
                              self.group_id, event.id)
                return False
        if applied:
            self.applied += 1
        else:
            self.duplicates += 1
        return True

    def _apply(self, event: CloudEvent) -> bool:
        t = self._processed
        with self.db.session() as session:
            seen = session.execute(
                select(t.c.event_id).where(t.c.consumer_group == self.group_id, t.c.event_id == event.id)
            ).first()
            if seen is not None:
                return False
            # The primary key also guards against a concurrent duplicate: that insert fails, rolls back.
            session.execute(
                insert(t).values(consumer_group=self.group_id, event_id=event.id, processed_at=datetime.now(UTC))
            )
            self.handler(session, event)
        return True

    def _dead_letter(self, record: Any, reason: str) -> None:
        if not self.dead_letter:
            return
        try:
            if self._dlq_producer is None:
                from kafka import KafkaProducer

                self._dlq_producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all")
            headers = [*(record.headers or []), ("mlp-dlq-reason", reason.encode()[:1000]),
                       ("mlp-dlq-group", self.group_id.encode())]
            self._dlq_producer.send(f"{record.topic}.dlq", key=record.key, value=record.value,
                                    headers=headers).get(timeout=10)
        except Exception:
            log.exception("event consumer %s: could not write to %s.dlq", self.group_id, record.topic)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: applied, duplicates, malformed, handler_errors."""
        return {"applied": self.applied, "duplicates": self.duplicates,
                "malformed": self.malformed, "handler_errors": self.handler_errors}

