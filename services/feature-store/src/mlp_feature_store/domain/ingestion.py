"""Ingestion: batches (files, JSON rows) and push events into the offline store, checked for quality."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.access import WRITE, Caller, authorize
from mlp_feature_store.domain.events import INGESTION_COMPLETED, QUALITY_FAILED, DomainEvent
from mlp_feature_store.domain.ingest import BatchPreparer
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.store.base import IngestResult, PreparedBatch

if TYPE_CHECKING:
    from mlp_feature_store.domain.quality import QualityMetrics


def rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """JSON rows as one Arrow batch of Python objects (conversion and checks happen later)."""
    if not rows:
        raise InvalidArgument("no rows given")
    names: list[str] = []
    for row in rows:
        if not isinstance(row, dict):
            raise InvalidArgument("each row must be a JSON object")
        names += [k for k in row if k not in names]
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # e.g. an int beyond 64 bits
            arrays.append(pa.array([None if v is None else str(v) for v in values], type=pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=names)


class IngestionService:
    """Writes rows to a view's offline store in its residency region; bad rows are quarantined."""

    def __init__(self, registry: RegistryService, regions: Regions) -> None:
        self.registry = registry
        self.regions = regions
        #: Counts rows per outcome for Prometheus, when set.
        self.quality: QualityMetrics | None = None

    def ingest(self, caller: Caller, project: str, view: str, batches: Iterable[pa.RecordBatch], *,
               timestamp_column: str = "event_timestamp", source: str = "api",
               receipt: str | None = None) -> IngestResult | None:
        """Ingest every batch in one transaction; None when ``receipt`` was already ingested."""
        authorize(caller, project, WRITE)
        layout = self.registry.layout(project, view)
        stores = self.regions.get(layout.view.residency_region)
        now = now_us()
        preparer = BatchPreparer(layout, timestamp_column, now)
        result = IngestResult(run_id=str(uuid.uuid4()), ingested_us=now)
        prepared: Iterable[PreparedBatch] = preparer.prepare(batches)

        def events(done: IngestResult) -> list[DomainEvent]:
            if done.rows_in == 0:
                raise InvalidArgument("the input holds no rows")  # rolls the ingest back
            data = {"project": project, "view": view, "version": layout.view.version, "run_id": done.run_id,
                    "rows_in": done.rows_in, "rows_written": done.rows_written,
                    "rows_quarantined": done.rows_quarantined, "failures": done.failures}
            out = [DomainEvent(INGESTION_COMPLETED, f"{project}/{view}", data)]
            if done.rows_quarantined:
                out.append(DomainEvent(QUALITY_FAILED, f"{project}/{view}", data))
            return out

        done = stores.offline.write(layout, prepared, result, source, receipt=receipt, events=events)
        if done is not None and self.quality is not None:
            self.quality.observe(project, view, done)
        return done

    def push(self, caller: Caller, project: str, view: str, rows: list[dict[str, Any]], *, event_id: str,
             timestamp_column: str = "event_timestamp") -> IngestResult | None:
        """Streaming push: append offline and update online, idempotently per ``event_id``.

        A repeated ``event_id`` writes nothing offline but re-applies that push's rows online (the
        write-if-newer rule makes it a no-op when they are there), so a crash between the offline commit
        and the online write heals on redelivery.
        """
        result = self.ingest(caller, project, view, [rows_to_batch(rows)], timestamp_column=timestamp_column,
                             source="push", receipt=event_id)
        layout = self.registry.layout(project, view)
        stores = self.regions.get(layout.view.residency_region)
        ingested = result.ingested_us if result is not None else stores.offline.receipt_time(event_id)
        if layout.view.online and ingested is not None and (result is None or result.rows_written):
            fresh = stores.offline.latest_rows(layout, after_ingested_us=ingested - 1, until_ingested_us=ingested)
            stores.online.write(layout, fresh)
        return result

    def runs(self, caller: Caller, project: str, view: str) -> list[dict[str, Any]]:
        """Recent ingestion runs of a view with their quality reports."""
        authorize(caller, project, "features:read")
        layout = self.registry.layout(project, view)
        return self.regions.get(layout.view.residency_region).offline.ingestion_runs(project, view)
