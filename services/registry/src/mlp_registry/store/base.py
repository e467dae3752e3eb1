"""Interfaces of the registry's two stores: opaque encrypted objects, and metadata in transactions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from mlp_registry.domain.models import (
    Alias,
    AliasChange,
    ArtifactFile,
    AuditRecord,
    ChangeRequest,
    ChangeState,
    IdempotencyRecord,
    Lineage,
    MetadataRevision,
    Model,
    ModelVersion,
    UploadSession,
    VersionState,
)


class ArtifactStore(ABC):
    """Holds encrypted objects by key, and append-only staging objects for resumable uploads.

    Objects never contain plaintext: the domain encrypts before ``append_staging`` and decrypts
    after ``read``. Keys are ``/``-separated relative names.
    """

    @abstractmethod
    def staging_size(self, upload_id: str) -> int:
        """Bytes durably staged for an upload (0 when none)."""

    @abstractmethod
    def append_staging(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Cut the staging object back to ``offset`` bytes, append ``chunks`` durably, return the new size.

        Cutting back first makes a retried or torn append safe.
        """

    @abstractmethod
    def read_staging(self, upload_id: str, chunk_size: int) -> Iterator[bytes]:
        """Stream the staged bytes."""

    @abstractmethod
    def promote(self, upload_id: str, key: str) -> None:
        """Move a finished staging object to ``key`` atomically (the object appears whole or not at all)."""

    @abstractmethod
    def discard_staging(self, upload_id: str) -> None:
        """Delete a staging object if it exists."""

    @abstractmethod
    def list_staging(self) -> Iterator[str]:
        """Upload ids that have staging objects."""

    @abstractmethod
    def read(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """Stream an object; ``KeyError`` when it does not exist."""

    @abstractmethod
    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write an object atomically (used by repair tools and tests)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object if it exists."""

    @abstractmethod
    def list_keys(self) -> Iterator[str]:
        """Every object key."""


class MetadataTx(ABC):
    """One transaction over the registry's metadata; events and audit records commit with it."""

    # models
    @abstractmethod
    def insert_model(self, model: Model) -> None:
        """Add a model; ``AlreadyExists`` if the project has one of that name."""

    @abstractmethod
    def get_model(self, project: str, name: str) -> Model | None:
        """A model by project and name."""

    @abstractmethod
    def get_model_by_id(self, model_id: str) -> Model | None:
        """A model by id."""

    @abstractmethod
    def search_models(self, projects: frozenset[str] | None, project: str | None, text: str | None,
                      tag: tuple[str, str] | None, offset: int, limit: int) -> list[Model]:
        """Models by name/description text and tag, ordered by project and name (None: all projects)."""

    @abstractmethod
    def update_model(self, model: Model) -> None:
        """Save the mutable fields of a model (description, tags, thresholds, revision)."""

    @abstractmethod
    def insert_revision(self, revision: MetadataRevision) -> None:
        """Keep one state of mutable metadata."""

    @abstractmethod
    def list_revisions(self, object_id: str) -> list[MetadataRevision]:
        """Revisions of an object, oldest first."""

    # versions and files
    @abstractmethod
    def next_version_number(self, model_id: str) -> int:
        """One more than the highest version number the model ever had."""

    @abstractmethod
    def insert_version(self, version: ModelVersion, files: list[ArtifactFile]) -> None:
        """Add a version with its files and lineage; ``Conflict`` if the number was taken meanwhile."""

    @abstractmethod
    def get_version(self, model_id: str, number: int) -> ModelVersion | None:
        """A version by model and number."""

    @abstractmethod
    def get_version_by_id(self, version_id: str) -> ModelVersion | None:
        """A version by id."""

    @abstractmethod
    def list_versions(self, model_id: str, states: frozenset[VersionState], offset: int,
                      limit: int) -> list[ModelVersion]:
        """Versions of a model in the given states, newest first."""

    @abstractmethod
    def update_version(self, version: ModelVersion) -> None:
        """Save state, signature and mutable metadata of a version."""

    @abstractmethod
    def list_files(self, version_id: str) -> list[ArtifactFile]:
        """Files of a version ordered by path."""

    @abstractmethod
    def update_file_key(self, file: ArtifactFile) -> None:
        """Save a re-wrapped data key of a file."""

    @abstractmethod
    def iter_files(self) -> Iterator[ArtifactFile]:
        """Every stored file (for key rotation)."""

    @abstractmethod
    def delete_files(self, version_id: str) -> None:
        """Forget the files of a deleted version (their objects become garbage)."""

    @abstractmethod
    def referenced_object_keys(self) -> set[str]:
        """Object keys any file row references."""

    # uploads
    @abstractmethod
    def insert_upload(self, upload: UploadSession) -> None:
        """Add an upload session."""

    @abstractmethod
    def get_upload(self, upload_id: str, *, for_update: bool = False) -> UploadSession | None:
        """An upload session (locked for update when asked, on databases that lock rows)."""

    @abstractmethod
    def update_upload(self, upload: UploadSession) -> None:
        """Save offset, state and lease."""

    @abstractmethod
    def claim_upload(self, upload_id: str, offset: int, lease_id: str, now: datetime, until: datetime) -> bool:
        """Compare-and-set: take the writer lease of an open session at ``offset``.

        Succeeds only when no other lease is live (none, or expired before ``now``); atomic on
        every backend, so two writers can never both hold a session.
        """

    @abstractmethod
    def renew_upload_lease(self, upload_id: str, lease_id: str, until: datetime) -> bool:
        """Extend a lease this writer still holds; False when it was lost (expired and taken)."""

    @abstractmethod
    def release_upload_lease(self, upload_id: str, lease_id: str) -> None:
        """Drop a lease if this writer still holds it."""

    # idempotency keys
    @abstractmethod
    def claim_idempotency_key(self, record: IdempotencyRecord) -> None:
        """Record a key; ``IdempotencyKeyTaken`` when it is already recorded (unique in the database).

        Concurrent claims of one key serialise on the unique constraint: the second waits for the
        first transaction and fails once it commits. After the error the transaction is unusable.
        """

    @abstractmethod
    def get_idempotency_key(self, operation: str, model_id: str, caller: str, key: str) -> IdempotencyRecord | None:
        """A recorded key, or None."""

    @abstractmethod
    def list_uploads(self, version_id: str) -> list[UploadSession]:
        """Upload sessions of a version."""

    @abstractmethod
    def open_upload_ids(self) -> set[str]:
        """Ids of uploads still open (their staging objects are live)."""

    # lineage
    @abstractmethod
    def get_lineage(self, version_id: str) -> Lineage:
        """Lineage recorded for a version."""

    @abstractmethod
    def versions_using(self, feature_view: str | None, training_set_digest: str | None,
                       projects: frozenset[str] | None) -> list[tuple[Model, ModelVersion]]:
        """Registered or archived versions whose lineage names the feature view or training set."""

    # aliases
    @abstractmethod
    def get_alias(self, model_id: str, name: str) -> Alias | None:
        """An alias of a model."""

    @abstractmethod
    def list_aliases(self, model_id: str) -> list[Alias]:
        """Aliases of a model by name."""

    @abstractmethod
    def aliases_pointing_to(self, version_id: str) -> list[Alias]:
        """Aliases that point at a version."""

    @abstractmethod
    def set_alias(self, alias: Alias) -> None:
        """Create or move an alias."""

    @abstractmethod
    def delete_alias(self, model_id: str, name: str) -> None:
        """Remove an alias."""

    @abstractmethod
    def insert_alias_change(self, change: AliasChange) -> None:
        """Record a move of an alias."""

    @abstractmethod
    def alias_history(self, model_id: str, alias: str) -> list[AliasChange]:
        """Moves of one alias, oldest first."""

    # change requests
    @abstractmethod
    def insert_change_request(self, cr: ChangeRequest) -> None:
        """Add a change request."""

    @abstractmethod
    def get_change_request(self, cr_id: str, *, for_update: bool = False) -> ChangeRequest | None:
        """A change request with its approvals."""

    @abstractmethod
    def update_change_request(self, cr: ChangeRequest) -> None:
        """Save state, checks, approvals and timestamps."""

    @abstractmethod
    def list_change_requests(self, model_id: str, state: ChangeState | None) -> list[ChangeRequest]:
        """Change requests of a model, newest first."""

    @abstractmethod
    def stale_change_requests(self, now: datetime) -> list[ChangeRequest]:
        """Open or approved requests whose expiry has passed."""

    # audit, keys, events
    @abstractmethod
    def insert_audit(self, record: AuditRecord) -> None:
        """Append an audit record."""

    @abstractmethod
    def list_audit(self, project: str, model_subject: str | None, limit: int) -> list[AuditRecord]:
        """Audit records of a project, newest first; with ``model_subject`` (``project/model``) only
        that model's and its versions' (``project/model@N``), never a model whose name merely starts so."""

    @abstractmethod
    def upsert_signing_key(self, key_id: str, public_pem: str, at: datetime) -> None:
        """Remember a public key the registry signs with (kept after rotation)."""

    @abstractmethod
    def signing_keys(self) -> dict[str, str]:
        """Every published public key: key id → PEM."""

    @abstractmethod
    def emit(self, type: str, subject: str, data: dict[str, Any], tenant: str | None) -> None:
        """Add an event to the outbox of this transaction."""


class MetadataStore(ABC):
    """Opens transactions over the registry's metadata."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[MetadataTx]:
        """A unit of work: commits on success, rolls back on error."""
