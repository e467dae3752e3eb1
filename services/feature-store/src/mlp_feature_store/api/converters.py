"""Protobuf ↔ domain conversion for the gRPC API. Protobuf stops here.

Online results travel columnar: each feature column is one typed list (``Int64List``, ``DoubleList`` ...)
built from a Python list in one call, so a response of 100 entities x 50 features does not create 5,000
``Value`` messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from mlp_core.errors import InvalidArgument
from mlp_feature_store.api.online_wire import TO_PB_TYPE as _TO_PB_TYPE
from mlp_feature_store.domain.models import Entity, FeatureService, FeatureView, ValueType
from mlp_protos.mlp.common.v1 import common_pb2, value_pb2
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb

_FROM_PB_TYPE = {v: k for k, v in _TO_PB_TYPE.items()}
_EXPECTATION_ARGS = ("min", "max", "values", "max_age_seconds", "query")


def dtype_from_pb(value: int, what: str) -> ValueType:
    """The domain type of a ``DataType``; INVALID_ARGUMENT for types the feature store does not hold."""
    try:
        return _FROM_PB_TYPE[value]  # type: ignore[index]
    except KeyError:
        name = common_pb2.DataType.Name(value) if value in common_pb2.DataType.values() else str(value)
        raise InvalidArgument(f"{what}: type {name} is not supported; use INT64, FLOAT64, STRING, BOOL or "
                              "TIMESTAMP") from None


def _ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def ts_to_us(ts: Timestamp) -> int:
    """Microseconds since the epoch of a protobuf Timestamp."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


# -- scalar values ------------------------------------------------------------------------------

def value_from_pb(v: value_pb2.Value) -> Any:
    """A Python value of a scalar ``Value`` (timestamps as aware datetimes); lists are refused."""
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    if kind == "timestamp_val":
        return datetime.fromtimestamp(ts_to_us(v.timestamp_val) / 1_000_000, UTC)
    if kind.endswith("_list_val") or kind == "bytes_val":
        raise InvalidArgument(f"value kind '{kind}' is not supported here; send scalars")
    return getattr(v, kind)


def columns_from_pb(columns: Mapping[str, value_pb2.RepeatedValue]) -> dict[str, list[Any]]:
    """Columnar rows: column name → Python values; every column must have the same length."""
    out = {name: [value_from_pb(v) for v in col.values] for name, col in columns.items()}
    if len({len(v) for v in out.values()}) > 1:
        raise InvalidArgument("every column must have the same number of values")
    return out


