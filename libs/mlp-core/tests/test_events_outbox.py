"""Event tables through a service migration, outbox writes and relay failure handling (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, select, text

from mlp_core.broker import free_port
from mlp_core.db import Database, migrate
from mlp_core.events import DEFAULT_TABLES, CloudEvent, InvalidEvent, Outbox, OutboxRelay, event_tables
from mlp_core.events.outbox import EventTooLarge

MIGRATIONS = Path(__file__).parent / "events_migrations"
OUTBOX = DEFAULT_TABLES.outbox


@pytest.fixture
def db(any_db_url: str) -> Iterator[Database]:
    migrate(any_db_url, MIGRATIONS, version_table="events_test_version")
    database = Database(any_db_url)
    try:
        yield database
    finally:
        database.dispose()


def test_migration_creates_the_event_tables(db: Database) -> None:
    insp = inspect(db.engine)
    assert {"outbox", "processed_events", "events_test_version"} <= set(insp.get_table_names())
    outbox_cols = {c["name"] for c in insp.get_columns("outbox")}
    assert {"id", "event_id", "event_type", "topic", "key", "payload", "headers", "created_at",
            "attempts", "last_error", "published_at", "next_attempt_at"} <= outbox_cols
    assert insp.get_pk_constraint("processed_events")["constrained_columns"] == ["consumer_group", "event_id"]
    # The migrated schema matches the Table objects the library queries.
    md = MetaData()
    tables = event_tables(md, prefix="svc_")
    assert tables.outbox.name == "svc_outbox"
    assert set(tables.outbox.c.keys()) == outbox_cols


def test_outbox_row_commits_with_the_state_change(db: Database) -> None:
    outbox = Outbox("/mlp/registry")
    with db.session() as session:
        session.execute(text("INSERT INTO effects (event_id, subject) VALUES ('state', 'model/a')"))
        event = outbox.add(session, type="mlp.registry.model-created", subject="model/a",
                           data={"name": "a"}, tenant="acme")
    with db.session() as session:
        row = session.execute(select(OUTBOX)).one()
    assert row.event_id == event.id
    assert row.topic == "mlp.registry.model-created"
    assert row.key == "model/a"
    assert row.published_at is None and row.attempts == 0
    stored = CloudEvent.from_json(row.payload)
    assert stored == event
    assert stored.tenant == "acme" and stored.source == "/mlp/registry"
    assert json.loads(row.headers)["content-type"] == "application/cloudevents+json"


def test_outbox_row_rolls_back_with_the_state_change(db: Database) -> None:
    outbox = Outbox("/mlp/registry")
    with pytest.raises(RuntimeError), db.session() as session:
        outbox.add(session, type="mlp.registry.model-created", subject="model/a", data={})
        raise RuntimeError("domain failure after the write")
    with db.session() as session:
        assert session.execute(select(OUTBOX)).all() == []


def test_outbox_refuses_bad_event_types(db: Database) -> None:
    with pytest.raises(InvalidEvent), db.session() as session:
        Outbox("/mlp/registry").add(session, type="ModelCreated", subject="m", data={})
    with pytest.raises(ValueError, match="source"):
        Outbox("")


def test_relay_without_broker_records_failure_and_backs_off(db: Database) -> None:
    outbox = Outbox("/mlp/registry")
    with db.session() as session:
        first = outbox.add(session, type="mlp.registry.model-created", subject="m1", data={})
        outbox.add(session, type="mlp.registry.model-created", subject="m2", data={})
    relay = OutboxRelay(db, f"127.0.0.1:{free_port()}", send_timeout_s=1, base_backoff_s=60)
    try:
        assert relay.publish_pending() == 0  # no exception although nothing listens
        with db.session() as session:
            rows = session.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all()
        assert rows[0].event_id == first.id
        assert rows[0].attempts == 1 and rows[0].last_error
        assert rows[0].next_attempt_at is not None
        assert rows[1].attempts == 0  # it waits behind the head row; order is kept
        # In backoff: the head row is not retried yet, and it holds back the row after it.
        assert relay.publish_pending() == 0
        stats = relay.stats()
        assert (stats.published, stats.failed, stats.pending) == (0, 1, 2)
    finally:
        relay.close()


def test_relay_with_nothing_pending_returns_zero(db: Database) -> None:
    relay = OutboxRelay(db, f"127.0.0.1:{free_port()}")
    assert relay.publish_pending() == 0
    assert relay.stats().failed == 0  # no producer is created for an empty outbox


def test_oversized_event_fails_its_transaction(db: Database) -> None:

    outbox = Outbox("/mlp/test", max_event_bytes=2_000)
    with pytest.raises(EventTooLarge, match="over the limit"), db.session() as session:
        session.execute(text("INSERT INTO effects (event_id, subject) VALUES ('e1', 'state change')"))
        outbox.add(session, type="mlp.test.thing-happened", subject="t1", data={"blob": "x" * 5_000})
    with db.session() as session:
        assert session.execute(select(OUTBOX.c.id)).all() == []
        assert session.execute(text("SELECT count(*) FROM effects")).scalar_one() == 0
    with db.session() as session:  # a normal event still fits
        outbox.add(session, type="mlp.test.thing-happened", subject="t1", data={"blob": "x" * 100})
    with db.session() as session:
        assert len(session.execute(select(OUTBOX.c.id)).all()) == 1
