"""tritonclient.grpc calls a tiny grpc.aio server built on our stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from mlp_protos.inference import open_inference_grpc_pb2 as pb
from mlp_protos.inference import open_inference_grpc_pb2_grpc as pb_grpc


class DoublingServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves one FP32 model, "double", that returns its input times two."""

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == "double")

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="mlp-serving", version="0.1.0", extensions=["model_repository"])

    async def ModelMetadata(self, request, context):
        if request.name != "double":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name="double",
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name="INPUT0", datatype="FP32", shape=[-1, 3])],
            outputs=[tensor(name="OUTPUT0", datatype="FP32", shape=[-1, 3])],
        )

    async def ModelConfig(self, request, context):
        config = pb.ModelConfig(name="double", platform="onnxruntime_onnx", max_batch_size=8)
        config.input.add(name="INPUT0", data_type=pb.TYPE_FP32, dims=[3])
        config.dynamic_batching.max_queue_delay_microseconds = 500
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, context):
        assert request.inputs[0].datatype == "FP32"
        data = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(request.inputs[0].shape)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="OUTPUT0", datatype="FP32", shape=list(data.shape))
        response.raw_output_contents.append((data * 2).astype("<f4").tobytes())
        return response


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(DoublingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.asyncio
async def test_tritonclient_calls_our_server(server_url: str) -> None:
    def client_calls() -> None:
        client = triton_grpc.InferenceServerClient(url=server_url)
        try:
            assert client.is_server_live()
            assert client.is_server_ready()
            assert client.is_model_ready("double")
            assert client.get_server_metadata().name == "mlp-serving"
            meta = client.get_model_metadata("double")
            assert meta.inputs[0].datatype == "FP32"
            config = client.get_model_config("double").config
            assert config.max_batch_size == 8
            assert config.dynamic_batching.max_queue_delay_microseconds == 500

            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            infer_input = triton_grpc.InferInput("INPUT0", [2, 3], "FP32")
            infer_input.set_data_from_numpy(x)
            result = client.infer(
                "double",
                [infer_input],
                outputs=[triton_grpc.InferRequestedOutput("OUTPUT0")],
                request_id="r-1",
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
            assert result.get_response().id == "r-1"
        finally:
            client.close()

    await asyncio.to_thread(client_calls)
