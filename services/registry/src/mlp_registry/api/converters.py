"""Domain objects → REST bodies (protobuf conversion for gRPC lives in ``grpc_converters``)."""

from __future__ import annotations

from dataclasses import asdict

from mlp_registry.api import schemas as s
from mlp_registry.domain.models import (
    Alias,
    ChangeRequest,
    Lineage,
    Model,
    ModelVersion,
    UploadSession,
)


def model_read(m: Model) -> s.ModelRead:
    """REST form of a model."""
    return s.ModelRead(**asdict(m))


def lineage_body(lineage: Lineage) -> s.LineageBody:
    """REST form of lineage."""
    return s.LineageBody(**asdict(lineage))


def lineage_from(body: s.LineageBody) -> Lineage:
    """Domain lineage from a request body."""
    return Lineage(**body.model_dump())


def version_read(model: Model, v: ModelVersion) -> s.VersionRead:
    """REST form of a version."""
    return s.VersionRead(
        id=v.id, model_id=v.model_id, project=model.project, model=model.name, version=v.number,
        state=v.state.value, framework=v.framework, metrics=v.metrics, params=v.params,
        input_schema=v.input_schema, output_schema=v.output_schema, model_card=v.model_card,
        attributes=v.attributes, lineage=lineage_body(v.lineage), description=v.description, tags=v.tags,
        metadata_revision=v.metadata_revision, manifest_digest=v.manifest_digest, created_by=v.created_by,
        created_at=v.created_at, registered_at=v.registered_at)


def upload_read(u: UploadSession) -> s.UploadRead:
    """REST form of an upload session."""
    return s.UploadRead(id=u.id, path=u.path, size=u.size, offset=u.offset, state=u.state.value)


def alias_read(a: Alias, number: int) -> s.AliasRead:
    """REST form of an alias."""
    return s.AliasRead(name=a.name, version=number, version_id=a.version_id, updated_by=a.updated_by,
                       updated_at=a.updated_at)


def change_request_read(cr: ChangeRequest, model: Model, number: int) -> s.ChangeRequestRead:
    """REST form of a change request."""
    return s.ChangeRequestRead(
        id=cr.id, project=model.project, model=model.name, alias=cr.alias, version=number,
        target_version_id=cr.target_version_id, previous_version_id=cr.previous_version_id, kind=cr.kind.value,
        state=cr.state.value, reason=cr.reason, requested_by=cr.requested_by, created_at=cr.created_at,
        expires_at=cr.expires_at, checks=[s.CheckRead(**asdict(c)) for c in cr.checks],
        approvals=[s.ApprovalRead(**asdict(a)) for a in cr.approvals], applied_at=cr.applied_at,
        applied_by=cr.applied_by)
