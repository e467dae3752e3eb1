"""gRPC side: a grpc.aio server interceptor that authenticates every non-public method."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from mlp_core.auth.principal import (
    Principal,
    current_principal,
    reset_current_principal,
    set_current_principal,
)
from mlp_core.auth.rest import bearer_token
from mlp_core.auth.verifier import TokenVerifier
from mlp_core.errors import Unauthenticated

DEFAULT_PUBLIC_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_PRINCIPAL_ATTR = "_mlp_principal"

Handler: TypeAlias = "grpc.RpcMethodHandler"


def principal_from_context(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The caller of this RPC: bound on the context where grpc allows it, else ``current_principal()``."""
    principal = getattr(context, _PRINCIPAL_ATTR, None)
    if isinstance(principal, Principal):
        return principal
    return current_principal()


async def verify_authorization(verifier: TokenVerifier, values: list[str]) -> Principal:
    """The caller named by a call's ``authorization`` metadata values (exactly one bearer token)."""
    if len(values) > 1:
        raise Unauthenticated("more than one authorization metadata entry")
    return await verifier.verify(bearer_token(values[0] if values else None))


def _bind(principal: Principal, context: Any) -> None:
    try:
        setattr(context, _PRINCIPAL_ATTR, principal)
    except AttributeError:  # pragma: no cover - Cython context without __dict__
        pass


def _wrap_unary_response(behavior: Callable[..., Awaitable[Any]], principal: Principal
                         ) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        _bind(principal, context)
        ctx = set_current_principal(principal)
        try:
            return await behavior(request, context)
        finally:
            reset_current_principal(ctx)

    return handler


def _wrap_stream_response(behavior: Callable[..., Any], principal: Principal) -> Callable[[Any, Any], Any]:
    if not inspect.isasyncgenfunction(behavior):  # servicer writes with context.write()
        return _wrap_unary_response(behavior, principal)

    async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
        _bind(principal, context)
        # Each RPC runs in its own task, so the binding cannot leak to another call; no reset across yields.
        set_current_principal(principal)
        async for item in behavior(request, context):
            yield item

    return handler


def _wrap(handler: Handler, principal: Principal) -> Handler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(handler.unary_unary, principal),
            handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(handler.stream_unary, principal),
            handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(handler.unary_stream, principal),
            handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream_response(handler.stream_stream, principal),
        handler.request_deserializer, handler.response_serializer)


def _refusal(handler: Handler | None, exc: Unauthenticated) -> Handler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.detail)

    async def abort_stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.detail)
        yield  # pragma: no cover - abort raises

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.stream_stream_rpc_method_handler(abort_stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the ``authorization: Bearer <token>`` metadata of every call except public methods.

    The servicer reads the caller with ``mlp_core.auth.current_principal()`` (or
    ``principal_from_context(context)``). Refusals end the call with ``UNAUTHENTICATED``.
    """

    def __init__(self, verifier: TokenVerifier,
                 public_methods_prefixes: Iterable[str] = DEFAULT_PUBLIC_METHOD_PREFIXES) -> None:
        self.verifier = verifier
        self.public_prefixes = tuple(public_methods_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Authenticate the call, then hand over to the next handler with the caller bound."""
        method = handler_call_details.method or ""
        if method.startswith(self.public_prefixes):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        try:
            principal = await verify_authorization(self.verifier, [
                str(v) for k, v in (handler_call_details.invocation_metadata or ()) if k == "authorization"])
        except Unauthenticated as exc:
            return _refusal(handler, exc)
        if handler is None:
            return None
        return _wrap(handler, principal)
