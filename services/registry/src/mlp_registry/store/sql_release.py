"""SQL queries for aliases, change requests, audit records and signing keys (mixed into the SQL tx)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from mlp_registry.domain.models import Alias, AliasChange, AuditRecord, ChangeRequest, ChangeState
from mlp_registry.store import sql_mapping as mapping
from mlp_registry.store import tables as t


class ReleaseQueries:
    """Alias, change-request, audit and key queries over ``self.session``."""

    session: Session

    def get_alias(self, model_id: str, name: str) -> Alias | None:
        """An alias of a model."""
        row = self.session.execute(select(t.aliases).where(t.aliases.c.model_id == model_id,
                                                           t.aliases.c.name == name)).first()
        return mapping.alias_from(row) if row else None

    def list_aliases(self, model_id: str) -> list[Alias]:
        """Aliases of a model by name."""
        rows = self.session.execute(select(t.aliases).where(t.aliases.c.model_id == model_id)
                                    .order_by(t.aliases.c.name))
        return [mapping.alias_from(r) for r in rows]

    def aliases_pointing_to(self, version_id: str) -> list[Alias]:
        """Aliases that point at a version."""
        rows = self.session.execute(select(t.aliases).where(t.aliases.c.version_id == version_id))
        return [mapping.alias_from(r) for r in rows]

    def set_alias(self, alias: Alias) -> None:
        """Create or move an alias."""
        self.delete_alias(alias.model_id, alias.name)
        self.session.execute(insert(t.aliases).values(asdict(alias)))

    def delete_alias(self, model_id: str, name: str) -> None:
        """Remove an alias."""
        self.session.execute(delete(t.aliases).where(t.aliases.c.model_id == model_id,
                                                     t.aliases.c.name == name))

    def insert_alias_change(self, change: AliasChange) -> None:
        """Record a move of an alias."""
        self.session.execute(insert(t.alias_history).values(asdict(change)))

    def alias_history(self, model_id: str, alias: str) -> list[AliasChange]:
        """Moves of one alias, oldest first."""
        rows = self.session.execute(select(t.alias_history).where(t.alias_history.c.model_id == model_id,
                                                                  t.alias_history.c.alias == alias)
                                    .order_by(t.alias_history.c.id))
        return [mapping.alias_change_from(r) for r in rows]

    def insert_change_request(self, cr: ChangeRequest) -> None:
        """Add a change request."""
        self.session.execute(insert(t.change_requests).values(mapping.change_request_values(cr)))

    def get_change_request(self, cr_id: str, *, for_update: bool = False) -> ChangeRequest | None:
        """A change request, row-locked on PostgreSQL when ``for_update``."""
        query = select(t.change_requests).where(t.change_requests.c.id == cr_id)
        if for_update:
            query = query.with_for_update()
        row = self.session.execute(query).first()
        return mapping.change_request_from(row) if row else None

    def update_change_request(self, cr: ChangeRequest) -> None:
        """Save the whole request."""
        values = mapping.change_request_values(cr)
        self.session.execute(update(t.change_requests).where(t.change_requests.c.id == cr.id).values(values))

    def list_change_requests(self, model_id: str, state: ChangeState | None) -> list[ChangeRequest]:
        """Change requests of a model, newest first."""
        query = select(t.change_requests).where(t.change_requests.c.model_id == model_id)
        if state is not None:
            query = query.where(t.change_requests.c.state == state.value)
        rows = self.session.execute(query.order_by(t.change_requests.c.created_at.desc()))
        return [mapping.change_request_from(r) for r in rows]

    def stale_change_requests(self, now: datetime) -> list[ChangeRequest]:
        """Open or approved requests past their expiry."""
        rows = self.session.execute(select(t.change_requests).where(
            t.change_requests.c.state.in_([ChangeState.OPEN.value, ChangeState.APPROVED.value]),
            t.change_requests.c.expires_at < now))
        return [mapping.change_request_from(r) for r in rows]

    def insert_audit(self, record: AuditRecord) -> None:
        """Append an audit record."""
        values = asdict(record)
        values.pop("id")
        self.session.execute(insert(t.audit).values(values))

    def list_audit(self, project: str, model_subject: str | None, limit: int) -> list[AuditRecord]:
        """Audit records of a project (or of exactly one model and its versions), newest first."""
        query = select(t.audit).where(t.audit.c.project == project)
        if model_subject:
            query = query.where(or_(t.audit.c.subject == model_subject,
                                    t.audit.c.subject.startswith(model_subject + "@", autoescape=True)))
        rows = self.session.execute(query.order_by(t.audit.c.id.desc()).limit(limit))
        return [mapping.audit_from(r) for r in rows]

    def upsert_signing_key(self, key_id: str, public_pem: str, at: datetime) -> None:
        """Remember a public key (no-op when known)."""
        known = self.session.execute(select(t.signing_keys.c.key_id)
                                     .where(t.signing_keys.c.key_id == key_id)).first()
        if not known:
            self.session.execute(insert(t.signing_keys).values(key_id=key_id, public_pem=public_pem,
                                                               created_at=at))

    def signing_keys(self) -> dict[str, str]:
        """Every published public key."""
        rows = self.session.execute(select(t.signing_keys).order_by(t.signing_keys.c.created_at))
        return {r.key_id: r.public_pem for r in rows}