def rows_from_columns(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Columnar values as row dicts."""
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


# -- definitions --------------------------------------------------------------------------------

def entity_to_pb(project: str, e: Entity) -> pb.Entity:
    """A domain entity as a protobuf ``Entity``."""
    types = {k.dtype for k in e.join_keys}
    msg = pb.Entity(project=project, name=e.name, join_keys=[k.name for k in e.join_keys],
                    description=e.description, labels=e.tags)
    if len(types) == 1:
        msg.value_type = _TO_PB_TYPE[types.pop()]
    else:
        msg.join_key_types.update({k.name: _TO_PB_TYPE[k.dtype] for k in e.join_keys})
    return msg


def entity_from_pb(msg: pb.Entity) -> dict[str, Any]:
    """The definition spec of a protobuf ``Entity`` (validated by the registry)."""
    keys = []
    for name in msg.join_keys:
        dtype = msg.join_key_types.get(name, msg.value_type) or common_pb2.DATA_TYPE_STRING
        keys.append({"name": name, "dtype": dtype_from_pb(dtype, f"join key '{name}'").value})
    return {"name": msg.name, "description": msg.description, "tags": dict(msg.labels), "join_keys": keys}


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def feature_view_to_pb(project: str, v: FeatureView) -> pb.FeatureView:
    """A domain feature view as a protobuf ``FeatureView``."""
    msg = pb.FeatureView(
        project=project, name=v.name, entities=v.entities, online=v.online, description=v.description,
        labels=v.tags, owner=v.owner, revision=v.version, data_source=v.source or "",
        features=[pb.Feature(name=f.name, dtype=_TO_PB_TYPE[f.dtype], description=f.description, pii=f.pii,
                             labels=f.tags) for f in v.features],
        expectations=[pb.Expectation(kind=e.kind.value, feature=e.feature or "", severity="block", args=_struct(
            {k: getattr(e, k) for k in _EXPECTATION_ARGS if getattr(e, k) is not None})) for e in v.expectations])
    msg.governance.residency_region = v.residency_region
    msg.governance.pii = any(f.pii for f in v.features)
    if v.ttl_seconds:
        msg.ttl.CopyFrom(Duration(seconds=v.ttl_seconds))
    return msg


def feature_view_from_pb(msg: pb.FeatureView, version: int) -> dict[str, Any]:
    """The definition spec of a protobuf ``FeatureView`` at ``version``."""
    expectations = []
    for e in msg.expectations:
        args = MessageToDict(e.args)
        if "max_age_seconds" in args:
            args["max_age_seconds"] = int(args["max_age_seconds"])
        expectations.append({"kind": e.kind, **({"feature": e.feature} if e.feature else {}), **args})
    spec: dict[str, Any] = {
        "name": msg.name, "version": version, "entities": list(msg.entities), "description": msg.description,
        "tags": dict(msg.labels), "owner": msg.owner, "online": msg.online, "expectations": expectations,
        "features": [{"name": f.name, "dtype": dtype_from_pb(f.dtype, f"feature '{f.name}'").value,
                      "description": f.description, "pii": f.pii, "tags": dict(f.labels)} for f in msg.features],
    }
    if msg.HasField("ttl") and msg.ttl.seconds > 0:
        spec["ttl_seconds"] = msg.ttl.seconds
    if msg.governance.residency_region:
        spec["residency_region"] = msg.governance.residency_region
    if msg.data_source:
        spec["source"] = msg.data_source
    return spec


def feature_service_to_pb(project: str, s: FeatureService) -> pb.FeatureService:
    """A domain feature service; references 'view:f1', 'view:f2' group into one projection per view."""
    projections: dict[str, list[str]] = {}
    for ref in s.features:
        head, _, feature = ref.partition(":")
        projections.setdefault(head, [])
        if feature:
            projections[head].append(feature)
    return pb.FeatureService(project=project, name=s.name, description=s.description, labels=s.tags,
                             owner=s.owner, projections=[pb.FeatureViewProjection(feature_view=h, features=f)
                                                         for h, f in projections.items()])


def feature_service_from_pb(msg: pb.FeatureService) -> dict[str, Any]:
    """The definition spec of a protobuf ``FeatureService``."""
    refs: list[str] = []
    for p in msg.projections:
        refs += [f"{p.feature_view}:{f}" for f in p.features] or [p.feature_view]
    return {"name": msg.name, "description": msg.description, "tags": dict(msg.labels), "owner": msg.owner,
            "features": refs}


# -- online results -----------------------------------------------------------------------------

def job_to_pb(project: str, runs: list[dict[str, Any]]) -> pb.MaterializationJob:
    """Materialization runs (one per view) as one finished job."""
    first = runs[0]
    job = pb.MaterializationJob(project=project, id=first["id"], feature_views=[r["view"] for r in runs],
                                state=pb.JOB_STATE_SUCCEEDED, run_ids=[r["id"] for r in runs],
                                rows_written=sum(int(r["entities_written"]) for r in runs))
    if first.get("from_us") is not None:
        job.start_time.CopyFrom(_ts(first["from_us"]))
    if first.get("to_us") is not None:
        job.end_time.CopyFrom(_ts(first["to_us"]))
    job.create_time.CopyFrom(_ts(min(r["started_us"] for r in runs)))
    job.finish_time.CopyFrom(_ts(max(r["finished_us"] for r in runs)))
    return job
