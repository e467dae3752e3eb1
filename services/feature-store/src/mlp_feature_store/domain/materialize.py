"""Materialization: copying the newest offline rows into the online store, by range or incrementally.

Incremental runs follow a watermark on *ingestion* time, so a late row (old event time, ingested
after the last run) is still picked up; the online store's write-if-newer rule decides whether it wins.
Rows ingested in the last ``settle_s`` seconds wait for the next run, so that a transaction that
commits late with an earlier ingestion time is not skipped. Rerunning a run changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from mlp_core.errors import FailedPrecondition, InvalidArgument
from mlp_feature_store.domain.access import WRITE, Caller, authorize
from mlp_feature_store.domain.events import MATERIALIZATION_COMPLETED, DomainEvent
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.store.base import RunStore


@dataclass(frozen=True)
class MaterializationRun:
    """What one run did."""

    id: str
    project: str
    view: str
    version: int
    mode: str
    rows_read: int
    entities_written: int
    watermark_us: int | None


class _Counter:
    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.count = 0

    def __iter__(self) -> Any:
        for row in self.rows:
            self.count += 1
            yield row


class MaterializationService:
    """Runs batch materialization for feature views and records every run."""

    def __init__(self, registry: RegistryService, regions: Regions, runs: RunStore, settle_s: float = 5.0) -> None:
        self.registry = registry
        self.regions = regions
        self.runs = runs
        self.settle_us = int(settle_s * 1_000_000)

    def materialize(self, caller: Caller, project: str, view: str, *, start_us: int | None = None,
                    end_us: int | None = None, now: int | None = None) -> MaterializationRun:
        """Incremental when no range is given; otherwise the event-time range [start, end)."""
        authorize(caller, project, WRITE)
        layout = self.registry.layout(project, view)
        if not layout.view.online:
            raise FailedPrecondition(f"feature view '{view}' is not served online (online: false)")
        if start_us is not None and end_us is not None and start_us >= end_us:
            raise InvalidArgument("the range start must be before its end")
        stores = self.regions.get(layout.view.residency_region)
        started = now if now is not None else now_us()
        incremental = start_us is None and end_us is None
        watermark = self.runs.watermark(project, view, layout.view.version) if incremental else None
        until = started - self.settle_us if incremental else started
        rows = _Counter(stores.offline.latest_rows(layout, after_ingested_us=watermark, until_ingested_us=until,
                                                   event_from_us=start_us, event_to_us=end_us))
        written = stores.online.write(layout, rows)
        new_watermark = max(until, watermark or until) if incremental else None
        run = MaterializationRun(str(uuid.uuid4()), project, view, layout.view.version,
                                 "incremental" if incremental else "range", rows.count, written, new_watermark)
        self.runs.record_materialization({
            "id": run.id, "project": project, "view": view, "version": run.version, "mode": run.mode,
            "from_us": start_us if not incremental else watermark, "to_us": end_us if not incremental else until,
            "rows_read": run.rows_read, "entities_written": written, "started_us": started,
            "finished_us": now_us()}, new_watermark, [DomainEvent(MATERIALIZATION_COMPLETED, f"{project}/{view}", {
                "project": project, "view": view, "version": run.version, "run_id": run.id, "mode": run.mode,
                "rows_read": run.rows_read, "entities_written": written})])
        return run

    def history(self, caller: Caller, project: str, view: str) -> list[dict[str, Any]]:
        """Recent runs of a view."""
        authorize(caller, project, "features:read")
        self.registry.load(project, "feature_view", view)
        return self.runs.materializations(project, view)
