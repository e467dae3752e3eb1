"""The CloudEvents 1.0 envelope, its JSON form and its Kafka binding (structured content mode)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SPECVERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

_TOPIC_RE = re.compile(r"^mlp(\.[a-z][a-z0-9-]*){2,}$")
_EXTENSION_NAME_RE = re.compile(r"^[a-z0-9]{1,20}$")
_KNOWN = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
     "traceparent", "tracestate", "tenant"}
)


class InvalidEvent(ValueError):
    """A message is not a valid CloudEvent for this platform; the message says which attribute and why."""


def topic_for(event_type: str) -> str:
    """The Kafka topic of an event type: the type itself, ``mlp.<service>.<event>``."""
    if not isinstance(event_type, str) or len(event_type) > 249 or not _TOPIC_RE.match(event_type):
        raise InvalidEvent(
            f"event type {event_type!r} must look like 'mlp.<service>.<event>' "
            "(lowercase letters, digits and '-', dot-separated)"
        )
    return event_type


@dataclass(frozen=True)
class CloudEvent:
    """A CloudEvents 1.0 event with a JSON object as data.

    Extension attributes: ``traceparent``/``tracestate`` (distributed tracing extension) and
    ``tenant`` (the project the subject belongs to). Other extensions are kept in ``extensions``.
    """

    source: str
    type: str
    data: dict[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    specversion: str = SPECVERSION
    datacontenttype: str = JSON_CONTENT_TYPE
    traceparent: str | None = None
    tracestate: str | None = None
    tenant: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_str("id", self.id)
        _require_str("source", self.source)
        _require_str("type", self.type)
        if self.specversion != SPECVERSION:
            raise InvalidEvent(f"specversion must be '1.0', got {self.specversion!r}")
        for name in ("subject", "traceparent", "tracestate", "tenant"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidEvent(f"attribute '{name}' must be a string, got {type(value).__name__}")
        if not isinstance(self.data, dict):
            raise InvalidEvent(f"attribute 'data' must be a JSON object, got {type(self.data).__name__}")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise InvalidEvent("attribute 'time' must be a timezone-aware datetime")
        if self.datacontenttype != JSON_CONTENT_TYPE:
            raise InvalidEvent(f"datacontenttype must be '{JSON_CONTENT_TYPE}', got {self.datacontenttype!r}")
        for name, value in self.extensions.items():
            if not _EXTENSION_NAME_RE.match(name) or name in _KNOWN:
                raise InvalidEvent(f"extension attribute name {name!r} is not allowed")
            if not isinstance(value, str):
                raise InvalidEvent(f"extension attribute {name!r} must be a string")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-format envelope as a dict (absent optional attributes are left out)."""
        out: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": self.datacontenttype,
        }
        for name in ("subject", "traceparent", "tracestate", "tenant"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extensions)
        out["data"] = self.data
        return out

    def to_json(self) -> str:
        """Serialize to the CloudEvents JSON format."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Any) -> CloudEvent:
        """Parse and validate a JSON-format envelope; raises InvalidEvent on any problem."""
        if not isinstance(raw, dict):
            raise InvalidEvent(f"a CloudEvent must be a JSON object, got {type(raw).__name__}")
        missing = [name for name in ("specversion", "id", "source", "type") if name not in raw]
        if missing:
            raise InvalidEvent(f"missing required attribute(s): {', '.join(missing)}")
        if "data_base64" in raw:
            raise InvalidEvent("binary data (data_base64) is not supported; data must be a JSON object")
        extensions = {k: v for k, v in raw.items() if k not in _KNOWN}
        return cls(
            specversion=raw["specversion"],
            id=raw["id"],
            source=raw["source"],
            type=raw["type"],
            subject=raw.get("subject"),
            time=_parse_time(raw.get("time")),
            datacontenttype=raw.get("datacontenttype", JSON_CONTENT_TYPE),
            data=raw.get("data", {}),
            traceparent=raw.get("traceparent"),
            tracestate=raw.get("tracestate"),
            tenant=raw.get("tenant"),
            extensions=extensions,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CloudEvent:
        """Parse the CloudEvents JSON format; raises InvalidEvent for bad JSON or attributes."""
        try:
            raw = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEvent(f"not valid JSON: {exc}") from exc
        return cls.from_dict(raw)


def _require_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"attribute '{name}' must be a non-empty string, got {value!r}")


def _parse_time(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise InvalidEvent(f"attribute 'time' must be an RFC 3339 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidEvent(f"attribute 'time' is not RFC 3339: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidEvent(f"attribute 'time' needs a UTC offset or 'Z': {value!r}")
    return parsed


@dataclass(frozen=True)
class KafkaMessage:
    """What goes on the wire: topic, key (the subject, so one object's events stay ordered), value, headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def to_kafka(event: CloudEvent) -> KafkaMessage:
    """Structured content mode: value = JSON envelope; trace context also in W3C Kafka headers."""
    headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    if event.traceparent:
        headers.append(("traceparent", event.traceparent.encode()))
    if event.tracestate:
        headers.append(("tracestate", event.tracestate.encode()))
    return KafkaMessage(
        topic=topic_for(event.type),
        key=event.subject.encode() if event.subject is not None else None,
        value=event.to_json().encode(),
        headers=headers,
    )


def from_kafka(value: bytes | None, headers: list[tuple[str, bytes]] | None = None) -> CloudEvent:
    """Parse a structured-mode Kafka record; raises InvalidEvent for anything else."""
    header_map = {k.lower(): v for k, v in headers or []}
    content_type = header_map.get("content-type")
    if content_type is not None:
        ctype = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
        if ctype != STRUCTURED_CONTENT_TYPE:
            raise InvalidEvent(f"content-type {ctype!r} is not {STRUCTURED_CONTENT_TYPE!r} (structured mode)")
    elif "ce_specversion" in header_map:
        raise InvalidEvent("binary content mode (ce_* headers) is not supported; use structured mode")
    if value is None:
        raise InvalidEvent("record has no value (tombstone)")
    return CloudEvent.from_json(value)
