"""CloudEvent JSON round trip, validation errors, topic names, Kafka binding, trace headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mlp_core.events import (
    STRUCTURED_CONTENT_TYPE,
    CloudEvent,
    InvalidEvent,
    extract_context,
    from_kafka,
    inject_headers,
    to_kafka,
    topic_for,
)

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(**kw: object) -> CloudEvent:
    base: dict[str, object] = {
        "source": "/mlp/registry",
        "type": "mlp.registry.alias-changed",
        "subject": "model/fraud",
        "data": {"alias": "prod", "version": 3},
        "tenant": "acme",
        "traceparent": TP,
        "tracestate": "vendor=1",
    }
    base.update(kw)
    return CloudEvent(**base)  # type: ignore[arg-type]


def test_json_round_trip_keeps_every_attribute() -> None:
    event = _event(extensions={"partitionkey": "p1"})
    text = event.to_json()
    raw = json.loads(text)
    assert raw["specversion"] == "1.0"
    assert raw["time"].endswith("Z")
    assert raw["datacontenttype"] == "application/json"
    assert raw["partitionkey"] == "p1"
    back = CloudEvent.from_json(text)
    assert back == event


def test_defaults_are_uuid_id_and_utc_now() -> None:
    event = CloudEvent(source="/mlp/x", type="mlp.x.y", data={})
    assert len(event.id) == 36
    assert event.time.tzinfo is not None
    assert abs((datetime.now(UTC) - event.time).total_seconds()) < 5
    assert "subject" not in event.to_dict()


def test_time_with_offset_is_accepted_and_normalised_to_utc() -> None:
    raw = _event().to_dict() | {"time": "2024-05-01T12:00:00+02:00"}
    event = CloudEvent.from_dict(raw)
    assert event.to_dict()["time"] == "2024-05-01T10:00:00Z"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("id"), "missing required attribute(s): id"),
        (lambda d: d.pop("source") and d.pop("type"), "source, type"),
        (lambda d: d.update(specversion="0.3"), "specversion must be '1.0'"),
        (lambda d: d.update(id=""), "'id' must be a non-empty string"),
        (lambda d: d.update(type=7), "'type' must be a non-empty string"),
        (lambda d: d.update(time="yesterday"), "not RFC 3339"),
        (lambda d: d.update(time="2024-05-01T12:00:00"), "needs a UTC offset"),
        (lambda d: d.update(data=[1, 2]), "'data' must be a JSON object"),
        (lambda d: d.update(subject=5), "'subject' must be a string"),
        (lambda d: d.update(datacontenttype="text/plain"), "datacontenttype"),
        (lambda d: d.update({"Bad-Name": "x"}), "extension attribute name"),
        (lambda d: d.update(data_base64="AAA="), "data_base64"),
    ],
)
def test_invalid_envelopes_raise_clear_errors(mutate: object, message: str) -> None:
    raw = _event().to_dict()
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(InvalidEvent, match=_escape(message)):
        CloudEvent.from_dict(raw)


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[1,2]", b"null", b'"x"'])
def test_non_object_payloads_are_invalid(payload: bytes) -> None:
    with pytest.raises(InvalidEvent):
        CloudEvent.from_json(payload)


@pytest.mark.parametrize("name", ["mlp.registry.alias-changed", "mlp.feature-store.view-created", "mlp.a.b.c"])
def test_topic_is_the_event_type(name: str) -> None:
    assert topic_for(name) == name


@pytest.mark.parametrize("name", ["registry.alias", "mlp.registry", "mlp.Registry.x", "mlp..x", "mlp.a.b!", ""])
def test_bad_topic_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidEvent, match=_escape("mlp.<service>.<event>")):
        topic_for(name)


def test_kafka_structured_binding() -> None:
    event = _event()
    msg = to_kafka(event)
    headers = dict(msg.headers)
    assert msg.topic == "mlp.registry.alias-changed"
    assert msg.key == b"model/fraud"
    assert headers["content-type"] == STRUCTURED_CONTENT_TYPE.encode()
    assert headers["traceparent"] == TP.encode()
    assert headers["tracestate"] == b"vendor=1"
    assert from_kafka(msg.value, msg.headers) == event


def test_kafka_binding_refuses_other_modes() -> None:
    value = _event().to_json().encode()
    with pytest.raises(InvalidEvent, match="structured mode"):
        from_kafka(value, [("content-type", b"application/json")])
    with pytest.raises(InvalidEvent, match="binary content mode"):
        from_kafka(value, [("ce_specversion", b"1.0")])
    with pytest.raises(InvalidEvent, match="tombstone"):
        from_kafka(None, [])
    assert from_kafka(value, None).id  # no content-type header: still structured JSON


def test_trace_headers_round_trip() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    assert inject_headers() == []  # outside any span there is nothing to carry
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("produce") as span:
        headers = inject_headers()
        trace_id = span.get_span_context().trace_id
    names = [k for k, _ in headers]
    assert "traceparent" in names
    ctx = extract_context(headers)
    assert trace.get_current_span(ctx).get_span_context().trace_id == trace_id
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid


def _escape(text: str) -> str:
    import re

    return re.escape(text)
