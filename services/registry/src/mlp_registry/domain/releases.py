"""Aliases and the change requests that move protected ones (see ``policies`` for the rules)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from mlp_core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from mlp_registry.domain import validation
from mlp_registry.domain.caller import APPROVE, READ, WRITE, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version, record, subject_of
from mlp_registry.domain.errors import IdempotencyKeyTaken, IntegrityCheckFailed, PolicyCheckFailed
from mlp_registry.domain.idempotency import CREATE_CHANGE_REQUEST, fingerprint
from mlp_registry.domain.manifest import check_version
from mlp_registry.domain.models import (
    Alias,
    AliasChange,
    Approval,
    ChangeKind,
    ChangeRequest,
    ChangeState,
    CheckResult,
    IdempotencyRecord,
    Model,
    ModelVersion,
    VersionState,
)
from mlp_registry.domain.policies import failing
from mlp_registry.store.base import MetadataTx

REGISTERED = frozenset({VersionState.REGISTERED})
#: What a change request asks for when the client does not say (the only change the registry makes).
SET_ALIAS = "set_alias"


def change_request_digest(alias: str, number: int, reason: str, requested_kind: str = SET_ALIAS,
                          origin: Mapping[str, str] | None = None) -> str:
    """Fingerprint of a change request (reason without surrounding blanks; no origin = empty origin)."""
    return fingerprint({"kind": requested_kind, "alias": alias, "version": number, "reason": reason.strip(),
                        "origin": {k: v for k, v in (origin or {}).items() if v} or None})


class Releases:
    """Sets aliases directly where allowed and runs change requests for protected ones."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx

    # aliases ------------------------------------------------------------------------------
    def list_aliases(self, caller: Caller, project: str, model_name: str) -> list[tuple[Alias, int]]:
        """Aliases of a model with the version number each points at."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            out = []
            for alias in tx.list_aliases(model.id):
                version = tx.get_version_by_id(alias.version_id)
                out.append((alias, version.number if version else 0))
            return out

    def set_alias(self, caller: Caller, project: str, model_name: str, alias: str, number: int) -> Alias:
        """Point an unprotected alias at a registered version."""
        require(caller, WRITE)
        validation.alias(alias)
        if self.ctx.policy.is_protected(alias):
            raise FailedPrecondition(f"alias '{alias}' is protected; open a change request to move it")
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            version = load_version(tx, model, number, REGISTERED)
            return self._move(tx, caller, model, alias, version, None)

    def delete_alias(self, caller: Caller, project: str, model_name: str, alias: str) -> None:
        """Remove an unprotected alias."""
        require(caller, WRITE)
        validation.alias(alias)
        if self.ctx.policy.is_protected(alias):
            raise FailedPrecondition(f"alias '{alias}' is protected and cannot be removed directly")
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            current = tx.get_alias(model.id, alias)
            if current is None:
                raise NotFound(f"model '{project}/{model_name}' has no alias '{alias}'")
            tx.delete_alias(model.id, alias)
            now = self.ctx.clock()
            tx.insert_alias_change(AliasChange(model.id, alias, None, current.version_id, caller.subject, now, None))
            record(self.ctx, tx, caller, "alias.deleted", model, subject_of(model),
                   {"alias": alias, "version_id": None, "previous_version_id": current.version_id},
                   event="alias-changed")

    def _move(self, tx: MetadataTx, caller: Caller, model: Model, alias: str, version: ModelVersion,
              cr_id: str | None) -> Alias:
        current = tx.get_alias(model.id, alias)
        previous = current.version_id if current else None
        now = self.ctx.clock()
        moved = Alias(model.id, alias, version.id, caller.subject, now)
        tx.set_alias(moved)
        tx.insert_alias_change(AliasChange(model.id, alias, version.id, previous, caller.subject, now, cr_id))
        record(self.ctx, tx, caller, "alias.changed", model, subject_of(model),
               {"alias": alias, "version": version.number, "version_id": version.id,
                "previous_version_id": previous, "change_request_id": cr_id}, event="alias-changed")
        return moved

    # change requests ----------------------------------------------------------------------
    def create_change_request(self, caller: Caller, project: str, model_name: str, alias: str, number: int,
                              reason: str, idempotency_key: str | None = None, *,
                              requested_kind: str = SET_ALIAS, origin: Mapping[str, str] | None = None,
                              ) -> ChangeRequest:
        """Open a request to point ``alias`` at version ``number``; checks run now and again at apply.

        With an ``idempotency_key``, a retry by the same caller for the same model returns the
        change request the first request opened (as it is now, even if since approved, applied or
        expired) and creates nothing; the same key with a different request is refused with
        ``AlreadyExists``. Concurrent first uses of a key open one request (unique key row, the
        loser replays). ``requested_kind`` (what the client asked for; the registry only sets
        aliases) and ``origin`` (the client's reference to what prompted the request) are part of
        the request's fingerprint only.
        """
        require(caller, WRITE)
        key = validation.idempotency_key(idempotency_key)
        validation.alias(alias)
        if not reason or not reason.strip() or len(reason) > 4000:
            raise InvalidArgument("a change request needs a reason (1-4000 characters)")
        digest = change_request_digest(alias, number, reason, requested_kind, origin) if key else ""
        if key:
            replay = self._replay(caller, project, model_name, key, digest)
            if replay is not None:
                return replay
        try:
            return self._insert_change_request(caller, project, model_name, alias, number, reason, key, digest)
        except IdempotencyKeyTaken:
            # A concurrent request with the same key committed first: answer with its change request.
            assert key is not None
            replay = self._replay(caller, project, model_name, key, digest)
            if replay is None:  # pragma: no cover - the winner's row is committed before we fail
                raise Conflict("a request with the same idempotency key is in progress; retry") from None
            return replay

    def _replay(self, caller: Caller, project: str, model_name: str, key: str, digest: str) -> ChangeRequest | None:
        """The change request the first request with ``key`` opened, or None when the key is new."""
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            found = tx.get_idempotency_key(CREATE_CHANGE_REQUEST, model.id, caller.subject, key)
            if found is None:
                return None
            if found.request_digest != digest:
                raise AlreadyExists(
                    f"idempotency key {key!r} was already used to open a different change request on "
                    f"'{project}/{model_name}' (another alias, version, reason or origin); use a new key "
                    "for a new request")
            cr = tx.get_change_request(found.object_id)
            if cr is None:  # pragma: no cover - change requests are never deleted
                raise NotFound(f"the change request opened with idempotency key {key!r} no longer exists")
            return cr

    def _insert_change_request(self, caller: Caller, project: str, model_name: str, alias: str, number: int,
                               reason: str, key: str | None, digest: str) -> ChangeRequest:
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            now = self.ctx.clock()
            cr_id = str(uuid.uuid4())
            if key:
                # First write of the transaction: a concurrent twin waits here and then fails.
                tx.claim_idempotency_key(IdempotencyRecord(
                    operation=CREATE_CHANGE_REQUEST, model_id=model.id, caller=caller.subject, key=key,
                    request_digest=digest, object_id=cr_id, created_at=now))
            version = load_version(tx, model, number, REGISTERED)
            current = tx.get_alias(model.id, alias)
            if current and current.version_id == version.id:
                raise FailedPrecondition(f"alias '{alias}' already points at version {number}")
            held_before = any(c.version_id == version.id for c in tx.alias_history(model.id, alias))
            kind = ChangeKind.ROLLBACK if held_before else ChangeKind.PROMOTION
            cr = ChangeRequest(
                id=cr_id, model_id=model.id, alias=alias, target_version_id=version.id,
                previous_version_id=current.version_id if current else None, kind=kind, state=ChangeState.OPEN,
                reason=reason.strip(), requested_by=caller.subject, created_at=now,
                expires_at=now + self.ctx.policy.change_request_ttl,
                checks=self._checks(tx, model, version, kind))
            tx.insert_change_request(cr)
            record(self.ctx, tx, caller, "change-request.created", model, subject_of(model, version),
                   self._event_data(cr, version), event="change-request-created")
            return cr

    def _checks(self, tx: MetadataTx, model: Model, version: ModelVersion, kind: ChangeKind) -> list[CheckResult]:
        try:
            check_version(model, version, tx.list_files(version.id), tx.signing_keys())
            error = None
        except IntegrityCheckFailed as exc:
            error = exc.detail
        return self.ctx.policy.evaluate(model, version, error, kind)

    def _event_data(self, cr: ChangeRequest, version: ModelVersion) -> dict[str, Any]:
        return {"change_request_id": cr.id, "alias": cr.alias, "kind": cr.kind.value, "state": cr.state.value,
                "version": version.number, "version_id": version.id,
                "previous_version_id": cr.previous_version_id, "requested_by": cr.requested_by,
                "checks": [asdict(c) for c in cr.checks]}

    def _load(self, tx: MetadataTx, caller: Caller, cr_id: str) -> tuple[ChangeRequest, Model, ModelVersion]:
        cr = tx.get_change_request(cr_id, for_update=True)
        model = tx.get_model_by_id(cr.model_id) if cr else None
        if cr is None or model is None or not caller.can_access(model.project):
            raise NotFound(f"change request {cr_id!r} does not exist or is not visible to you")
        version = tx.get_version_by_id(cr.target_version_id)
        if version is None:
            raise NotFound(f"the target version of change request {cr_id!r} is gone")
        return cr, model, version

    def _expire_if_due(self, tx: MetadataTx, caller: Caller, cr: ChangeRequest, model: Model) -> bool:
        if cr.state in (ChangeState.OPEN, ChangeState.APPROVED) and self.ctx.clock() >= cr.expires_at:
            cr.state, cr.decided_at = ChangeState.EXPIRED, self.ctx.clock()
            tx.update_change_request(cr)
            record(self.ctx, tx, caller, "change-request.expired", model, subject_of(model),
                   {"change_request_id": cr.id, "alias": cr.alias})
            return True
        return False

    def get_change_request(self, caller: Caller, cr_id: str) -> tuple[ChangeRequest, Model, ModelVersion]:
        """A change request with its model and target version."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            return self._load(tx, caller, cr_id)

    def list_change_requests(self, caller: Caller, project: str, model_name: str,
                             state: ChangeState | None) -> list[tuple[ChangeRequest, int]]:
        """Change requests of a model with their target version numbers, newest first."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            out = []
            for cr in tx.list_change_requests(model.id, state):
                version = tx.get_version_by_id(cr.target_version_id)
                out.append((cr, version.number if version else 0))
            return out

    def approve(self, caller: Caller, cr_id: str, comment: str = "") -> ChangeRequest:
        """Approve an open request (``registry:approve``; not the requester, except for rollbacks)."""
        require(caller, APPROVE)
        blocked: list[CheckResult] = []
        with self.ctx.store.transaction() as tx:
            cr, model, version = self._load(tx, caller, cr_id)
            expired = self._expire_if_due(tx, caller, cr, model)
            if not expired:
                if cr.state is not ChangeState.OPEN:
                    raise FailedPrecondition(f"change request {cr_id} is {cr.state.value}; only open ones can be approved")
                if cr.requested_by == caller.subject and not self.ctx.policy.self_approval_allowed(cr.kind):
                    raise PermissionDenied("four-eyes rule: the requester cannot approve their own change request")
                cr.checks = self._checks(tx, model, version, cr.kind)
                blocked = failing(cr.checks)
                if blocked:
                    tx.update_change_request(cr)
                else:
                    cr.approvals.append(Approval(caller.subject, "approved", comment, self.ctx.clock()))
                    cr.state, cr.decided_at = ChangeState.APPROVED, self.ctx.clock()
                    tx.update_change_request(cr)
                    record(self.ctx, tx, caller, "change-request.approved", model, subject_of(model, version),
                           {**self._event_data(cr, version), "approved_by": caller.subject,
                            "self_approved": cr.requested_by == caller.subject}, event="change-request-approved")
        if expired:
            raise FailedPrecondition(f"change request {cr_id} has expired; open a new one")
        if blocked:
            raise PolicyCheckFailed(_blocked_message(cr_id, blocked), errors=[asdict(c) for c in blocked])
        return cr

    def reject(self, caller: Caller, cr_id: str, comment: str) -> ChangeRequest:
        """Reject an open or approved request (an approver), or withdraw it (the requester)."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            cr, model, version = self._load(tx, caller, cr_id)
            if not (caller.has_scope(APPROVE) or cr.requested_by == caller.subject):
                raise PermissionDenied(f"rejecting needs the scope '{APPROVE}' (or being the requester)")
            if cr.state not in (ChangeState.OPEN, ChangeState.APPROVED):
                raise FailedPrecondition(f"change request {cr_id} is {cr.state.value} and cannot be rejected")
            cr.approvals.append(Approval(caller.subject, "rejected", comment, self.ctx.clock()))
            cr.state, cr.decided_at = ChangeState.REJECTED, self.ctx.clock()
            tx.update_change_request(cr)
            record(self.ctx, tx, caller, "change-request.rejected", model, subject_of(model, version),
                   {**self._event_data(cr, version), "rejected_by": caller.subject, "comment": comment},
                   event="change-request-rejected")
            return cr

    def apply(self, caller: Caller, cr_id: str) -> ChangeRequest:
        """Move the alias of an approved request after re-running the checks."""
        require(caller, WRITE)
        blocked: list[CheckResult] = []
        with self.ctx.store.transaction() as tx:
            cr, model, version = self._load(tx, caller, cr_id)
            expired = self._expire_if_due(tx, caller, cr, model)
            if not expired:
                if cr.state is not ChangeState.APPROVED:
                    raise FailedPrecondition(f"change request {cr_id} is {cr.state.value}; it must be approved first")
                if version.state is not VersionState.REGISTERED:
                    raise FailedPrecondition(f"version {version.number} is {version.state.value}")
                current = tx.get_alias(model.id, cr.alias)
                if (current.version_id if current else None) != cr.previous_version_id:
                    raise Conflict(f"alias '{cr.alias}' moved since the request was opened; open a new one")
                cr.checks = self._checks(tx, model, version, cr.kind)
                blocked = failing(cr.checks)
                if not blocked:
                    self._move(tx, caller, model, cr.alias, version, cr.id)
                    cr.state, cr.applied_at, cr.applied_by = ChangeState.APPLIED, self.ctx.clock(), caller.subject
                    record(self.ctx, tx, caller, "change-request.applied", model, subject_of(model, version),
                           {**self._event_data(cr, version), "applied_by": caller.subject},
                           event="change-request-applied")
                tx.update_change_request(cr)
        if expired:
            raise FailedPrecondition(f"change request {cr_id} has expired; open a new one")
        if blocked:
            raise PolicyCheckFailed(_blocked_message(cr_id, blocked), errors=[asdict(c) for c in blocked])
        return cr

    def expire_stale(self, caller: Caller) -> int:
        """Mark every overdue request expired (a background task calls this)."""
        count = 0
        with self.ctx.store.transaction() as tx:
            for cr in tx.stale_change_requests(self.ctx.clock()):
                model = tx.get_model_by_id(cr.model_id)
                if model is not None and self._expire_if_due(tx, caller, cr, model):
                    count += 1
        return count


def _blocked_message(cr_id: str, blocked: list[CheckResult]) -> str:
    return (f"change request {cr_id} fails blocking policy checks: "
            + "; ".join(f"{c.name}: {c.detail}" for c in blocked))
