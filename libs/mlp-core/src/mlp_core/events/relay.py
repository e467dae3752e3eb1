"""Publishing outbox rows to Kafka, in order, surviving broker outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mlp_core.db import Database
from mlp_core.events.tables import DEFAULT_TABLES, EventTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayStats:
    """Counters for metrics: rows published and failed attempts since start, rows still pending."""

    published: int
    failed: int
    pending: int


class OutboxRelay:
    """Moves unpublished outbox rows to Kafka and marks them published.

    Rows go out in id order. The first failure ends the batch and sets ``next_attempt_at`` on that
    row with exponential backoff; later rows wait behind it, so an outage delays events but never
    loses or reorders them. Delivery is at-least-once: consumers deduplicate by event id.
    """

    def __init__(
        self,
        db: Database,
        bootstrap_servers: str | list[str],
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        max_backoff_s: float = 30.0,
        base_backoff_s: float = 0.5,
        send_timeout_s: float = 10.0,
        tables: EventTables = DEFAULT_TABLES,
    ) -> None:
        self.db = db
        self.bootstrap_servers = bootstrap_servers
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.send_timeout_s = send_timeout_s
        self._table = tables.outbox
        self._producer: Any = None
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0

    # -- producer -------------------------------------------------------------------------------

    def _get_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            timeout_ms = int(self.send_timeout_s * 1000)
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id="mlp-outbox-relay",
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,
                bootstrap_timeout_ms=min(timeout_ms, 5000),
                max_block_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms * 2,
                linger_ms=5,
            )
        return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=1)

    def close(self) -> None:
        """Flush nothing further and close the producer."""
        with self._lock:
            self._drop_producer()

    # -- publishing -----------------------------------------------------------------------------

    def publish_pending(self) -> int:
        """Publish one batch of due rows; returns how many were published. Never raises for Kafka errors."""
        with self._lock, self.db.session() as session:
            rows = self._select_batch(session)
            if not rows:
                return 0
            try:
                producer = self._get_producer()
                futures = [
                    producer.send(
                        row.topic,
                        key=row.key.encode() if row.key is not None else None,
                        value=row.payload.encode(),
                        headers=[(k, str(v).encode()) for k, v in json.loads(row.headers or "{}").items()],
                    )
                    for row in rows
                ]
                producer.flush(timeout=self.send_timeout_s * 2)
            except Exception as exc:
                self._record_failure(session, rows[0], exc)
                self._drop_producer()
                return 0
            done: list[int] = []
            failed = False
            for row, future in zip(rows, futures, strict=True):
                try:
                    future.get(timeout=self.send_timeout_s)
                except Exception as exc:
                    # The row backs off and holds back the unpublished rows after it; rows after it
                    # that did get through are still marked, so they are not sent twice.
                    self._record_failure(session, row, exc)
                    failed = True
                    continue
                done.append(row.id)
            if failed:
                self._drop_producer()
            if done:
                session.execute(
                    update(self._table).where(self._table.c.id.in_(done)).values(published_at=datetime.now(UTC))
                )
            self.published += len(done)
            return len(done)

    def _select_batch(self, session: Session) -> list[Any]:
        t = self._table
        query = select(t).where(t.c.published_at.is_(None)).order_by(t.c.id).limit(self.batch_size)
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        rows = list(session.execute(query).all())
        now = datetime.now(UTC)
        for index, row in enumerate(rows):
            # Head-of-line: a row in backoff holds back the rows after it (ordering over throughput).
            if row.next_attempt_at is not None and _aware(row.next_attempt_at) > now:
                return rows[:index]
        return rows

    def _record_failure(self, session: Session, row: Any, exc: Exception) -> None:
        attempts = int(row.attempts) + 1
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
        self.failed += 1
        log.warning("outbox relay: event %s to %s failed (attempt %d, retry in %.1fs): %r",
                    row.event_id, row.topic, attempts, delay, exc)
        session.execute(
            update(self._table)
            .where(self._table.c.id == row.id)
            .values(
                attempts=attempts,
                last_error=repr(exc)[:2000],
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
            )
        )

    def stats(self) -> RelayStats:
        """Published and failed counts since start, and the rows still waiting in the outbox."""
        t = self._table
        with self.db.session() as session:
            pending = session.execute(select(func.count()).where(t.c.published_at.is_(None))).scalar_one()
        return RelayStats(published=self.published, failed=self.failed, pending=int(pending))

    async def run(self, stop_event: asyncio.Event) -> None:
        """Publish until ``stop_event`` is set; database errors are logged and retried, never fatal."""
        try:
            while not stop_event.is_set():
                try:
                    count = await asyncio.to_thread(self.publish_pending)
                except Exception:
                    log.exception("outbox relay: publishing failed; retrying")
                    count = 0
                if count >= self.batch_size:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), self.poll_interval_s)
        finally:
            await asyncio.to_thread(self.close)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
