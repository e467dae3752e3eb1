"""The definitions registry in SQL (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from mlp_core.db import Database
from mlp_core.errors import Conflict
from mlp_feature_store.domain.events import DomainEvent, EventSink
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.store.base import DefinitionWrite, RegistryStore, StoredDefinition
from mlp_feature_store.store.schema import definitions


def _row(r: Any) -> StoredDefinition:
    return StoredDefinition(project=r.project, kind=r.kind, name=r.name, version=r.version, spec=dict(r.spec),
                            created_us=r.created_us, updated_us=r.updated_us)


class SqlRegistryStore(RegistryStore):
    """Definitions in the ``fs_definitions`` table, one row per (project, kind, name, version)."""

    def __init__(self, db: Database, events: EventSink) -> None:
        self.db = db
        self.events = events

    def get(self, project: str, kind: str, name: str, version: int | None = None) -> StoredDefinition | None:
        """See ``RegistryStore.get``."""
        q = select(definitions).where(definitions.c.project == project, definitions.c.kind == kind,
                                      definitions.c.name == name)
        q = q.where(definitions.c.version == version) if version is not None else q.order_by(
            definitions.c.version.desc()).limit(1)
        with self.db.session() as s:
            r = s.execute(q).first()
        return _row(r) if r is not None else None

    def query(self, project: str | None, kind: str | None = None, latest_only: bool = True
             ) -> list[StoredDefinition]:
        """See ``RegistryStore.list``."""
        q = select(definitions)
        if project is not None:
            q = q.where(definitions.c.project == project)
        if kind is not None:
            q = q.where(definitions.c.kind == kind)
        if latest_only:
            newest = (select(definitions.c.project, definitions.c.kind, definitions.c.name,
                             func.max(definitions.c.version).label("v"))
                      .group_by(definitions.c.project, definitions.c.kind, definitions.c.name).subquery())
            q = q.join(newest, (newest.c.project == definitions.c.project) & (newest.c.kind == definitions.c.kind)
                       & (newest.c.name == definitions.c.name) & (newest.c.v == definitions.c.version))
        q = q.order_by(definitions.c.project, definitions.c.kind, definitions.c.name, definitions.c.version)
        with self.db.session() as s:
            return [_row(r) for r in s.execute(q)]

    def put_all(self, project: str, writes: Sequence[DefinitionWrite], events: Sequence[DomainEvent] = ()
                ) -> list[StoredDefinition]:
        """See ``RegistryStore.put_all``: one transaction; a concurrent insert of the same version → Conflict."""
        now = now_us()
        out: list[StoredDefinition] = []
        try:
            with self.db.session() as s:
                for w in writes:
                    out.append(self._put(s, project, w, now))
                for event in events:
                    self.events.add(s, event)
        except IntegrityError:
            names = ", ".join(f"{w.kind} '{w.name}'" for w in writes)
            raise Conflict(f"{names} changed concurrently in project '{project}'; plan and apply again") from None
        return out

    @staticmethod
    def _put(s: Any, project: str, w: DefinitionWrite, now: int) -> StoredDefinition:
        existing = s.execute(select(definitions.c.id, definitions.c.created_us).where(
            definitions.c.project == project, definitions.c.kind == w.kind, definitions.c.name == w.name,
            definitions.c.version == w.version)).first()
        if existing is None:
            s.execute(definitions.insert().values(project=project, kind=w.kind, name=w.name, version=w.version,
                                                  spec=w.spec, created_us=now, updated_us=now))
            s.flush()
            created = now
        else:
            s.execute(definitions.update().where(definitions.c.id == existing.id).values(
                spec=w.spec, updated_us=now))
            created = existing.created_us
        return StoredDefinition(project, w.kind, w.name, w.version, w.spec, created, now)

    def delete(self, project: str, kind: str, name: str) -> int:
        """See ``RegistryStore.delete``."""
        with self.db.session() as s:
            res = s.execute(delete(definitions).where(definitions.c.project == project,
                                                      definitions.c.kind == kind, definitions.c.name == name))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]
