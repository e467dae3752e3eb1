"""W3C trace context in Kafka headers, through OpenTelemetry's global propagator."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import propagate
from opentelemetry.context import Context

TRACE_HEADERS = ("traceparent", "tracestate")


def current_trace_headers(context: Context | None = None) -> dict[str, str]:
    """The propagator's carrier for the current (or given) context: ``traceparent``/``tracestate``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def inject_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers carrying the current (or given) trace context; empty outside any span."""
    return [(k, v.encode()) for k, v in current_trace_headers(context).items()]


def extract_context(headers: Iterable[tuple[str, bytes | str | None]] | None) -> Context:
    """The trace context carried by Kafka headers (an empty context when there is none)."""
    carrier: dict[str, str] = {}
    for key, value in headers or []:
        if value is None:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        carrier[key.lower()] = text
    return propagate.extract(carrier)
