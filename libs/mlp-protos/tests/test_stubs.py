"""Every generated module imports, and the platform protos follow the shared conventions."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

import mlp_protos

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto"
DOMAINS = ["featurestore", "registry", "training", "experiments", "monitoring"]


def all_module_names() -> list[str]:
    return sorted(
        m.name for m in pkgutil.walk_packages(mlp_protos.__path__, prefix="mlp_protos.") if not m.ispkg
    )


def test_every_proto_has_generated_modules() -> None:
    modules = set(all_module_names())
    for proto in PROTO_ROOT.rglob("*.proto"):
        base = "mlp_protos." + ".".join(proto.relative_to(PROTO_ROOT).with_suffix("").parts)
        assert f"{base}_pb2" in modules
        assert f"{base}_pb2_grpc" in modules
        pyi = REPO / "libs/mlp-protos/src" / (base.replace(".", "/") + "_pb2.pyi")
        assert pyi.exists()


@pytest.mark.parametrize("name", all_module_names())
def test_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    if name.endswith("_pb2"):
        assert isinstance(module.DESCRIPTOR, FileDescriptor)


def test_documented_import_paths() -> None:
    from mlp_protos.inference import open_inference_grpc_pb2, open_inference_grpc_pb2_grpc
    from mlp_protos.mlp.registry.v1 import registry_pb2, registry_pb2_grpc

    assert registry_pb2.Model(project="p", name="m").project == "p"
    assert hasattr(registry_pb2_grpc, "RegistryServiceServicer")
    assert hasattr(registry_pb2_grpc, "add_RegistryServiceServicer_to_server")
    assert open_inference_grpc_pb2.ModelInferRequest.__module__ == open_inference_grpc_pb2.__name__
    assert hasattr(open_inference_grpc_pb2_grpc, "GRPCInferenceServiceStub")


def _services() -> list[tuple[str, MethodDescriptor]]:
    out = []
    for domain in DOMAINS:
        mod = importlib.import_module(f"mlp_protos.mlp.{domain}.v1.{domain}_pb2")
        assert mod.DESCRIPTOR.package == f"mlp.{domain}.v1"
        assert len(mod.DESCRIPTOR.services_by_name) == 1
        for service in mod.DESCRIPTOR.services_by_name.values():
            out.extend((domain, m) for m in service.methods)
    return out


def _has_project(message, depth: int = 0) -> bool:
    if "project" in message.fields_by_name:
        return True
    if depth >= 1:
        return False
    return any(f.message_type is not None and _has_project(f.message_type, depth + 1) for f in message.fields)


# Requests whose object is named by an id that already belongs to one project (the server checks the
# caller may see that project): an upload session's chunks carry only the session id and bytes.
SCOPED_BY_ID = {"mlp.registry.v1.RegistryService.UploadArtifact", "mlp.registry.v1.RegistryService.GetUploadSession"}


@pytest.mark.parametrize("method", [m for _, m in _services()], ids=lambda m: m.full_name)
def test_requests_carry_project(method: MethodDescriptor) -> None:
    if method.full_name in SCOPED_BY_ID:
        fields = method.input_type.fields_by_name
        assert "upload_id" in fields or "start" in fields, f"{method.full_name} names no upload session"
        return
    assert _has_project(method.input_type), f"{method.input_type.full_name} has no project"


@pytest.mark.parametrize(
    "method",
    [m for _, m in _services() if m.name.startswith(("List", "Search"))],
    ids=lambda m: m.full_name,
)
def test_list_methods_page(method: MethodDescriptor) -> None:
    req, resp = method.input_type.fields_by_name, method.output_type.fields_by_name
    assert req["page_size"].type == req["page_size"].TYPE_INT32
    assert req["page_token"].type == req["page_token"].TYPE_STRING
    assert "next_page_token" in resp


def test_every_rpc_is_documented() -> None:
    for proto in PROTO_ROOT.rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*rpc\s", line):
                assert lines[i - 1].strip().startswith("//"), f"{proto}:{i + 1} rpc without a comment"


def test_expected_rpcs_exist() -> None:
    names = {(d, m.name) for d, m in _services()}
    expected = {
        "featurestore": "CreateEntity GetEntity ListEntities DeleteEntity CreateFeatureView GetFeatureView "
        "ListFeatureViews DeleteFeatureView CreateFeatureService GetFeatureService ListFeatureServices "
        "DeleteFeatureService GetOnlineFeatures PushFeatures IngestRows MaterializeRange EraseEntity",
        "registry": "CreateModel GetModel ListModels RegisterVersion UploadArtifact GetVersion ListVersions "
        "DownloadArtifact CreateChangeRequest ApproveChangeRequest RejectChangeRequest ApplyChangeRequest "
        "GetChangeRequest ListChangeRequests GetAlias ResolveAlias GetLineage GetSigningKeys",
        "training": "SubmitRun GetRun ListRuns CancelRun StreamRunLogs LogMetrics SearchRuns",
        "experiments": "CreateExperiment GetExperiment ListExperiments StartExperiment PauseExperiment "
        "ConcludeExperiment GetAssignment RecordOutcome GetResults",
        "monitoring": "GetDriftReport ListAlerts CreateAlertPolicy GetProfile",
    }
    for domain, rpcs in expected.items():
        for rpc in rpcs.split():
            assert (domain, rpc) in names, f"{domain}.{rpc} missing"


def test_streaming_shapes() -> None:
    methods = {m.full_name: m for _, m in _services()}
    upload = methods["mlp.registry.v1.RegistryService.UploadArtifact"]
    assert upload.client_streaming and not upload.server_streaming
    download = methods["mlp.registry.v1.RegistryService.DownloadArtifact"]
    assert download.server_streaming and not download.client_streaming
    logs = methods["mlp.training.v1.TrainingService.StreamRunLogs"]
    assert logs.server_streaming
    ingest = methods["mlp.featurestore.v1.FeatureStoreService.IngestRows"]
    assert ingest.client_streaming


def test_value_oneof_and_statuses() -> None:
    from mlp_protos.mlp.common.v1 import common_pb2, value_pb2
    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as fs

    oneof = value_pb2.Value.DESCRIPTOR.oneofs_by_name["val"]
    names = {f.name for f in oneof.fields}
    assert {
        "int64_val",
        "double_val",
        "string_val",
        "bool_val",
        "bytes_val",
        "timestamp_val",
        "float_val",
        "int32_val",
        "null_val",
    } <= names
    for t in ["INT64", "FLOAT64", "STRING", "BOOL", "TIMESTAMP", "BYTES", "FLOAT32", "INT32"]:
        assert common_pb2.DataType.Value(f"DATA_TYPE_{t}") > 0
    for s in ["PRESENT", "NOT_FOUND", "EXPIRED", "NULL_VALUE"]:
        assert fs.FeatureStatus.Value(f"FEATURE_STATUS_{s}") > 0

    req = fs.GetOnlineFeaturesRequest(project="p", feature_service="churn")
    req.entities["customer_id"].values.add().int64_val = 42
    req.max_staleness.FromSeconds(60)
    assert fs.GetOnlineFeaturesRequest.FromString(req.SerializeToString()) == req
