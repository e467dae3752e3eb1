"""Our `inference` proto is wire compatible with tritonclient's (`inference.GRPCInferenceService`).

For every message reachable from the RPCs we offer, each of our fields must exist in
tritonclient's descriptor with the same number, name, type, label, message/enum type and oneof.
Messages of Triton's grpc_service.proto must match field for field; messages of its
model_config.proto may be a documented subset.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import service_pb2 as triton_pb2

from mlp_protos.inference import DESCRIPTOR_POOL
from mlp_protos.inference import open_inference_grpc_pb2 as ours_pb2

OUR_SERVICE = ours_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
TRITON_SERVICE = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
REQUIRED_METHODS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "ModelConfig",
    "ModelStatistics",
]


def reachable(desc: Descriptor, seen: dict[str, Descriptor]) -> dict[str, Descriptor]:
    if desc.full_name in seen:
        return seen
    seen[desc.full_name] = desc
    for nested in desc.nested_types:
        reachable(nested, seen)
    for field in desc.fields:
        if field.message_type is not None:
            reachable(field.message_type, seen)
    return seen


def our_messages() -> dict[str, Descriptor]:
    seen: dict[str, Descriptor] = {}
    for method in OUR_SERVICE.methods:
        reachable(method.input_type, seen)
        reachable(method.output_type, seen)
    return seen


def triton_message(full_name: str) -> Descriptor:
    return triton_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)


def field_signature(f: FieldDescriptor) -> tuple:
    return (
        f.number,
        f.name,
        f.type,
        f.is_repeated,
        f.message_type.full_name if f.message_type else None,
        f.enum_type.full_name if f.enum_type else None,
        f.containing_oneof.name if f.containing_oneof else None,
    )


def test_package_and_service_name() -> None:
    assert ours_pb2.DESCRIPTOR.package == "inference"
    assert OUR_SERVICE.full_name == TRITON_SERVICE.full_name == "inference.GRPCInferenceService"
    assert ours_pb2.DESCRIPTOR.pool is DESCRIPTOR_POOL


@pytest.mark.parametrize("name", REQUIRED_METHODS)
def test_methods_match(name: str) -> None:
    ours = OUR_SERVICE.methods_by_name[name]
    theirs = TRITON_SERVICE.methods_by_name[name]
    assert ours.input_type.full_name == theirs.input_type.full_name
    assert ours.output_type.full_name == theirs.output_type.full_name
    assert ours.client_streaming == theirs.client_streaming
    assert ours.server_streaming == theirs.server_streaming


def test_we_offer_only_triton_methods() -> None:
    assert {m.name for m in OUR_SERVICE.methods} == set(REQUIRED_METHODS)


@pytest.mark.parametrize("full_name", sorted(our_messages()))
def test_message_wire_compatible(full_name: str) -> None:
    ours = our_messages()[full_name]
    theirs = triton_message(full_name)
    if ours.GetOptions().map_entry:
        assert theirs.GetOptions().map_entry
    their_fields = {f.number: f for f in theirs.fields}
    for field in ours.fields:
        assert field.number in their_fields, f"{full_name}.{field.name} = {field.number} not in Triton"
        assert field_signature(field) == field_signature(their_fields[field.number])
    if theirs.file.name == "grpc_service.proto":
        # Not a reduced message: every Triton field must be there too.
        assert {f.number for f in ours.fields} == set(their_fields), full_name


def _enums() -> dict[str, EnumDescriptor]:
    out: dict[str, EnumDescriptor] = {}
    for msg in our_messages().values():
        for f in msg.fields:
            if f.enum_type is not None:
                out[f.enum_type.full_name] = f.enum_type
    return out


@pytest.mark.parametrize("full_name", sorted(_enums()))
def test_enums_match(full_name: str) -> None:
    ours = _enums()[full_name]
    theirs = triton_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
    assert {(v.name, v.number) for v in ours.values} == {(v.name, v.number) for v in theirs.values}


def test_core_messages_covered() -> None:
    names = set(our_messages())
    for required in [
        "inference.ModelInferRequest",
        "inference.ModelInferRequest.InferInputTensor",
        "inference.ModelInferRequest.InferRequestedOutputTensor",
        "inference.ModelInferResponse",
        "inference.ModelInferResponse.InferOutputTensor",
        "inference.InferParameter",
        "inference.InferTensorContents",
        "inference.ModelMetadataResponse.TensorMetadata",
        "inference.ModelStreamInferResponse",
        "inference.ModelConfig",
    ]:
        assert required in names


def test_bytes_cross_parse() -> None:
    """A request serialized by tritonclient's classes parses identically with ours and back."""
    theirs = triton_pb2.ModelInferRequest(model_name="m", model_version="2", id="r1")
    tensor = theirs.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
    tensor.parameters["binary_data_size"].int64_param = 12
    theirs.parameters["priority"].uint64_param = 1
    theirs.outputs.add(name="OUTPUT0")
    theirs.raw_input_contents.append(b"\x00" * 12)
    wire = theirs.SerializeToString(deterministic=True)
    ours = ours_pb2.ModelInferRequest.FromString(wire)
    assert ours.inputs[0].shape == [1, 3]
    assert ours.parameters["priority"].uint64_param == 1
    assert ours.SerializeToString(deterministic=True) == wire
