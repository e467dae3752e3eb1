"""Prometheus export of the data-quality counters (a collector read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from mlp_feature_store.domain.quality import QualityMetrics


class QualityCollector(Collector):
    """``mlp_feature_store_rows_total{project,view,outcome}`` and
    ``mlp_feature_store_quality_failures_total{project,view,rule}``."""

    def __init__(self, metrics: QualityMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Snapshot the counters."""
        rows, failures = self.metrics.snapshot()
        rows_family = CounterMetricFamily("mlp_feature_store_rows", "Ingested rows by outcome (in, written, "
                                          "quarantined)", labels=["project", "view", "outcome"])
        for labels, n in sorted(rows.items()):
            rows_family.add_metric(list(labels), n)
        fail_family = CounterMetricFamily("mlp_feature_store_quality_failures", "Quarantine reasons by rule "
                                          "(type, range, not_null, sql, ...)", labels=["project", "view", "rule"])
        for labels, n in sorted(failures.items()):
            fail_family.add_metric(list(labels), n)
        yield rows_family
        yield fail_family
