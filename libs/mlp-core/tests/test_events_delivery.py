"""End to end on a real Tansu broker and PostgreSQL: outage, duplicates, handler failure, tracing, bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from mlp_core.broker import TansuBroker
from mlp_core.db import Database, migrate
from mlp_core.events import DEFAULT_TABLES, CloudEvent, EventConsumer, Outbox, OutboxRelay, to_kafka
from mlp_core.testing.kafka import wait_until

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "events_migrations"
POLL_MS = 5000  # Tansu joins a group after the rebalance timeout: keep it small.


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    migrate(pg_url, MIGRATIONS, version_table="events_test_version")
    database = Database(pg_url)
    try:
        yield database
    finally:
        database.dispose()


def record_effect(session: Session, event: CloudEvent) -> None:
    """A handler whose side effect is one row per application, with the trace id it ran under."""
    ctx = trace.get_current_span().get_span_context()
    session.execute(
        text("INSERT INTO effects (event_id, subject, trace_id) VALUES (:e, :s, :t)"),
        {"e": event.id, "s": event.subject, "t": format(ctx.trace_id, "032x") if ctx.is_valid else None},
    )


def effects(db: Database) -> list[tuple[str, str, str | None]]:
    with db.session() as session:
        rows = session.execute(text("SELECT event_id, subject, trace_id FROM effects ORDER BY id")).all()
    return [(r[0], r[1], r[2]) for r in rows]


def processed_count(db: Database, group: str) -> int:
    t = DEFAULT_TABLES.processed_events
    with db.session() as session:
        return int(session.execute(select(func.count()).where(t.c.consumer_group == group)).scalar_one())


def make_consumer(bootstrap: str, topic: str, db: Database, handler: Callable[[Session, CloudEvent], None],
                  group: str | None = None, **kw: object) -> EventConsumer:
    return EventConsumer(bootstrap, group or f"g-{uuid.uuid4().hex[:8]}", [topic], handler, db,
                         max_poll_interval_ms=POLL_MS, retry_backoff_s=0.2, **kw)  # type: ignore[arg-type]


def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for topic, key, value, headers in messages:
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)
    finally:
        producer.close()


def produce_event(bootstrap: str, event: CloudEvent) -> None:
    msg = to_kafka(event)
    produce(bootstrap, [(msg.topic, msg.key, msg.value, msg.headers)])


async def test_outbox_survives_broker_outage(kafka_broker: TansuBroker, db: Database,
                                             unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("model-created")
    kafka_broker.stop()
    outbox = Outbox("/mlp/registry")
    with db.session() as session:
        first = outbox.add(session, type=topic, subject="model/a", data={"n": 1})
        second = outbox.add(session, type=topic, subject="model/a", data={"n": 2})
    relay = OutboxRelay(db, kafka_broker.bootstrap_servers, poll_interval_s=0.1,
                        base_backoff_s=0.2, max_backoff_s=0.5, send_timeout_s=2)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    consumer = make_consumer(kafka_broker.bootstrap_servers, topic, db, record_effect)
    try:
        for _ in range(100):  # the relay keeps running while publishing fails
            if relay.failed >= 2:
                break
            await asyncio.sleep(0.1)
        assert relay.failed >= 2 and not task.done()
        with db.session() as session:
            head = session.execute(select(DEFAULT_TABLES.outbox).order_by(DEFAULT_TABLES.outbox.c.id)).first()
        assert head is not None and head.attempts >= 1 and head.last_error and head.published_at is None
        assert relay.stats().pending == 2

        await asyncio.to_thread(kafka_broker.start)  # same port, fresh broker
        consumer.run_in_thread()
        delivered = await asyncio.to_thread(wait_until, lambda: len(effects(db)) >= 2, 30)
        assert delivered, f"not delivered: relay={relay.stats()} consumer={consumer.stats()}"
        assert [e[0] for e in effects(db)] == [first.id, second.id]  # in order, once each
        assert relay.stats().pending == 0 and relay.published == 2
    finally:
        stop.set()
        await task
        await asyncio.to_thread(consumer.stop)


def test_duplicate_delivery_is_applied_once(kafka_bootstrap: str, db: Database,
                                            unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("alias-changed")
    event = CloudEvent(source="/mlp/registry", type=topic, subject="model/b", data={"alias": "prod"})
    other = CloudEvent(source="/mlp/registry", type=topic, subject="model/b", data={"alias": "dev"})
    for e in (event, event, other):
        produce_event(kafka_bootstrap, e)
    consumer = make_consumer(kafka_bootstrap, topic, db, record_effect)
    consumer.run_in_thread()
    try:
        assert wait_until(lambda: consumer.applied + consumer.duplicates >= 3, 30), consumer.stats()
    finally:
        consumer.stop()
    assert [e[0] for e in effects(db)] == [event.id, other.id]
    assert consumer.stats() == {"applied": 2, "duplicates": 1, "malformed": 0, "handler_errors": 0}
    assert processed_count(db, consumer.group_id) == 2


def test_handler_failure_rolls_back_and_is_redelivered(kafka_bootstrap: str, db: Database,
                                                       unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("run-completed")
    group = f"g-{uuid.uuid4().hex[:8]}"
    event = CloudEvent(source="/mlp/training", type=topic, subject="run/1", data={})
    produce_event(kafka_bootstrap, event)
    calls: list[str] = []

    def failing(session: Session, ev: CloudEvent) -> None:
        calls.append(ev.id)
        record_effect(session, ev)  # written, then rolled back
        raise RuntimeError("downstream unavailable")

    consumer = make_consumer(kafka_bootstrap, topic, db, failing, group=group)
    consumer.run_in_thread()
    try:
        assert wait_until(lambda: consumer.handler_errors >= 2, 30), consumer.stats()  # retried in place
    finally:
        consumer.stop()
    assert effects(db) == [] and processed_count(db, group) == 0

    # The offset was not committed: a new member of the group gets the event again.
    check = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = check.partitions_for_topic(topic)
        assert partitions
        assert all(check.committed(TopicPartition(topic, p)) is None for p in partitions)
    finally:
        check.close(autocommit=False)

    consumer = make_consumer(kafka_bootstrap, topic, db, record_effect, group=group)
    consumer.run_in_thread()
    try:
        assert wait_until(lambda: consumer.applied >= 1, 30), consumer.stats()
    finally:
        consumer.stop()
    assert [e[0] for e in effects(db)] == [event.id]
    assert processed_count(db, group) == 1


def test_trace_context_flows_from_outbox_to_handler(kafka_bootstrap: str, db: Database,
                                                    unique_topic: Callable[[str], str]) -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    topic = unique_topic("view-created")
    with trace.get_tracer("test").start_as_current_span("create view") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        with db.session() as session:
            event = Outbox("/mlp/feature-store").add(session, type=topic, subject="view/x", data={})
    assert event.traceparent is not None and event.traceparent.split("-")[1] == trace_id
    relay = OutboxRelay(db, kafka_bootstrap, send_timeout_s=5)
    try:
        assert relay.publish_pending() == 1
    finally:
        relay.close()
    consumer = make_consumer(kafka_bootstrap, topic, db, record_effect)
    consumer.run_in_thread()
    try:
        assert wait_until(lambda: consumer.applied >= 1, 30), consumer.stats()
    finally:
        consumer.stop()
    assert effects(db) == [(event.id, "view/x", trace_id)]


def test_malformed_records_are_skipped_and_dead_lettered(kafka_bootstrap: str, db: Database,
                                                         unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("thing-happened")
    good = CloudEvent(source="/mlp/x", type=topic, subject="t/1", data={})
    msg = to_kafka(good)
    produce(kafka_bootstrap, [
        (topic, b"t/1", b"\x00not json", []),
        (topic, b"t/1", b'{"specversion": "1.0", "source": "/x", "type": "y"}', []),  # no id
        (topic, b"t/1", b"{}", [("content-type", b"text/plain")]),
        (topic, msg.key, msg.value, msg.headers),
    ])
    consumer = make_consumer(kafka_bootstrap, topic, db, record_effect, dead_letter=True)
    consumer.run_in_thread()
    try:
        assert wait_until(lambda: consumer.applied >= 1, 30), consumer.stats()
    finally:
        consumer.stop()
    assert consumer.malformed == 3
    assert [e[0] for e in effects(db)] == [good.id]

    records = read_all(kafka_bootstrap, f"{topic}.dlq", expected=3)
    assert len(records) == 3
    assert all(dict(r.headers).get("mlp-dlq-reason") for r in records)
    assert {r.value for r in records} == {b"\x00not json", b"{}",
                                          b'{"specversion": "1.0", "source": "/x", "type": "y"}'}


def read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every record of every partition of ``topic`` (no group), waiting for ``expected`` of them."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    records: list[Any] = []
    try:
        assert wait_until(lambda: bool(reader.partitions_for_topic(topic)), 10)
        tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic)]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)

        def more() -> bool:
            for batch in reader.poll(500).values():
                records.extend(batch)
            return len(records) >= expected

        wait_until(more, 15)
    finally:
        reader.close()
    return records


def test_relay_recreates_its_producer_after_the_broker_dies(kafka_broker: TansuBroker, db: Database,
                                                            unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("job-queued")
    outbox = Outbox("/mlp/training")
    relay = OutboxRelay(db, kafka_broker.bootstrap_servers, base_backoff_s=0.1, max_backoff_s=0.2,
                        send_timeout_s=2)
    try:
        with db.session() as session:
            outbox.add(session, type=topic, subject="job/1", data={"n": 1})
        assert relay.publish_pending() == 1
        kafka_broker.stop()
        with db.session() as session:
            late = outbox.add(session, type=topic, subject="job/1", data={"n": 2})
        assert relay.publish_pending() == 0  # the connected producer fails: no exception, no loss
        assert relay.failed == 1 and relay.stats().pending == 1
        kafka_broker.start()  # empty broker on the same port
        assert wait_until(lambda: relay.publish_pending() == 1, 20), relay.stats()
    finally:
        relay.close()
    assert [CloudEvent.from_json(r.value).id for r in read_all(kafka_broker.bootstrap_servers, topic, 1)] == [late.id]
