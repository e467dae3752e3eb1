"""Archiving and deleting versions, and garbage collection of objects nothing references."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from mlp_core.errors import FailedPrecondition
from mlp_registry.domain.caller import ADMIN_SCOPE, WRITE, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version, record, subject_of
from mlp_registry.domain.models import AuditRecord, ModelVersion, UploadState, VersionState

REGISTERED = frozenset({VersionState.REGISTERED})
ARCHIVED = frozenset({VersionState.ARCHIVED})
VISIBLE = REGISTERED | ARCHIVED


@dataclass(frozen=True)
class GcReport:
    """What a garbage-collection pass removed."""

    objects_deleted: int
    staging_deleted: int
    uploads_expired: int


class Housekeeping:
    """Archive, restore, delete; collect garbage."""

    def __init__(self, ctx: RegistryContext, upload_ttl: timedelta = timedelta(days=2)) -> None:
        self.ctx = ctx
        self.upload_ttl = upload_ttl

    def _refuse_if_aliased(self, aliases: list[str], number: int, action: str) -> None:
        if aliases:
            raise FailedPrecondition(f"version {number} cannot be {action}: aliases {sorted(aliases)} point at it; "
                                     "move them first")

    def archive(self, caller: Caller, project: str, name: str, number: int) -> ModelVersion:
        """Hide a version from default listings and from aliases; its files stay readable."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            version = load_version(tx, model, number, REGISTERED)
            self._refuse_if_aliased([a.name for a in tx.aliases_pointing_to(version.id)], number, "archived")
            version.state = VersionState.ARCHIVED
            tx.update_version(version)
            record(self.ctx, tx, caller, "version.archived", model, subject_of(model, version), {"version": number},
                   event="version-archived")
            return version

    def restore(self, caller: Caller, project: str, name: str, number: int) -> ModelVersion:
        """Bring an archived version back."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            version = load_version(tx, model, number, ARCHIVED)
            version.state = VersionState.REGISTERED
            tx.update_version(version)
            record(self.ctx, tx, caller, "version.restored", model, subject_of(model, version), {"version": number})
            return version

    def delete(self, caller: Caller, project: str, name: str, number: int) -> None:
        """Delete a version's files (they become garbage); the record stays as a tombstone for lineage."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            version = load_version(tx, model, number, VISIBLE)
            self._refuse_if_aliased([a.name for a in tx.aliases_pointing_to(version.id)], number, "deleted")
            tx.delete_files(version.id)
            version.state = VersionState.DELETED
            tx.update_version(version)
            record(self.ctx, tx, caller, "version.deleted", model, subject_of(model, version), {"version": number},
                   event="version-deleted")

    def collect_garbage(self, caller: Caller) -> GcReport:
        """Delete objects no file references, staging of finished uploads, and expire idle uploads."""
        require(caller, ADMIN_SCOPE)
        now = self.ctx.clock()
        expired = 0
        with self.ctx.store.transaction() as tx:
            referenced = tx.referenced_object_keys()
            live_uploads = tx.open_upload_ids()
            for upload_id in sorted(live_uploads):
                upload = tx.get_upload(upload_id, for_update=True)
                if upload is not None and now - upload.updated_at > self.upload_ttl:
                    upload.state, upload.updated_at = UploadState.ABORTED, now
                    tx.update_upload(upload)
                    live_uploads.discard(upload_id)
                    expired += 1
        objects = 0
        for key in list(self.ctx.artifacts.list_keys()):
            if key not in referenced:
                self.ctx.artifacts.delete(key)
                objects += 1
        staging = 0
        for upload_id in list(self.ctx.artifacts.list_staging()):
            if upload_id not in live_uploads:
                self.ctx.artifacts.discard_staging(upload_id)
                staging += 1
        report = GcReport(objects, staging, expired)
        with self.ctx.store.transaction() as tx:
            tx.insert_audit(AuditRecord(None, self.ctx.clock(), caller.subject, "artifacts.garbage-collected", "*",
                                        "artifacts", {"objects": objects, "staging": staging,
                                                      "uploads_expired": expired}))
        return report
