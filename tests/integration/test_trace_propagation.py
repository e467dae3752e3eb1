"""One trace from an HTTP request, through a gRPC call to a second service, into a Kafka event."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import httpx
from fastapi import APIRouter, Request
from kafka import KafkaConsumer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlp_core.broker import free_port
from mlp_core.db import Database, migrate
from mlp_core.events import Outbox, OutboxRelay, from_kafka
from mlp_core.host import ServiceHost, ServiceParts
from mlp_core.settings import CoreSettings
from mlp_core.telemetry import configure_tracing
from mlp_core.testing.tokens import TestIssuer

MIGRATIONS = Path(__file__).resolve().parents[2] / "services/training/src/mlp_training/migrations"
METHOD = "/mlp.test.v1.Echo/Record"


def _recording_service(db: Database, outbox: Outbox, topic: str):
    """A gRPC service (generic handler, raw bytes) that records an event in its outbox."""

    async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with db.session() as session:
            outbox.add(session, type=topic, subject=request.decode(), data={"note": "from grpc"})
        return b"ok"

    handler = grpc.method_handlers_generic_handler("mlp.test.v1.Echo", {
        "Record": grpc.unary_unary_rpc_method_handler(record),
    })

    def register(server: grpc.aio.Server) -> str:
        server.add_generic_rpc_handlers((handler,))
        return "mlp.test.v1.Echo"

    return register


async def test_trace_crosses_http_grpc_and_kafka(test_issuer: TestIssuer, pg_url: str,
                                                 kafka_bootstrap: str) -> None:
    configure_tracing("trace-test", exporter=InMemorySpanExporter())
    topic = f"mlp.test.recorded-{uuid.uuid4().hex[:8]}"
    migrate(pg_url, MIGRATIONS, version_table="alembic_version_test")
    db = Database(pg_url)
    token = test_issuer.mint(scope="admin")
    verifier = test_issuer.verifier()

    grpc_port = free_port()
    downstream = ServiceHost(
        CoreSettings(service_name="downstream", oidc_issuer=test_issuer.issuer, grpc_port=grpc_port),
        ServiceParts(title="downstream", grpc_registrars=[_recording_service(db, Outbox("/mlp/test"), topic)]),
        verifier=verifier)
    await downstream.start_background()

    router = APIRouter(prefix="/api/v1/upstream")

    @router.post("/do")
    async def do(request: Request) -> dict[str, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = channel.unary_unary(METHOD)
            reply = await call(b"object-1", metadata=[("authorization", f"Bearer {token}")])
        return {"reply": reply.decode()}

    upstream = ServiceHost(CoreSettings(service_name="upstream", oidc_issuer=test_issuer.issuer),
                           ServiceParts(title="upstream", routers=[router]), verifier=verifier)
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    try:
        transport = httpx.ASGITransport(app=upstream.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            resp = await client.post("/api/v1/upstream/do", headers={
                "Authorization": f"Bearer {token}", "traceparent": traceparent})
        assert resp.status_code == 200, resp.text

        relay = OutboxRelay(db, kafka_bootstrap)
        assert relay.publish_pending() == 1
        relay.close()

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=10_000)
        partitions = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + 15
        while not records and time.monotonic() < deadline:
            records = [r for rs in consumer.poll(timeout_ms=500).values() for r in rs]
        consumer.close()
        assert len(records) == 1
        headers = {k: v.decode() for k, v in records[0].headers}
        event = from_kafka(records[0].value, records[0].headers)
        assert event.subject == "object-1"
        # the W3C trace id of the HTTP request is in the event envelope and the Kafka headers
        assert event.traceparent is not None and event.traceparent.split("-")[1] == trace_id
        assert headers["traceparent"].split("-")[1] == trace_id
        assert trace.get_current_span().get_span_context().trace_id != int(trace_id, 16)
    finally:
        await downstream.stop_background()
        db.dispose()
