"""Domain objects ↔ protobuf messages of ``mlp.registry.v1`` (protobuf stops here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from mlp_protos.mlp.common.v1 import common_pb2
from mlp_protos.mlp.registry.v1 import registry_pb2 as pb
from mlp_registry.domain.models import (
    Alias,
    ArtifactFile,
    ChangeRequest,
    ChangeState,
    Model,
    ModelVersion,
    VersionState,
)

_VERSION_STATES: dict[VersionState, Any] = {VersionState.DRAFT: pb.VERSION_STATE_PENDING_UPLOAD,
                   VersionState.REGISTERED: pb.VERSION_STATE_READY,
                   VersionState.ARCHIVED: pb.VERSION_STATE_ARCHIVED}
_CR_STATES: dict[ChangeState, Any] = {ChangeState.OPEN: pb.CHANGE_REQUEST_STATE_OPEN, ChangeState.APPROVED: pb.CHANGE_REQUEST_STATE_APPROVED,
              ChangeState.REJECTED: pb.CHANGE_REQUEST_STATE_REJECTED,
              ChangeState.APPLIED: pb.CHANGE_REQUEST_STATE_APPLIED,
              ChangeState.EXPIRED: pb.CHANGE_REQUEST_STATE_CANCELLED}
CR_STATE_FROM_PB = {v: k for k, v in _CR_STATES.items() if k is not ChangeState.EXPIRED}


def ts(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp (None stays None)."""
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def model_pb(m: Model, latest: int = 0, aliases: dict[str, int] | None = None) -> pb.Model:
    """Protobuf form of a model."""
    return pb.Model(project=m.project, name=m.name, description=m.description, labels=m.tags, owner=m.created_by,
                    latest_version=latest, aliases=aliases or {}, create_time=ts(m.created_at))


def version_pb(m: Model, v: ModelVersion, files: list[ArtifactFile], aliases: list[str]) -> pb.ModelVersion:
    """Protobuf form of a version, with its manifest and signature."""
    params, extra = Struct(), Struct()
    params.update(v.params)
    extra.update({"attributes": v.attributes, "model_card": v.model_card})
    msg = pb.ModelVersion(
        project=m.project, model=m.name, version=v.number, state=_VERSION_STATES.get(v.state, 0),
        description=v.description, labels=v.tags, format=v.framework, metrics=v.metrics, params=params,
        lineage=pb.VersionLineage(training_run_id=v.lineage.training_run or "",
                                  feature_service=v.lineage.feature_service or "",
                                  code_version=v.lineage.code_version or "",
                                  inputs=[common_pb2.ObjectRef(project=m.project, kind="feature_view", name=fv)
                                          for fv in v.lineage.feature_views]),
        manifest=pb.ArtifactManifest(files=[pb.ArtifactFile(path=f.path, size_bytes=f.size,
                                                            digest=f"sha256:{f.sha256}") for f in files],
                                     digest=v.manifest_digest or ""),
        extra=extra, created_by=common_pb2.Actor(subject=v.created_by), create_time=ts(v.created_at),
        ready_time=ts(v.registered_at), aliases=sorted(aliases))
    if v.signature:
        sig = v.signature["signatures"][0]
        msg.signature.CopyFrom(pb.ArtifactSignature(key_id=sig["keyid"], algorithm="ed25519-dsse",
                                                    signature=_b64(sig["sig"])))
    if files:
        msg.encryption.CopyFrom(pb.EncryptionInfo(key_id=f"{files[0].key_id}/v{files[0].key_version}",
                                                  algorithm="AES-256-GCM-segmented"))
    return msg


def change_request_pb(cr: ChangeRequest, m: Model, number: int, previous: int) -> pb.ChangeRequest:
    """Protobuf form of a change request."""
    return pb.ChangeRequest(
        project=m.project, id=cr.id, model=m.name, kind=pb.CHANGE_KIND_SET_ALIAS, alias=cr.alias, version=number,
        previous_version=previous, state=_CR_STATES[cr.state], reason=cr.reason,
        requested_by=common_pb2.Actor(subject=cr.requested_by),
        reviews=[pb.Review(reviewer=common_pb2.Actor(subject=a.actor), approved=a.decision == "approved",
                           comment=a.comment, time=ts(a.at)) for a in cr.approvals],
        required_approvals=1,
        policy_checks=[pb.PolicyCheck(name=c.name, passed=c.passed,
                                      detail=c.detail + ("" if c.blocking else " (informational)"))
                       for c in cr.checks],
        create_time=ts(cr.created_at), update_time=ts(cr.decided_at or cr.created_at), apply_time=ts(cr.applied_at))


def alias_pb(m: Model, a: Alias, number: int) -> pb.Alias:
    """Protobuf form of an alias."""
    return pb.Alias(project=m.project, model=m.name, name=a.name, version=number, update_time=ts(a.updated_at))


def _b64(value: str) -> bytes:
    import base64

    return base64.b64decode(value)
