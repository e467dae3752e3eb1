"""REST request and response bodies (``XCreate`` / ``XRead`` / ``XUpdate``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(_Strict):
    """A new model in a project."""

    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                    examples=[{"auc": {"min": 0.8}}])


class ModelUpdate(_Strict):
    """Mutable model metadata; omitted fields stay as they are."""

    description: str | None = None
    tags: dict[str, str] | None = None
    thresholds: dict[str, dict[str, float]] | None = None


class ModelRead(BaseModel):
    """A model."""

    id: str
    project: str
    name: str
    description: str
    tags: dict[str, str]
    thresholds: dict[str, dict[str, float]]
    metadata_revision: int
    created_by: str
    created_at: datetime


class ModelPage(BaseModel):
    """A page of models."""

    items: list[ModelRead]
    next_page_token: str | None


class FileDecl(_Strict):
    """A file the client is going to upload."""

    path: str
    size: int
    sha256: str


class LineageBody(_Strict):
    """Where a version came from."""

    training_run: str | None = None
    training_set_digest: str | None = None
    data_quality_passed: bool | None = None
    feature_views: list[str] = Field(default_factory=list)
    feature_service: str | None = None
    code_version: str | None = None


class VersionCreate(_Strict):
    """A new version: its files and its immutable metadata."""

    files: list[FileDecl]
    framework: str = "onnx"
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    model_card: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)
    lineage: LineageBody = Field(default_factory=LineageBody)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class VersionUpdate(_Strict):
    """Mutable version metadata."""

    description: str | None = None
    tags: dict[str, str] | None = None


class FileRead(BaseModel):
    """A file of a version."""

    path: str
    size: int
    sha256: str


class VersionRead(BaseModel):
    """A version."""

    id: str
    model_id: str
    project: str
    model: str
    version: int
    state: str
    framework: str
    metrics: dict[str, float]
    params: dict[str, Any]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    model_card: str
    attributes: dict[str, Any]
    lineage: LineageBody
    description: str
    tags: dict[str, str]
    metadata_revision: int
    manifest_digest: str | None
    created_by: str
    created_at: datetime
    registered_at: datetime | None


class VersionPage(BaseModel):
    """A page of versions."""

    items: list[VersionRead]
    next_page_token: str | None


class UploadRead(BaseModel):
    """An upload session; send bytes with ``PUT /uploads/{id}`` and header ``Upload-Offset``."""

    id: str
    path: str
    size: int
    offset: int
    state: str


class DraftRead(BaseModel):
    """A draft version and its upload sessions."""

    version: VersionRead
    uploads: list[UploadRead]


class AliasSet(_Strict):
    """Point an alias at a version."""

    version: int


class AliasRead(BaseModel):
    """An alias."""

    name: str
    version: int
    version_id: str
    updated_by: str
    updated_at: datetime


class ChangeRequestCreate(_Strict):
    """Ask to point a (protected) alias at a version."""

    alias: str
    version: int
    reason: str


class Decision(_Strict):
    """A comment on an approval or rejection."""

    comment: str = ""


class CheckRead(BaseModel):
    """A policy check result."""

    name: str
    passed: bool
    blocking: bool
    detail: str


class ApprovalRead(BaseModel):
    """A decision."""

    actor: str
    decision: str
    comment: str
    at: datetime


class ChangeRequestRead(BaseModel):
    """A change request."""

    id: str
    project: str
    model: str
    alias: str
    version: int
    target_version_id: str
    previous_version_id: str | None
    kind: str
    state: str
    reason: str
    requested_by: str
    created_at: datetime
    expires_at: datetime
    checks: list[CheckRead]
    approvals: list[ApprovalRead]
    applied_at: datetime | None
    applied_by: str | None


class SignedManifestRead(BaseModel):
    """The DSSE envelope and the manifest it signs."""

    manifest_digest: str
    envelope: dict[str, Any]
    manifest: dict[str, Any]


class SigningKeyRead(BaseModel):
    """A published verification key."""

    key_id: str
    algorithm: str = "ed25519"
    public_key_pem: str
