"""Materialization runs and watermarks, lineage links and the erasure audit, in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mlp_core.db import Database
from mlp_feature_store.domain.events import DomainEvent, EventSink
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.store.base import RunStore
from mlp_feature_store.store.schema import erasures, lineage, materialization_runs, watermarks


class SqlRunStore(RunStore):
    """``RunStore`` on the service database."""

    def __init__(self, db: Database, events: EventSink) -> None:
        self.db = db
        self.events = events

    def watermark(self, project: str, view: str, version: int) -> int | None:
        """See ``RunStore.watermark``."""
        with self.db.session() as s:
            return s.execute(select(watermarks.c.ingested_us).where(
                watermarks.c.project == project, watermarks.c.view == view,
                watermarks.c.version == version)).scalar_one_or_none()

    def record_materialization(self, run: dict[str, Any], new_watermark: int | None,
                               events: Sequence[DomainEvent] = ()) -> None:
        """See ``RunStore.record_materialization``."""
        with self.db.session() as s:
            s.execute(materialization_runs.insert().values(**run))
            for event in events:
                self.events.add(s, event)
            if new_watermark is None:
                return
            ident = {"project": run["project"], "view": run["view"], "version": run["version"]}
            updated = s.execute(watermarks.update().where(*[watermarks.c[k] == v for k, v in ident.items()])
                                .values(ingested_us=new_watermark))
            if not updated.rowcount:  # type: ignore[attr-defined]
                s.execute(watermarks.insert().values(**ident, ingested_us=new_watermark))

    def materializations(self, project: str, view: str, limit: int = 50) -> list[dict[str, Any]]:
        """See ``RunStore.materializations``."""
        q = (select(materialization_runs).where(materialization_runs.c.project == project,
                                                materialization_runs.c.view == view)
             .order_by(materialization_runs.c.started_us.desc()).limit(limit))
        with self.db.session() as s:
            return [dict(r._mapping) for r in s.execute(q)]

    def materialization(self, project: str, run_id: str) -> dict[str, Any] | None:
        """See ``RunStore.materialization``."""
        q = select(materialization_runs).where(materialization_runs.c.project == project,
                                               materialization_runs.c.id == run_id)
        with self.db.session() as s:
            row = s.execute(q).first()
        return dict(row._mapping) if row is not None else None

    def record_erasure(self, record: dict[str, Any], events: Sequence[DomainEvent] = ()) -> None:
        """See ``RunStore.record_erasure``."""
        with self.db.session() as s:
            s.execute(erasures.insert().values(**record))
            for event in events:
                self.events.add(s, event)

    def erasures(self, project: str) -> list[dict[str, Any]]:
        """See ``RunStore.erasures``."""
        with self.db.session() as s:
            return [dict(r._mapping) for r in s.execute(
                select(erasures).where(erasures.c.project == project).order_by(erasures.c.erased_us))]

    def link(self, project: str, feature_service: str, consumer_kind: str, consumer_ref: str,
             event_id: str | None) -> bool:
        """See ``RunStore.link``."""
        try:
            with self.db.session() as s:
                s.execute(lineage.insert().values(project=project, feature_service=feature_service,
                                                  consumer_kind=consumer_kind, consumer_ref=consumer_ref,
                                                  event_id=event_id, recorded_us=now_us()))
        except IntegrityError:
            return False
        return True

    def links(self, project: str, feature_service: str | None = None) -> list[dict[str, Any]]:
        """See ``RunStore.links``."""
        q = select(lineage).where(lineage.c.project == project)
        if feature_service:
            q = q.where(lineage.c.feature_service == feature_service)
        with self.db.session() as s:
            return [dict(r._mapping) for r in s.execute(q.order_by(lineage.c.id))]
