"""Domain objects ↔ protobuf messages of ``mlp.registry.v1`` (protobuf stops here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from mlp_core.errors import InvalidArgument
from mlp_protos.mlp.common.v1 import common_pb2
from mlp_protos.mlp.registry.v1 import registry_pb2 as pb
from mlp_registry.domain.lineage import LineageGraph, Node
from mlp_registry.domain.models import (
    Alias,
    ArtifactFile,
    ChangeRequest,
    ChangeState,
    FileSpec,
    Lineage,
    Model,
    ModelVersion,
    UploadSession,
    UploadState,
    VersionState,
)
from mlp_registry.domain.releases import SET_ALIAS
from mlp_registry.domain.uploads import VersionDraft

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
                                  inputs=_inputs(m, v.lineage)),
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


def _inputs(m: Model, lineage: Lineage) -> list[common_pb2.ObjectRef]:
    refs = [common_pb2.ObjectRef(project=m.project, kind="feature_view", name=fv) for fv in lineage.feature_views]
    if lineage.training_set_digest:
        refs.append(common_pb2.ObjectRef(project=m.project, kind="dataset", name=lineage.training_set_digest,
                                         digest=lineage.training_set_digest))
    return refs


def change_kind_from_pb(kind: int) -> str:
    """The kind a client asked for: unspecified means setting the alias, the only kind a change
    request can carry today (the others are refused, never silently turned into set-alias)."""
    if kind in (pb.CHANGE_KIND_UNSPECIFIED, pb.CHANGE_KIND_SET_ALIAS):
        return SET_ALIAS
    name = pb.ChangeKind.Name(kind) if kind in pb.ChangeKind.values() else f"value {kind}"
    raise InvalidArgument(f"change requests can only set an alias (CHANGE_KIND_SET_ALIAS); {name} is not "
                          "supported through a change request")


def ref_fields(ref: common_pb2.ObjectRef) -> dict[str, str]:
    """The set fields of an object reference (empty when the reference is not set)."""
    return {f.name: v for f, v in ref.ListFields() if isinstance(v, str) and v}


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


_UPLOAD_STATES: dict[UploadState, Any] = {UploadState.OPEN: pb.UPLOAD_STATE_OPEN,
                                          UploadState.COMPLETE: pb.UPLOAD_STATE_COMPLETE,
                                          UploadState.ABORTED: pb.UPLOAD_STATE_ABORTED}


def upload_pb(u: UploadSession) -> pb.UploadSession:
    """Protobuf form of an upload session (the offset is where to resume)."""
    return pb.UploadSession(id=u.id, path=u.path, size_bytes=u.size, digest=f"sha256:{u.sha256}", offset=u.offset,
                            state=_UPLOAD_STATES[u.state], update_time=ts(u.updated_at))


def _sha256_of(digest: str, path: str) -> str:
    algo, sep, value = digest.partition(":")
    if not sep or algo != "sha256":
        raise InvalidArgument(f"file {path!r}: digest must look like 'sha256:<64 hex digits>', got {digest!r}")
    return value


def draft_from_pb(request: pb.RegisterVersionRequest) -> VersionDraft:
    """A version draft from a RegisterVersion request (validation happens in the domain)."""
    v = request.version
    if not request.files:
        raise InvalidArgument("declare the version's files in `files` (path, size_bytes, digest 'sha256:<hex>')")
    files = [FileSpec(f.path, f.size_bytes, _sha256_of(f.digest, f.path)) for f in request.files]
    lineage = Lineage(training_run=v.lineage.training_run_id or None,
                      feature_service=v.lineage.feature_service or None,
                      code_version=v.lineage.code_version or None,
                      feature_views=[i.name for i in v.lineage.inputs if i.kind == "feature_view"],
                      training_set_digest=next((i.digest or i.name for i in v.lineage.inputs if i.kind == "dataset"),
                                               None))
    extra = MessageToDict(v.extra) if v.HasField("extra") else {}
    return VersionDraft(files=files, framework=v.format or "onnx", metrics=dict(v.metrics),
                        params=MessageToDict(v.params) if v.HasField("params") else {},
                        model_card=str(extra.get("model_card", "")), attributes=dict(extra.get("attributes", {})),
                        lineage=lineage, description=v.description, tags=dict(v.labels))


def node_from_pb(ref: common_pb2.ObjectRef, project: str) -> Node:
    """A lineage start node; the request's project applies when the reference names none."""
    return Node(ref.project or project, ref.kind, ref.name, ref.version, ref.digest)


def lineage_pb(graph: LineageGraph) -> pb.LineageGraph:
    """Protobuf form of a lineage graph."""
    def ref(n: Node) -> common_pb2.ObjectRef:
        return common_pb2.ObjectRef(project=n.project, kind=n.kind, name=n.name, version=n.version, digest=n.digest)

    return pb.LineageGraph(nodes=[ref(n) for n in graph.nodes],
                           edges=[pb.LineageEdge(source=ref(e.source), target=ref(e.target), relation=e.relation)
                                  for e in graph.edges])
