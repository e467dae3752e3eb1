"""Row ↔ domain object conversion for the SQL metadata store."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from mlp_registry.domain.models import (
    Alias,
    AliasChange,
    Approval,
    ArtifactFile,
    AuditRecord,
    ChangeKind,
    ChangeRequest,
    ChangeState,
    CheckResult,
    Lineage,
    MetadataRevision,
    Model,
    ModelVersion,
    UploadSession,
    UploadState,
    VersionState,
)


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def utc_opt(value: datetime | None) -> datetime | None:
    """``utc`` for nullable columns."""
    return utc(value) if value is not None else None


def model_from(row: Row[Any]) -> Model:
    """A Model from a registry_models row."""
    m = row._mapping
    return Model(id=m["id"], project=m["project"], name=m["name"], description=m["description"],
                 tags=dict(m["tags"]), thresholds=dict(m["thresholds"]),
                 metadata_revision=m["metadata_revision"], created_by=m["created_by"],
                 created_at=utc(m["created_at"]))


def model_values(model: Model) -> dict[str, Any]:
    """Column values of a Model."""
    return asdict(model)


def version_from(row: Row[Any], lineage: Lineage) -> ModelVersion:
    """A ModelVersion from a registry_versions row."""
    m = row._mapping
    return ModelVersion(
        id=m["id"], model_id=m["model_id"], number=m["number"], state=VersionState(m["state"]),
        framework=m["framework"], metrics=dict(m["metrics"]), params=dict(m["params"]),
        input_schema=dict(m["input_schema"]), output_schema=dict(m["output_schema"]),
        model_card=m["model_card"], attributes=dict(m["attributes"]), lineage=lineage,
        description=m["description"], tags=dict(m["tags"]), metadata_revision=m["metadata_revision"],
        created_by=m["created_by"], created_at=utc(m["created_at"]), manifest_digest=m["manifest_digest"],
        signature=m["signature"], registered_at=utc_opt(m["registered_at"]))


def version_values(version: ModelVersion) -> dict[str, Any]:
    """Column values of a ModelVersion (lineage lives in its own tables)."""
    values = {k: getattr(version, k) for k in (
        "id", "model_id", "number", "framework", "metrics", "params", "input_schema", "output_schema",
        "model_card", "attributes", "description", "tags", "metadata_revision", "created_by",
        "created_at", "manifest_digest", "signature", "registered_at")}
    values["state"] = version.state.value
    return values


def lineage_from(row: Row[Any] | None, feature_views: list[str]) -> Lineage:
    """Lineage from a registry_lineage row and its feature views."""
    if row is None:
        return Lineage(feature_views=feature_views)
    m = row._mapping
    return Lineage(training_run=m["training_run"], training_set_digest=m["training_set_digest"],
                   data_quality_passed=m["data_quality_passed"], feature_views=feature_views,
                   feature_service=m["feature_service"], code_version=m["code_version"])


def file_from(row: Row[Any]) -> ArtifactFile:
    """An ArtifactFile from a registry_files row."""
    m = row._mapping
    return ArtifactFile(version_id=m["version_id"], path=m["path"], size=m["size"], sha256=m["sha256"],
                        object_key=m["object_key"], key_id=m["key_id"], key_version=m["key_version"],
                        wrapped_key=bytes(m["wrapped_key"]), nonce_prefix=bytes(m["nonce_prefix"]),
                        segment_size=m["segment_size"])


def upload_from(row: Row[Any]) -> UploadSession:
    """An UploadSession from a registry_uploads row."""
    m = row._mapping
    return UploadSession(id=m["id"], version_id=m["version_id"], path=m["path"], size=m["size"],
                         sha256=m["sha256"], offset=m["offset"], state=UploadState(m["state"]),
                         updated_at=utc(m["updated_at"]), lease_id=m["lease_id"],
                         lease_until=utc_opt(m["lease_until"]))


def revision_from(row: Row[Any]) -> MetadataRevision:
    """A MetadataRevision from its row."""
    m = row._mapping
    return MetadataRevision(object_id=m["object_id"], revision=m["revision"], description=m["description"],
                            tags=dict(m["tags"]), author=m["author"], at=utc(m["at"]))


def alias_from(row: Row[Any]) -> Alias:
    """An Alias from its row."""
    m = row._mapping
    return Alias(model_id=m["model_id"], name=m["name"], version_id=m["version_id"],
                 updated_by=m["updated_by"], updated_at=utc(m["updated_at"]))


def alias_change_from(row: Row[Any]) -> AliasChange:
    """An AliasChange from its row."""
    m = row._mapping
    return AliasChange(model_id=m["model_id"], alias=m["alias"], version_id=m["version_id"],
                       previous_version_id=m["previous_version_id"], actor=m["actor"], at=utc(m["at"]),
                       change_request_id=m["change_request_id"])


def change_request_from(row: Row[Any]) -> ChangeRequest:
    """A ChangeRequest from its row (checks and approvals are JSON columns)."""
    m = row._mapping
    return ChangeRequest(
        id=m["id"], model_id=m["model_id"], alias=m["alias"], target_version_id=m["target_version_id"],
        previous_version_id=m["previous_version_id"], kind=ChangeKind(m["kind"]), state=ChangeState(m["state"]),
        reason=m["reason"], requested_by=m["requested_by"], created_at=utc(m["created_at"]),
        expires_at=utc(m["expires_at"]), checks=[CheckResult(**c) for c in m["checks"]],
        approvals=[Approval(actor=a["actor"], decision=a["decision"], comment=a["comment"],
                            at=datetime.fromisoformat(a["at"])) for a in m["approvals"]],
        decided_at=utc_opt(m["decided_at"]), applied_at=utc_opt(m["applied_at"]), applied_by=m["applied_by"])


def change_request_values(cr: ChangeRequest) -> dict[str, Any]:
    """Column values of a ChangeRequest."""
    values = {k: getattr(cr, k) for k in (
        "id", "model_id", "alias", "target_version_id", "previous_version_id", "reason", "requested_by",
        "created_at", "expires_at", "decided_at", "applied_at", "applied_by")}
    values["kind"] = cr.kind.value
    values["state"] = cr.state.value
    values["checks"] = [asdict(c) for c in cr.checks]
    values["approvals"] = [{"actor": a.actor, "decision": a.decision, "comment": a.comment,
                            "at": a.at.isoformat()} for a in cr.approvals]
    return values


def audit_from(row: Row[Any]) -> AuditRecord:
    """An AuditRecord from its row."""
    m = row._mapping
    return AuditRecord(id=m["id"], at=utc(m["at"]), actor=m["actor"], action=m["action"],
                       project=m["project"], subject=m["subject"], detail=dict(m["detail"]))
