"""Byte-level gRPC proxy: every call is routed by its ``/package.Service/`` prefix to the owning service.

Messages are never decoded (identity serializers), so any unary or streaming method of
``inference.GRPCInferenceService`` and the platform's services passes through. The caller's bearer
token (or an exchanged one) and trace context go along; the remaining deadline is passed on, and a
cancelled call cancels the upstream call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from mlp_core.auth import Principal, TokenVerifier, bearer_token, current_principal
from mlp_core.auth.principal import set_current_principal
from mlp_core.errors import Unauthenticated
from mlp_core.grpc import wrap_method_handler
from mlp_gateway.audit import AuditEntry, AuditLog
from mlp_gateway.audit.writer import now_iso
from mlp_gateway.dpop import bound_thumbprint
from mlp_gateway.exchange import TokenExchanger
from mlp_gateway.policy import grpc_route
from mlp_gateway.ratelimit import RateLimiter

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Metadata a client may send through; everything identity-like is dropped, auth is set by us.
_FORWARD_METADATA = ("traceparent", "tracestate", "x-request-id", "grpc-accept-encoding")
_READ_VERBS = ("Get", "List", "Resolve", "Download", "Check", "Describe", "Watch", "Server", "Model")


def _metadata(details: Any) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in (getattr(details, "invocation_metadata", None) or ())]


class GatewayAuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every non-public call like ``AuthInterceptor`` and audits each refusal.

    DPoP is an HTTP mechanism; a DPoP-bound token presented over gRPC is refused.
    """

    def __init__(self, verifier: TokenVerifier, audit: AuditLog | None) -> None:
        self.verifier = verifier
        self.audit = audit

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Verify the token, then bind the caller for the handler; refuse with UNAUTHENTICATED."""
        method = details.method or ""
        if method.startswith(PUBLIC_PREFIXES):
            return await continuation(details)
        try:
            values = [v for k, v in _metadata(details) if k == "authorization"]
            if len(values) > 1:
                raise Unauthenticated("more than one authorization metadata entry")
            principal = await self.verifier.verify(bearer_token(values[0] if values else None))
            if bound_thumbprint(principal.claims) is not None:
                raise Unauthenticated("DPoP-bound tokens are accepted on the REST API only")
        except Unauthenticated as exc:
            await record_grpc(self.audit, None, method, grpc.StatusCode.UNAUTHENTICATED, exc.detail)
            return _refusal(exc.detail)
        handler = await continuation(details)
        if handler is None:
            return None
        return wrap_method_handler(handler, _binder(principal), details)


def _binder(principal: Principal) -> Callable[[Any, Any], Any]:
    def wrap(behaviour: Any, _details: Any) -> Any:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            set_current_principal(principal)  # each RPC runs in its own task: no leak to other calls
            async for item in behaviour(request, context):
                yield item

        return call

    return wrap


def _refusal(detail: str) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)
        yield b""  # pragma: no cover - abort raises

    return grpc.stream_stream_rpc_method_handler(abort)


async def record_grpc(audit: AuditLog | None, principal: Principal | None, method: str,
                      code: grpc.StatusCode, detail: str) -> None:
    """Audit one gRPC call (refusals and mutating methods)."""
    if audit is None:
        return
    await audit.record(AuditEntry(
        occurred_at=now_iso(), actor=principal.subject if principal else "anonymous",
        client_id=principal.client_id if principal else "", action=f"RPC {method}"[:512],
        object=method[:1024], outcome="ok" if code == grpc.StatusCode.OK else (
            "refused" if code in _REFUSED_CODES else "failed"),
        status=code.value[0], transport="grpc", trace_id="", detail=detail[:500]))


_REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED})


class GrpcProxy(grpc.GenericRpcHandler):
    """Generic handler: routes each known method to the owning service's gRPC address."""

    def __init__(self, upstreams: dict[str, str], *, limiter: RateLimiter | None, audit: AuditLog | None,
                 exchanger: TokenExchanger | None = None, default_timeout_s: float = 30.0,
                 method_upstreams: dict[str, str] | None = None) -> None:
        self.upstreams = upstreams
        #: methods a service serves on another address (the feature store's fast port), by full method path
        self.method_upstreams = method_upstreams or {}
        self.limiter = limiter
        self.audit = audit
        self.exchanger = exchanger
        self.default_timeout_s = default_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """A bytes-in, bytes-out stream-stream handler for routed methods (any cardinality on the wire)."""
        method = handler_call_details.method or ""
        route = grpc_route(method)
        if route is None or route[0] not in self.upstreams:
            return None
        service, scope = route
        address = self.method_upstreams.get(method) or self.upstreams[service]
        return grpc.stream_stream_rpc_method_handler(self._handler(method, service, scope, address))

    def channel(self, address: str) -> grpc.aio.Channel:
        """One pooled channel per upstream address (HTTP/2 multiplexes every call)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)])
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Close every upstream channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _handler(self, method: str, service: str, scope: str, address: str) -> Callable[..., AsyncIterator[bytes]]:
        async def proxy(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
                        ) -> AsyncIterator[bytes]:
            principal = current_principal()
            if scope and not principal.has_scope(scope):
                await self._refuse(context, principal, method, grpc.StatusCode.PERMISSION_DENIED,
                                   f"this method needs the scope '{scope}'")
            if self.limiter is not None:
                decision = await self.limiter.check(principal.client_id or principal.subject)
                if not decision.allowed:
                    context.set_trailing_metadata((("retry-after", str(decision.retry_after_s)),))
                    await self._refuse(context, principal, method, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"rate limit reached; retry after {decision.retry_after_s} s")
            token = principal.token
            if self.exchanger is not None:
                token = await self.exchanger.exchange(token, service)
            metadata = [("authorization", f"Bearer {token}")]
            metadata += [(k, str(v)) for k, v in (context.invocation_metadata() or ()) if k in _FORWARD_METADATA]
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None and remaining < 1e9 else self.default_timeout_s
            call = self.channel(address).stream_stream(method)(requests, metadata=metadata, timeout=timeout)
            # A client that cancels ends our RPC without always cancelling this task: stop upstream too.
            context.add_done_callback(lambda _ctx: call.cancel())
            code, detail = grpc.StatusCode.OK, ""
            try:
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as exc:
                code, detail = exc.code(), exc.details() or ""
                if code == grpc.StatusCode.UNKNOWN or code == grpc.StatusCode.INTERNAL:
                    detail = f"the {service} service failed to handle the call"
                await context.abort(code, detail)
            finally:
                if not call.done():
                    call.cancel()  # the client went away or the deadline passed: stop the upstream call
                if not _is_read(method) or code in _REFUSED_CODES:
                    await record_grpc(self.audit, principal, method, code, detail)

        return proxy

    async def _refuse(self, context: grpc.aio.ServicerContext[Any, Any], principal: Principal, method: str,
                      code: grpc.StatusCode, detail: str) -> None:
        await record_grpc(self.audit, principal, method, code, detail)
        await context.abort(code, detail)


def _is_read(method: str) -> bool:
    return method.rsplit("/", 1)[-1].startswith(_READ_VERBS)


def proxy_registrar(proxy: GrpcProxy) -> Callable[[grpc.aio.Server], str]:
    """A ``ServicerRegistrar`` that installs the proxy; health reports the inference service name."""

    def register(server: grpc.aio.Server) -> str:
        server.add_generic_rpc_handlers((proxy,))
        return "inference.GRPCInferenceService"

    return register

