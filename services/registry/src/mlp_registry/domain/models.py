"""The registry's domain objects: plain dataclasses, no framework types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

JsonDict = dict[str, Any]
T = TypeVar("T")


class VersionState(StrEnum):
    """Life cycle of a version: a draft receives files; registered is immutable and signed."""

    DRAFT = "draft"
    REGISTERED = "registered"
    ARCHIVED = "archived"
    DELETED = "deleted"


class UploadState(StrEnum):
    """Life cycle of one file's upload session."""

    OPEN = "open"
    COMPLETE = "complete"
    ABORTED = "aborted"


class ChangeState(StrEnum):
    """ITIL-style life cycle of a change request."""

    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    APPLIED = "applied"
    EXPIRED = "expired"


class ChangeKind(StrEnum):
    """A promotion to a new version, or a fast-trackable rollback to one that held the alias before."""

    PROMOTION = "promotion"
    ROLLBACK = "rollback"


@dataclass
class Model:
    """A named model inside one project; owns versions and aliases."""

    id: str
    project: str
    name: str
    description: str
    tags: dict[str, str]
    thresholds: dict[str, dict[str, float]]
    metadata_revision: int
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class FileSpec:
    """A file a client declares before uploading it."""

    path: str
    size: int
    sha256: str


@dataclass
class ArtifactFile:
    """One encrypted file of a version and how to open it."""

    version_id: str
    path: str
    size: int
    sha256: str
    object_key: str
    key_id: str
    key_version: int
    wrapped_key: bytes
    nonce_prefix: bytes
    segment_size: int


@dataclass
class Lineage:
    """Where a version came from."""

    training_run: str | None = None
    training_set_digest: str | None = None
    data_quality_passed: bool | None = None
    feature_views: list[str] = field(default_factory=list)
    feature_service: str | None = None
    code_version: str | None = None


@dataclass
class ModelVersion:
    """An immutable version: files, manifest signature and metadata fixed at registration."""

    id: str
    model_id: str
    number: int
    state: VersionState
    framework: str
    metrics: dict[str, float]
    params: JsonDict
    input_schema: JsonDict
    output_schema: JsonDict
    model_card: str
    attributes: JsonDict
    lineage: Lineage
    description: str
    tags: dict[str, str]
    metadata_revision: int
    created_by: str
    created_at: datetime
    manifest_digest: str | None = None
    signature: JsonDict | None = None
    registered_at: datetime | None = None


@dataclass
class UploadSession:
    """A resumable upload of one declared file; ``offset`` is the count of durable plaintext bytes."""

    id: str
    version_id: str
    path: str
    size: int
    sha256: str
    offset: int
    state: UploadState
    updated_at: datetime
    #: The writer holding the session (one stream at a time) and until when, or None.
    lease_id: str | None = None
    lease_until: datetime | None = None


@dataclass(frozen=True)
class IdempotencyRecord:
    """A client's idempotency key, remembered with what the first request asked for and what it created.

    Scoped per operation, model and caller: the same key from another caller or for another model
    is a different key.
    """

    operation: str
    model_id: str
    caller: str
    key: str
    #: SHA-256 (hex) of the canonical form of the first request; a retry must match it.
    request_digest: str
    #: The object the first request created (e.g. the version id).
    object_id: str
    created_at: datetime


@dataclass
class MetadataRevision:
    """One saved state of the mutable metadata (description, tags) of a model or a version."""

    object_id: str
    revision: int
    description: str
    tags: dict[str, str]
    author: str
    at: datetime


@dataclass
class Alias:
    """A name that points at a version of a model."""

    model_id: str
    name: str
    version_id: str
    updated_by: str
    updated_at: datetime


@dataclass
class AliasChange:
    """One move of an alias, kept for rollback rules and the audit trail."""

    model_id: str
    alias: str
    version_id: str | None
    previous_version_id: str | None
    actor: str
    at: datetime
    change_request_id: str | None


@dataclass
class CheckResult:
    """The outcome of one policy check."""

    name: str
    passed: bool
    blocking: bool
    detail: str


@dataclass
class Approval:
    """A decision on a change request."""

    actor: str
    decision: str
    comment: str
    at: datetime


@dataclass
class ChangeRequest:
    """A request to move a protected alias, with its checks and approvals."""

    id: str
    model_id: str
    alias: str
    target_version_id: str
    previous_version_id: str | None
    kind: ChangeKind
    state: ChangeState
    reason: str
    requested_by: str
    created_at: datetime
    expires_at: datetime
    checks: list[CheckResult] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    decided_at: datetime | None = None
    applied_at: datetime | None = None
    applied_by: str | None = None


@dataclass
class AuditRecord:
    """One step someone took, in the registry's own audit table."""

    id: int | None
    at: datetime
    actor: str
    action: str
    project: str
    subject: str
    detail: JsonDict


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of results and the token of the next one (None at the end)."""

    items: list[T]
    next_page_token: str | None
