"""Observability: JSON logs carrying trace ids, OpenTelemetry tracing, Prometheus metrics."""

from __future__ import annotations

import json
import logging
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line with the active trace and span ids, for log shippers."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(service: str, level: str = "INFO", log_file: Path | None = None) -> None:
    """Route the root logger to JSON lines on stderr (or a file)."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def configure_tracing(service: str, otlp_endpoint: str = "",
                      exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider for this process; export over OTLP/HTTP when an endpoint is set.

    The provider is process-wide because OpenTelemetry's instrumentations read the global one.
    Calling it again keeps the first provider and only adds the new exporter.
    """
    global _exporting
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _exporting = True
    elif otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        _exporting = True
    return provider


_exporting = False


def tracing_exported() -> bool:
    """Whether ``configure_tracing`` installed an exporter in this process (spans go somewhere)."""
    return _exporting


_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate", b"baggage": "baggage"}
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_HEX = frozenset(b"0123456789abcdef")


def parse_traceparent(value: bytes) -> trace.SpanContext | None:
    """A plain ``00-<trace>-<span>-<flags>`` traceparent, parsed directly (the propagator's rules for
    version 00); ``None`` for anything else, which then goes through the full propagator."""
    if len(value) != 55 or value[:3] != b"00-" or value[35:36] != b"-" or value[52:53] != b"-" \
            or not _HEX.issuperset(value[3:35] + value[36:52] + value[53:55]):
        return None
    trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
    if not trace_id or not span_id:
        return None
    return trace.SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True,
                             trace_flags=trace.TraceFlags(int(value[53:55], 16)))


def incoming_context(carrier: dict[str, bytes]) -> otel_context.Context:
    """The caller's trace context from ``traceparent``/``tracestate``/``baggage`` values, or a fresh
    trace id (as a recording server span would have given) when there is no valid ``traceparent``."""
    parsed = parse_traceparent(carrier["traceparent"]) if len(carrier) == 1 and "traceparent" in carrier \
        else None
    if parsed is not None:  # the common case (the gateway always sends one): no propagator run
        return trace.set_span_in_context(trace.NonRecordingSpan(parsed), otel_context.Context())
    ctx = propagate.extract({k: v.decode("latin-1") for k, v in carrier.items()}) if carrier \
        else otel_context.Context()
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        fresh = trace.SpanContext(trace_id=random.getrandbits(128) or 1, span_id=random.getrandbits(64) or 1,
                                  is_remote=False, trace_flags=_SAMPLED)
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(fresh), ctx)
    return ctx


class TraceContextMiddleware:
    """W3C trace-context propagation without recording spans (pure ASGI, a few microseconds).

    Used instead of the OpenTelemetry ASGI instrumentation when no exporter is configured: the
    request's ``traceparent``/``tracestate``/``baggage`` become the current context, so logs,
    problem bodies, audit records, outbox events and instrumented outgoing gRPC calls carry the
    caller's trace id. A request without a valid ``traceparent`` gets a fresh trace id (as a
    recording server span would have given it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        carrier = {_TRACE_HEADERS[k]: v for k, v in scope.get("headers", ()) if k in _TRACE_HEADERS}
        token = otel_context.attach(incoming_context(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, if a span is recording."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class HttpMetrics:
    """Request counters and latency histograms every REST service exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mlp_http_requests", "HTTP requests handled", ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mlp_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class GrpcMetrics:
    """RPC counters and latency histograms every gRPC server exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mlp_grpc_requests", "gRPC calls handled", ["service", "method", "code"], registry=registry
        )
        self.latency = Histogram(
            "mlp_grpc_request_duration_seconds", "gRPC call latency", ["service", "method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
