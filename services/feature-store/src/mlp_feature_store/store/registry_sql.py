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
        ident = (definitions.c.project == project, definitions.c.kind == w.kind, definitions.c.name == w.name,
                 definitions.c.version == w.version)
        if w.expected_updated_us is None:
            # A concurrent apply of the same new version fails here on the unique constraint (or finds it).
            if s.execute(select(definitions.c.id).where(*ident)).first() is not None:
                raise IntegrityError("definition exists", None, Exception("planned as new"))
            s.execute(definitions.insert().values(project=project, kind=w.kind, name=w.name, version=w.version,
                                                  spec=w.spec, created_us=now, updated_us=now))
            s.flush()
            return StoredDefinition(project, w.kind, w.name, w.version, w.spec, now, now)
        updated = s.execute(definitions.update().where(*ident, definitions.c.updated_us == w.expected_updated_us)
                            .values(spec=w.spec, updated_us=now).returning(definitions.c.created_us)).first()
        if updated is None:
            raise IntegrityError("definition changed", None, Exception("changed since planned"))
        return StoredDefinition(project, w.kind, w.name, w.version, w.spec, updated.created_us, now)

    def delete(self, project: str, kind: str, name: str) -> int:
        """See ``RegistryStore.delete``."""
        with self.db.session() as s:
            res = s.execute(delete(definitions).where(definitions.c.project == project,
                                                      definitions.c.kind == kind, definitions.c.name == name))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def stamp(self, project: str) -> tuple[int, int]:
        """See ``RegistryStore.stamp``: one indexed aggregate query."""
        q = select(func.count(), func.coalesce(func.max(definitions.c.updated_us), 0)).where(
            definitions.c.project == project)
        with self.db.session() as s:
            count, newest = s.execute(q).one()
        return int(count), int(newest)
