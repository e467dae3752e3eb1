"""Kafka consumers wired in the host: push ingestion (idempotent on redelivery) and lineage, on Tansu."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from kafka import KafkaProducer
from sqlalchemy import func, select

from mlp_core.events import CloudEvent, to_kafka
from mlp_core.testing.kafka import wait_until
from mlp_core.testing.tokens import TestIssuer
from mlp_feature_store.store.offline_tables import view_table
from mlp_feature_store.store.schema import ingestion_runs

from .conftest import STATS, USER, Caller
from .grpc_support import running_host

NOW = datetime.now(UTC).isoformat()


def _send(bootstrap: str, *events: CloudEvent) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for event in events:
            msg = to_kafka(event)
            producer.send(msg.topic, key=msg.key, value=msg.value, headers=msg.headers).get(timeout=10)
    finally:
        producer.close()


async def test_pushed_event_lands_once_when_delivered_twice(
        test_issuer: TestIssuer, pg_url: str, redis_url: str, kafka_bootstrap: str,
        unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("features-pushed")
    async with running_host(test_issuer, pg_url, redis_url, kafka_bootstrap_servers=kafka_bootstrap,
                            feature_store_push_topic=topic, kafka_max_poll_interval_ms=5000) as r:
        service = r.wiring.service
        service.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", STATS),
                                                ("feature_service", {"name": "model_a", "features": ["stats"]})])

        def push(user: str, clicks: int) -> CloudEvent:
            return CloudEvent(source="/test", type=topic, subject="p1/stats", tenant="p1", data={
                "project": "p1", "feature_view": "stats",
                "rows": [{"user_id": user, "clicks": clicks, "event_timestamp": NOW}]})

        first, marker = push("u1", 7), push("u2", 1)
        bad = CloudEvent(source="/test", type=topic, subject="p1/stats", data={"project": "p1"})  # dropped
        version = CloudEvent(source="/mlp/registry", type="mlp.registry.version-registered", subject="p1/m",
                             data={"project": "p1", "model": "m", "version": 3, "featureService": "model_a",
                                   "trainingRunId": "run-9"})
        await asyncio.to_thread(_send, kafka_bootstrap, first, first, bad, marker, version)

        def online(user: str) -> list[object]:
            got = service.retrieval.online(Caller(), "p1", {"user_id": [user]}, features=["stats:clicks"])
            return got.features["stats__clicks"].values

        assert await asyncio.to_thread(wait_until, lambda: online("u2") == [1], 40), "marker never arrived"
        assert online("u1") == [7]
        table = view_table(service.registry.layout("p1", "stats"))
        with r.wiring.db.session() as s:
            assert s.execute(select(func.count()).select_from(table).where(table.c.k_user_id == "u1")
                             ).scalar_one() == 1
            assert s.execute(select(func.count()).select_from(ingestion_runs)
                             .where(ingestion_runs.c.source == "push")).scalar_one() == 2

        def linked() -> list[dict[str, object]]:
            return service.compliance.lineage(Caller(), "p1", "model_a")["consumers"]

        assert await asyncio.to_thread(wait_until, lambda: len(linked()) == 2, 40), linked()
        assert {(c["kind"], c["ref"]) for c in linked()} == {("model_version", "m@3"), ("training_run", "run-9")}
        assert uuid.UUID(first.id)
