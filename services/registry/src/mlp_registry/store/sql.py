"""The metadata store on SQLAlchemy (SQLite or PostgreSQL); events go to the outbox in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlp_core.db import Database
from mlp_core.errors import AlreadyExists, Conflict
from mlp_core.events.outbox import Outbox
from mlp_registry.domain.errors import IdempotencyKeyTaken
from mlp_registry.domain.models import (
    ArtifactFile,
    IdempotencyRecord,
    Lineage,
    MetadataRevision,
    Model,
    ModelVersion,
    UploadSession,
    UploadState,
    VersionState,
)
from mlp_registry.store import sql_mapping as mapping
from mlp_registry.store import tables as t
from mlp_registry.store.base import MetadataStore, MetadataTx
from mlp_registry.store.sql_release import ReleaseQueries


class SqlMetadataTx(ReleaseQueries, MetadataTx):
    """Queries over one SQLAlchemy session."""

    def __init__(self, session: Session, outbox: Outbox) -> None:
        self.session = session
        self._outbox = outbox

    # models -------------------------------------------------------------------------------
    def insert_model(self, model: Model) -> None:
        """Add a model; ``AlreadyExists`` on a duplicate name in the project."""
        try:
            with self.session.begin_nested():
                self.session.execute(insert(t.models).values(mapping.model_values(model)))
        except IntegrityError:
            raise AlreadyExists(f"model '{model.name}' already exists in project '{model.project}'") from None

    def get_model(self, project: str, name: str) -> Model | None:
        """A model by project and name."""
        row = self.session.execute(select(t.models).where(t.models.c.project == project,
                                                          t.models.c.name == name)).first()
        return mapping.model_from(row) if row else None

    def get_model_by_id(self, model_id: str) -> Model | None:
        """A model by id."""
        row = self.session.execute(select(t.models).where(t.models.c.id == model_id)).first()
        return mapping.model_from(row) if row else None

    def search_models(self, projects: frozenset[str] | None, project: str | None, text: str | None,
                      tag: tuple[str, str] | None, offset: int, limit: int) -> list[Model]:
        """Models matching text (name or description) and a tag; tag filtering happens after the query."""
        query = select(t.models).order_by(t.models.c.project, t.models.c.name)
        if projects is not None:
            query = query.where(t.models.c.project.in_(sorted(projects)))
        if project is not None:
            query = query.where(t.models.c.project == project)
        if text:
            like = f"%{text.lower()}%"
            query = query.where(or_(func.lower(t.models.c.name).like(like),
                                    func.lower(t.models.c.description).like(like)))
        rows = [mapping.model_from(r) for r in self.session.execute(query)]
        if tag is not None:
            rows = [m for m in rows if m.tags.get(tag[0]) == tag[1]]
        return rows[offset:offset + limit]

    def update_model(self, model: Model) -> None:
        """Save the mutable fields of a model."""
        self.session.execute(update(t.models).where(t.models.c.id == model.id).values(
            description=model.description, tags=model.tags, thresholds=model.thresholds,
            metadata_revision=model.metadata_revision))

    def insert_revision(self, revision: MetadataRevision) -> None:
        """Keep one state of mutable metadata."""
        self.session.execute(insert(t.revisions).values(asdict(revision)))

    def list_revisions(self, object_id: str) -> list[MetadataRevision]:
        """Revisions of an object, oldest first."""
        rows = self.session.execute(select(t.revisions).where(t.revisions.c.object_id == object_id)
                                    .order_by(t.revisions.c.revision))
        return [mapping.revision_from(r) for r in rows]

    # versions -----------------------------------------------------------------------------
    def next_version_number(self, model_id: str) -> int:
        """One more than the highest number ever used (deleted versions keep their row)."""
        top = self.session.execute(select(func.max(t.versions.c.number))
                                   .where(t.versions.c.model_id == model_id)).scalar()
        return int(top or 0) + 1

    def insert_version(self, version: ModelVersion, files: list[ArtifactFile]) -> None:
        """Add a version with files and lineage; ``Conflict`` if the number was taken concurrently."""
        try:
            with self.session.begin_nested():
                self.session.execute(insert(t.versions).values(mapping.version_values(version)))
        except IntegrityError:
            raise Conflict(f"version {version.number} was registered concurrently; retry") from None
        if files:
            self.session.execute(insert(t.files), [asdict(f) for f in files])
        lin = version.lineage
        self.session.execute(insert(t.lineage).values(
            version_id=version.id, training_run=lin.training_run, training_set_digest=lin.training_set_digest,
            data_quality_passed=lin.data_quality_passed, feature_service=lin.feature_service,
            code_version=lin.code_version))
        if lin.feature_views:
            self.session.execute(insert(t.lineage_feature_views),
                                 [{"version_id": version.id, "feature_view": fv} for fv in lin.feature_views])

    def _version(self, row: Any) -> ModelVersion:
        return mapping.version_from(row, self.get_lineage(row._mapping["id"]))

    def get_version(self, model_id: str, number: int) -> ModelVersion | None:
        """A version by model and number."""
        row = self.session.execute(select(t.versions).where(t.versions.c.model_id == model_id,
                                                            t.versions.c.number == number)).first()
        return self._version(row) if row else None

    def get_version_by_id(self, version_id: str) -> ModelVersion | None:
        """A version by id."""
        row = self.session.execute(select(t.versions).where(t.versions.c.id == version_id)).first()
        return self._version(row) if row else None

    def list_versions(self, model_id: str, states: frozenset[VersionState], offset: int,
                      limit: int) -> list[ModelVersion]:
        """Versions of a model in the given states, newest first."""
        rows = self.session.execute(
            select(t.versions).where(t.versions.c.model_id == model_id,
                                     t.versions.c.state.in_(sorted(s.value for s in states)))
            .order_by(t.versions.c.number.desc()).offset(offset).limit(limit))
        return [self._version(r) for r in rows]

    def update_version(self, version: ModelVersion) -> None:
        """Save state, signature and mutable metadata."""
        self.session.execute(update(t.versions).where(t.versions.c.id == version.id).values(
            state=version.state.value, manifest_digest=version.manifest_digest, signature=version.signature,
            registered_at=version.registered_at, description=version.description, tags=version.tags,
            metadata_revision=version.metadata_revision))

    def list_files(self, version_id: str) -> list[ArtifactFile]:
        """Files of a version by path."""
        rows = self.session.execute(select(t.files).where(t.files.c.version_id == version_id)
                                    .order_by(t.files.c.path))
        return [mapping.file_from(r) for r in rows]

    def update_file_key(self, file: ArtifactFile) -> None:
        """Save a re-wrapped data key."""
        self.session.execute(update(t.files).where(t.files.c.version_id == file.version_id,
                                                   t.files.c.path == file.path).values(
            key_id=file.key_id, key_version=file.key_version, wrapped_key=file.wrapped_key))

    def iter_files(self) -> Iterator[ArtifactFile]:
        """Every stored file."""
        for row in self.session.execute(select(t.files).order_by(t.files.c.version_id, t.files.c.path)):
            yield mapping.file_from(row)

    def delete_files(self, version_id: str) -> None:
        """Forget the files and uploads of a version."""
        self.session.execute(delete(t.files).where(t.files.c.version_id == version_id))

    def referenced_object_keys(self) -> set[str]:
        """Object keys that file rows reference."""
        return set(self.session.execute(select(t.files.c.object_key)).scalars())

    # uploads ------------------------------------------------------------------------------
    def insert_upload(self, upload: UploadSession) -> None:
        """Add an upload session."""
        values = asdict(upload)
        values["state"] = upload.state.value
        self.session.execute(insert(t.uploads).values(values))

    def get_upload(self, upload_id: str, *, for_update: bool = False) -> UploadSession | None:
        """An upload session, row-locked on PostgreSQL when ``for_update``."""
        query = select(t.uploads).where(t.uploads.c.id == upload_id)
        if for_update:
            query = query.with_for_update()
        row = self.session.execute(query).first()
        return mapping.upload_from(row) if row else None

    def update_upload(self, upload: UploadSession) -> None:
        """Save offset, state and lease."""
        self.session.execute(update(t.uploads).where(t.uploads.c.id == upload.id).values(
            offset=upload.offset, state=upload.state.value, updated_at=upload.updated_at,
            lease_id=upload.lease_id, lease_until=upload.lease_until))

    def claim_upload(self, upload_id: str, offset: int, lease_id: str, now: datetime, until: datetime) -> bool:
        """One conditional UPDATE: atomic on PostgreSQL (row lock) and SQLite (database write lock)."""
        result = self.session.execute(update(t.uploads).where(
            t.uploads.c.id == upload_id, t.uploads.c.offset == offset,
            t.uploads.c.state == UploadState.OPEN.value,
            or_(t.uploads.c.lease_id.is_(None), t.uploads.c.lease_until < now),
        ).values(lease_id=lease_id, lease_until=until))
        return bool(cast(CursorResult[Any], result).rowcount == 1)

    def renew_upload_lease(self, upload_id: str, lease_id: str, until: datetime) -> bool:
        """Extend the lease while it is still ours."""
        result = self.session.execute(update(t.uploads).where(
            t.uploads.c.id == upload_id, t.uploads.c.lease_id == lease_id).values(lease_until=until))
        return bool(cast(CursorResult[Any], result).rowcount == 1)

    def release_upload_lease(self, upload_id: str, lease_id: str) -> None:
        """Drop the lease if it is still ours."""
        self.session.execute(update(t.uploads).where(
            t.uploads.c.id == upload_id, t.uploads.c.lease_id == lease_id).values(lease_id=None, lease_until=None))

    # idempotency keys ---------------------------------------------------------------------
    def claim_idempotency_key(self, record: IdempotencyRecord) -> None:
        """Insert the key row; the primary key makes a second (or concurrent) insert fail."""
        try:
            self.session.execute(insert(t.idempotency_keys).values(asdict(record)))
        except IntegrityError:
            raise IdempotencyKeyTaken(record.key) from None

    def get_idempotency_key(self, operation: str, model_id: str, caller: str, key: str) -> IdempotencyRecord | None:
        """A recorded key, or None."""
        c = t.idempotency_keys.c
        row = self.session.execute(select(t.idempotency_keys).where(
            c.operation == operation, c.model_id == model_id, c.caller == caller, c.key == key)).first()
        if row is None:
            return None
        m = row._mapping
        return IdempotencyRecord(operation=m["operation"], model_id=m["model_id"], caller=m["caller"], key=m["key"],
                                 request_digest=m["request_digest"], object_id=m["object_id"],
                                 created_at=mapping.utc(m["created_at"]))

    def list_uploads(self, version_id: str) -> list[UploadSession]:
        """Upload sessions of a version by path."""
        rows = self.session.execute(select(t.uploads).where(t.uploads.c.version_id == version_id)
                                    .order_by(t.uploads.c.path))
        return [mapping.upload_from(r) for r in rows]

    def open_upload_ids(self) -> set[str]:
        """Ids of uploads still open."""
        return set(self.session.execute(select(t.uploads.c.id)
                                        .where(t.uploads.c.state == UploadState.OPEN.value)).scalars())

    # lineage ------------------------------------------------------------------------------
    def get_lineage(self, version_id: str) -> Lineage:
        """Lineage of a version."""
        row = self.session.execute(select(t.lineage).where(t.lineage.c.version_id == version_id)).first()
        fvs = list(self.session.execute(
            select(t.lineage_feature_views.c.feature_view)
            .where(t.lineage_feature_views.c.version_id == version_id)
            .order_by(t.lineage_feature_views.c.feature_view)).scalars())
        return mapping.lineage_from(row, fvs)

    def versions_using(self, feature_view: str | None, training_set_digest: str | None,
                       projects: frozenset[str] | None) -> list[tuple[Model, ModelVersion]]:
        """Registered or archived versions whose lineage names the feature view or training set."""
        query = (select(t.versions.c.id).join(t.models, t.models.c.id == t.versions.c.model_id)
                 .where(t.versions.c.state.in_([VersionState.REGISTERED.value, VersionState.ARCHIVED.value])))
        if feature_view is not None:
            query = query.join(t.lineage_feature_views, t.lineage_feature_views.c.version_id == t.versions.c.id
                               ).where(t.lineage_feature_views.c.feature_view == feature_view)
        if training_set_digest is not None:
            query = query.join(t.lineage, t.lineage.c.version_id == t.versions.c.id
                               ).where(t.lineage.c.training_set_digest == training_set_digest)
        if projects is not None:
            query = query.where(t.models.c.project.in_(sorted(projects)))
        query = query.order_by(t.models.c.project, t.models.c.name, t.versions.c.number)
        result = []
        for version_id in self.session.execute(query).scalars():
            version = self.get_version_by_id(version_id)
            model = self.get_model_by_id(version.model_id) if version else None
            if version and model:
                result.append((model, version))
        return result

    # events -------------------------------------------------------------------------------
    def emit(self, type: str, subject: str, data: dict[str, Any], tenant: str | None) -> None:
        """Add an event to the outbox in this transaction."""
        self._outbox.add(self.session, type=type, subject=subject, data=data, tenant=tenant)


class SqlMetadataStore(MetadataStore):
    """Transactions on one ``mlp_core.db.Database``."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    @contextmanager
    def transaction(self) -> Iterator[MetadataTx]:
        """A unit of work over one session."""
        with self.db.session() as session:
            yield SqlMetadataTx(session, self.outbox)
