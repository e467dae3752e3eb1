"""What every part of the registry service shares: stores, keys, policy, clock, and lookups with tenancy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlp_core.errors import NotFound
from mlp_registry.crypto.aead import DEFAULT_SEGMENT_SIZE
from mlp_registry.crypto.keys import KeyProvider
from mlp_registry.crypto.signing import ManifestSigner
from mlp_registry.domain import validation
from mlp_registry.domain.caller import Caller
from mlp_registry.domain.models import AuditRecord, Model, ModelVersion, VersionState
from mlp_registry.domain.policies import ReleasePolicy
from mlp_registry.store.base import ArtifactStore, MetadataStore, MetadataTx

EVENT_PREFIX = "mlp.registry."


def utcnow() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)


@dataclass
class RegistryContext:
    """The collaborators of the registry's domain services, passed by constructor."""

    store: MetadataStore
    artifacts: ArtifactStore
    keys: KeyProvider
    signer: ManifestSigner
    policy: ReleasePolicy = field(default_factory=ReleasePolicy)
    segment_size: int = DEFAULT_SEGMENT_SIZE
    clock: Callable[[], datetime] = utcnow


def load_model(tx: MetadataTx, caller: Caller, project: str, name: str) -> Model:
    """A model the caller may see; another project's model is reported as absent (404)."""
    validation.name("project", project)
    validation.name("model", name)
    model = tx.get_model(project, name) if caller.can_access(project) else None
    if model is None:
        raise NotFound(f"model '{project}/{name}' does not exist or is not visible to you")
    return model


MAX_VERSION_NUMBER = 2**31 - 1


def load_version(tx: MetadataTx, model: Model, number: int,
                 states: frozenset[VersionState] = frozenset({VersionState.REGISTERED, VersionState.ARCHIVED}),
                 ) -> ModelVersion:
    """A version of ``model`` in one of ``states``."""
    # a number no version can have (the column is a 32-bit INTEGER) is simply not found, not a DB error
    version = tx.get_version(model.id, number) if 1 <= number <= MAX_VERSION_NUMBER else None
    if version is None or version.state not in states:
        raise NotFound(f"version {number} of model '{model.project}/{model.name}' does not exist"
                       + (f" in state {'/'.join(sorted(states))}" if version else ""))
    return version


def subject_of(model: Model, version: ModelVersion | None = None) -> str:
    """The event subject / audit subject of a model or version."""
    base = f"{model.project}/{model.name}"
    return f"{base}@{version.number}" if version else base


def record(ctx: RegistryContext, tx: MetadataTx, caller: Caller, action: str, model: Model,
           subject: str, detail: dict[str, Any], event: str | None = None) -> None:
    """Append an audit record and, when ``event`` is given, an outbox event, in the caller's transaction."""
    tx.insert_audit(AuditRecord(id=None, at=ctx.clock(), actor=caller.subject, action=action,
                                project=model.project, subject=subject, detail=detail))
    if event:
        data = {"project": model.project, "model": model.name, "model_id": model.id, "actor": caller.subject,
                **detail}
        tx.emit(EVENT_PREFIX + event, subject, data, model.project)
