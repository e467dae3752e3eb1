"""gRPC server helpers: health, reflection, auth, error translation and metrics on every server."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlp_core.errors import DomainError, InvalidArgument
from mlp_core.telemetry import GrpcMetrics

log = logging.getLogger(__name__)

#: Registers one servicer on a server and returns its full service name (for health and reflection).
ServicerRegistrar = Callable[[grpc.aio.Server], str]

HandlerWrapper = Callable[[Any, grpc.HandlerCallDetails], Any]


def wrap_method_handler(handler: grpc.RpcMethodHandler, wrap: HandlerWrapper,
                        details: grpc.HandlerCallDetails, *, raw_requests: bool = False) -> grpc.RpcMethodHandler:
    """Return ``handler`` with its behaviour replaced by ``wrap(behaviour, details)``, any arity.

    ``raw_requests``: the wrapped behaviour gets the request bytes and decodes them itself.
    """
    decode = None if raw_requests else handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, details), decode, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, details), decode, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, details), decode, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, details), decode, handler.response_serializer)


def decode_request(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """``decode(data)``, or INVALID_ARGUMENT naming the expected message (grpc.aio itself answers UNKNOWN
    with the exception's class and text when its deserializer fails)."""
    try:
        return decode(data)
    except Exception:
        kind = getattr(getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None), "full_name", "request")
        raise InvalidArgument(f"the request is not a valid {kind} message") from None


def _is_streaming_response(handler: grpc.RpcMethodHandler) -> bool:
    return bool(handler.response_streaming)


async def _decoded(decode: Callable[[bytes], Any], requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield decode_request(decode, raw)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into their gRPC status and hides unexpected exceptions (INTERNAL)."""

    def __init__(self, service: str, metrics: GrpcMetrics | None = None) -> None:
        self.service = service
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrap = self._wrap_stream if _is_streaming_response(handler) else self._wrap_unary
        decode = handler.request_deserializer
        if decode is None:
            return wrap_method_handler(handler, wrap, handler_call_details)
        # Requests are decoded inside the wrapper, so a malformed one is INVALID_ARGUMENT like any bad input.
        streaming = bool(handler.request_streaming)

        def decoding(behaviour: Any, details: grpc.HandlerCallDetails) -> Any:
            if streaming:
                return wrap(lambda raw, context: behaviour(_decoded(decode, raw), context), details)
            return wrap(lambda raw, context: behaviour(decode_request(decode, raw), context), details)

        return wrap_method_handler(handler, decoding, handler_call_details, raw_requests=True)

    def _record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(self.service, method, code.name).inc()
            self.metrics.latency.labels(self.service, method).observe(time.perf_counter() - started)

    async def _fail(self, exc: BaseException, method: str, started: float,
                    context: grpc.aio.ServicerContext) -> NoReturn:
        """Record the outcome of a failed call and abort it with the right status (never a stack trace)."""
        if isinstance(exc, DomainError):
            self._record(method, exc.grpc_code, started)
            await context.abort(exc.grpc_code, exc.detail)
        if isinstance(exc, grpc.aio.AbortError | grpc.RpcError):
            self._record(method, context.code() or grpc.StatusCode.UNKNOWN, started)
            raise exc
        log.error("unhandled error in %s", method, exc_info=exc)
        self._record(method, grpc.StatusCode.INTERNAL, started)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see server logs")
        raise exc  # abort() always raises; this keeps the contract if it ever returns

    def _wrap_unary(self, behaviour: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                result = await behaviour(request, context)
            except Exception as exc:
                await self._fail(exc, method, started, context)
            self._record(method, grpc.StatusCode.OK, started)
            return result

        return call

    def _wrap_stream(self, behaviour: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                async for item in behaviour(request, context):
                    yield item
            except Exception as exc:
                await self._fail(exc, method, started, context)
            self._record(method, grpc.StatusCode.OK, started)

        return call


class GrpcServer:
    """A grpc.aio server with the standard health service, reflection and the given interceptors."""

    def __init__(self, *, host: str, port: int, registrars: Sequence[ServicerRegistrar],
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 max_message_bytes: int = 64 * 1024 * 1024) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(interceptors=list(interceptors), options=options)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [registrar(self.server) for registrar in registrars]
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC port {host}:{port}")

    async def start(self) -> None:
        """Start serving and mark every service SERVING."""
        await self.server.start()
        for name in ["", *self.service_names]:
            await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.SERVING))

    async def stop(self, grace: float = 2.0) -> None:
        """Mark NOT_SERVING, then stop after a grace period for in-flight calls."""
        for name in ["", *self.service_names]:
            await _maybe_await(self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))
        await self.server.stop(grace)


async def _maybe_await(value: Any) -> None:
    if isinstance(value, Awaitable):
        await value


class TraceContextClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                                    grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds the current trace context to an outgoing call's metadata and hands the call straight back
    (it never awaits the call, so cancellation and deadlines behave as without an interceptor)."""

    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        from opentelemetry import propagate, trace

        if not trace.get_current_span().get_span_context().is_valid:
            return details
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata = grpc.aio.Metadata(*[(k, v) for k, v in (details.metadata or ()) if k not in carrier])
        for key, value in carrier.items():
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def install_trace_context_propagation() -> None:
    """Every grpc.aio channel made from now on in this process carries the trace context."""
    if getattr(grpc.aio.insecure_channel, "_mlp_traced", False):
        return
    interceptor = TraceContextClientInterceptor()

    def wrap(make: Any) -> Any:
        def channel(*args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
            return make(*args, interceptors=[interceptor, *(interceptors or ())], **kwargs)

        channel._mlp_traced = True  # type: ignore[attr-defined]
        channel.__doc__ = make.__doc__
        return channel

    grpc.aio.insecure_channel = wrap(grpc.aio.insecure_channel)
    grpc.aio.secure_channel = wrap(grpc.aio.secure_channel)
