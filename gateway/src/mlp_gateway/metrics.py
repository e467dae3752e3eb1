"""The gateway's own Prometheus metrics, read at scrape time from the parts that count them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlp_core.auth import TokenVerifier
from mlp_gateway.audit import AuditLog


class GatewayCollector(Collector):
    """JWKS fetches (a flood of unknown ``kid``s shows here as throttled lookups) and the audit writer."""

    def __init__(self, verifier: TokenVerifier, audit: AuditLog) -> None:
        self.verifier = verifier
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        """One snapshot per scrape."""
        stats = self.verifier.jwks.stats
        jwks = CounterMetricFamily("mlp_auth_jwks_events", "JWKS cache activity by kind", labels=["kind"])
        for kind, value in (("discovery_fetch", stats.discovery_fetches), ("jwks_fetch", stats.jwks_fetches),
                            ("fetch_failure", stats.fetch_failures),
                            ("unknown_kid_refetch", stats.unknown_kid_refetches),
                            ("throttled_lookup", stats.throttled_lookups)):
            jwks.add_metric([kind], value)
        written = CounterMetricFamily("mlp_gateway_audit_records", "Audit records committed to the chain")
        written.add_metric([], self.audit.written)
        failures = CounterMetricFamily("mlp_gateway_audit_write_failures", "Failed audit batch writes (retried)")
        failures.add_metric([], self.audit.failures)
        queued = GaugeMetricFamily("mlp_gateway_audit_queue_depth", "Audit records waiting for the writer")
        queued.add_metric([], self.audit.queue_depth)
        yield from (jwks, written, failures, queued)
