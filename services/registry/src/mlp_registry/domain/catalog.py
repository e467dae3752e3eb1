"""Models, version metadata, search and paging, lineage queries and the audit trail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from mlp_core.errors import InvalidArgument
from mlp_registry.domain import validation
from mlp_registry.domain.caller import READ, WRITE, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version, record, subject_of
from mlp_registry.domain.models import (
    ArtifactFile,
    AuditRecord,
    Lineage,
    MetadataRevision,
    Model,
    ModelVersion,
    Page,
    VersionState,
)

VISIBLE = frozenset({VersionState.REGISTERED, VersionState.ARCHIVED})


@dataclass(frozen=True)
class MetadataUpdate:
    """A change of mutable metadata; None leaves a field as it is."""

    description: str | None = None
    tags: dict[str, str] | None = None


class Catalog:
    """Reads and the changes that are allowed after registration."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx

    def create_model(self, caller: Caller, project: str, name: str, description: str = "",
                     tags: dict[str, str] | None = None,
                     thresholds: dict[str, Any] | None = None) -> Model:
        """Create a model in a project the caller belongs to."""
        require(caller, WRITE)
        validation.name("project", project)
        validation.name("model", name)
        if not caller.can_access(project):
            raise InvalidArgument(f"you cannot create models in project '{project}'")
        now = self.ctx.clock()
        model = Model(id=str(uuid.uuid4()), project=project, name=name, description=description,
                      tags=validation.tags(tags or {}), thresholds=validation.thresholds(thresholds or {}),
                      metadata_revision=1, created_by=caller.subject, created_at=now)
        with self.ctx.store.transaction() as tx:
            tx.insert_model(model)
            tx.insert_revision(MetadataRevision(model.id, 1, description, model.tags, caller.subject, now))
            record(self.ctx, tx, caller, "model.created", model, subject_of(model),
                   {"thresholds": model.thresholds}, event="model-created")
        return model

    def get_model(self, caller: Caller, project: str, name: str) -> Model:
        """A model the caller may see."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            return load_model(tx, caller, project, name)

    def search_models(self, caller: Caller, *, project: str | None = None, text: str | None = None,
                      tag: tuple[str, str] | None = None, page_size: int = 50,
                      page_token: str | None = None) -> Page[Model]:
        """Models the caller may see, filtered by project, text and tag, in pages."""
        require(caller, READ)
        offset, limit = validation.page(page_size, page_token)
        if project is not None and not caller.can_access(project):
            return Page([], None)
        projects = None if caller.can_access("*") else _projects_of(caller)
        with self.ctx.store.transaction() as tx:
            rows = tx.search_models(projects, project, text, tag, offset, limit + 1)
        return Page(rows[:limit], str(offset + limit) if len(rows) > limit else None)

    def update_model(self, caller: Caller, project: str, name: str, update: MetadataUpdate,
                     thresholds: dict[str, Any] | None = None) -> Model:
        """Change description, tags or thresholds; each change is a new metadata revision."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            if update.description is not None:
                model.description = update.description
            if update.tags is not None:
                model.tags = validation.tags(update.tags)
            if thresholds is not None:
                model.thresholds = validation.thresholds(thresholds)
            model.metadata_revision += 1
            tx.update_model(model)
            tx.insert_revision(MetadataRevision(model.id, model.metadata_revision, model.description,
                                                model.tags, caller.subject, self.ctx.clock()))
            record(self.ctx, tx, caller, "model.updated", model, subject_of(model),
                   {"revision": model.metadata_revision, "thresholds": model.thresholds})
            return model

    def list_versions(self, caller: Caller, project: str, name: str, *, include_archived: bool = True,
                      page_size: int = 50, page_token: str | None = None) -> Page[ModelVersion]:
        """Registered (and archived) versions, newest first, in pages."""
        require(caller, READ)
        offset, limit = validation.page(page_size, page_token)
        states = VISIBLE if include_archived else frozenset({VersionState.REGISTERED})
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            rows = tx.list_versions(model.id, states, offset, limit + 1)
        return Page(rows[:limit], str(offset + limit) if len(rows) > limit else None)

    def get_version(self, caller: Caller, project: str, name: str, number: int,
                    *, include_drafts: bool = False) -> tuple[Model, ModelVersion]:
        """A visible version (drafts only when asked)."""
        require(caller, READ)
        states = VISIBLE | {VersionState.DRAFT} if include_drafts else VISIBLE
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            return model, load_version(tx, model, number, frozenset(states))

    def describe_version(self, caller: Caller, project: str, name: str, number: int,
                         ) -> tuple[Model, ModelVersion, list[ArtifactFile], list[str]]:
        """A visible version with its files and the aliases pointing at it."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            version = load_version(tx, model, number, VISIBLE)
            return (model, version, tx.list_files(version.id),
                    [a.name for a in tx.aliases_pointing_to(version.id)])

    def update_version(self, caller: Caller, project: str, name: str, number: int,
                       update: MetadataUpdate) -> ModelVersion:
        """Change a version's description or tags (its files and metrics never change)."""
        require(caller, WRITE)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            version = load_version(tx, model, number)
            if update.description is not None:
                version.description = update.description
            if update.tags is not None:
                version.tags = validation.tags(update.tags)
            version.metadata_revision += 1
            tx.update_version(version)
            tx.insert_revision(MetadataRevision(version.id, version.metadata_revision, version.description,
                                                version.tags, caller.subject, self.ctx.clock()))
            record(self.ctx, tx, caller, "version.metadata-updated", model, subject_of(model, version),
                   {"revision": version.metadata_revision})
            return version

    def metadata_history(self, caller: Caller, project: str, name: str,
                         number: int | None = None) -> list[MetadataRevision]:
        """Every revision of the mutable metadata of a model, or of one of its versions."""
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, name)
            object_id = load_version(tx, model, number).id if number is not None else model.id
            return tx.list_revisions(object_id)

    def lineage(self, caller: Caller, project: str, name: str, number: int) -> Lineage:
        """Where a version came from: run, training set, feature views and service, code version."""
        return self.get_version(caller, project, name, number)[1].lineage

    def versions_using(self, caller: Caller, *, feature_view: str | None = None,
                       training_set_digest: str | None = None) -> list[tuple[Model, ModelVersion]]:
        """Every visible version whose lineage names a feature view or a training-set digest."""
        require(caller, READ)
        if (feature_view is None) == (training_set_digest is None):
            raise InvalidArgument("give exactly one of feature_view or training_set_digest")
        projects = None if caller.can_access("*") else _projects_of(caller)
        with self.ctx.store.transaction() as tx:
            found = tx.versions_using(feature_view, training_set_digest, projects)
        return [(m, v) for m, v in found if caller.can_access(m.project)]

    def audit_trail(self, caller: Caller, project: str, name: str | None = None,
                    limit: int = 100) -> list[AuditRecord]:
        """Audit records of a project (or one model), newest first."""
        require(caller, READ)
        if not caller.can_access(project):
            return []
        with self.ctx.store.transaction() as tx:
            if name is not None:
                load_model(tx, caller, project, name)
            return tx.list_audit(project, f"{project}/{name}" if name is not None else None,
                                 min(max(limit, 1), 1000))


def _projects_of(caller: Caller) -> frozenset[str]:
    return frozenset(caller.projects)


