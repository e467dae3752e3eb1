"""``ServiceHost``: one FastAPI app and one gRPC server per service, with the same edges everywhere."""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from mlp_core.grpc import ErrorInterceptor, GrpcServer, ServicerRegistrar
from mlp_core.http import MetricsMiddleware, install_problem_handlers
from mlp_core.settings import CoreSettings
from mlp_core.telemetry import (
    GrpcMetrics,
    HttpMetrics,
    TraceContextMiddleware,
    configure_logging,
    configure_tracing,
    incoming_context,
    tracing_exported,
)

log = logging.getLogger(__name__)

#: A readiness probe: returns normally when the dependency answers, raises otherwise.
Probe = Callable[[], Awaitable[None] | None]
#: A long-running task started with the service; it must return when the event is set.
BackgroundTask = Callable[[asyncio.Event], Awaitable[None]]
if TYPE_CHECKING:
    from mlp_core.edge import Edge, Router
    from mlp_core.grpc_edge import GrpcHandler

T = TypeVar("T")

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


@dataclass
class ServiceParts:
    """What a service's composition root hands to the host."""

    title: str
    version: str = "0.1.0"
    description: str = ""
    routers: Sequence[APIRouter] = ()
    grpc_registrars: Sequence[ServicerRegistrar] = ()
    probes: dict[str, Probe] = field(default_factory=dict)
    background: Sequence[BackgroundTask] = ()
    on_shutdown: Sequence[Callable[[], Any]] = ()
    public_paths: Sequence[str] = PUBLIC_PATHS
    #: Replaces the standard ``AuthMiddleware``: called as ``factory(app, verifier=..., public_paths=...)``
    #: (the gateway's guard adds DPoP, RBAC, limits and audit); ``None`` keeps the standard one.
    rest_auth_middleware: Callable[..., Any] | None = None
    #: Replaces the standard ``AuthInterceptor(verifier)`` on the gRPC server; ``None`` keeps it.
    grpc_auth_interceptor: grpc.aio.ServerInterceptor | None = None
    #: The service's own Prometheus collectors, registered on the host's registry (``/metrics``).
    collectors: Sequence[Collector] = ()
    #: Hot routes answered by ``mlp_core.edge`` without the ASGI stack. With ``fast_port`` ``None`` the
    #: edge takes the main HTTP port and passes every other request to the app on a private Unix
    #: socket (the gateway). With a port, the app keeps the main port and the edge serves only these
    #: routes on its own port (the feature store's online reads); 0 there means "not served".
    fast_routes: Router | None = None
    fast_port: int | None = None
    fast_max_body_bytes: int = 10 * 1024 * 1024
    #: Told of each fast-route request refused while it was read (413), e.g. to audit it.
    fast_on_refused: Callable[..., Awaitable[None]] | None = None
    #: Unary gRPC methods the fast port also answers (``mlp_core.grpc_edge``, h2c), by full method path;
    #: the same methods stay on the gRPC server with its interceptors.
    fast_grpc_routes: dict[str, GrpcHandler] | None = None
    #: The fast port is shared with other processes (``SO_REUSEPORT``), e.g. the feature store's workers.
    fast_reuse_port: bool = False


class ServiceHost:
    """Builds the FastAPI app (health, readiness, metrics, docs, auth) and runs it beside gRPC."""

    def __init__(self, settings: CoreSettings, parts: ServiceParts, *,
                 registry: CollectorRegistry | None = None, verifier: Any | None = None,
                 grpc_interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.settings = settings
        self.parts = parts
        self.registry = registry or CollectorRegistry()
        for collector in parts.collectors:
            self.registry.register(collector)
        self.verifier = verifier if verifier is not None else _build_verifier(settings)
        self.grpc_metrics = GrpcMetrics(self.registry)
        self.http_metrics = HttpMetrics(self.registry)
        self.extra_interceptors = list(grpc_interceptors)
        self.grpc_server: GrpcServer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.edge: Edge | None = None
        self.fast_bound_port = 0
        self._app_server: Any = None
        self._app_task: asyncio.Task[None] | None = None
        self._socket_dir = ""
        self.app = self._build_app()

    # ---------------------------------------------------------------- REST
    def _build_app(self) -> FastAPI:
        # FastAPI's native OpenTelemetry server spans cost as much as the instrumentation below;
        # without an exporter they buy nothing (``_instrument_fastapi`` keeps the propagation).
        app = FastAPI(title=self.parts.title, version=self.parts.version,
                      description=self.parts.description, lifespan=self._lifespan,
                      telemetry=None if tracing_exported() else {"tracing": False})
        install_problem_handlers(app)
        app.include_router(self._whoami_router())
        for router in self.parts.routers:
            app.include_router(router)

        @app.get("/healthz", tags=["ops"], summary="Liveness: the process is up")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.settings.service_name}

        @app.get("/readyz", tags=["ops"], summary="Readiness: every dependency answers")
        async def readyz() -> JSONResponse:
            results = await self.check_readiness()
            ready = all(r == "ok" for r in results.values())
            return JSONResponse({"status": "ready" if ready else "not-ready", "checks": results},
                                status_code=200 if ready else 503)

        @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        if self.verifier is not None:
            from mlp_core.auth import AuthMiddleware

            app.add_middleware(self.parts.rest_auth_middleware or AuthMiddleware,  # type: ignore[arg-type]
                               verifier=self.verifier, public_paths=tuple(self.parts.public_paths))
        app.add_middleware(MetricsMiddleware, metrics=self.http_metrics,
                           service=self.settings.service_name)
        _instrument_fastapi(app)
        return app

    def _whoami_router(self) -> APIRouter:
        router = APIRouter(prefix=f"/api/v1/{self.settings.service_name}", tags=["ops"])

        @router.get("/whoami", summary="The caller as this service sees it (needs a valid token)")
        async def whoami(request: Request) -> dict[str, Any]:
            from mlp_core.auth import request_principal

            principal = request_principal(request)
            return {"service": self.settings.service_name, "subject": principal.subject,
                    "client_id": principal.client_id, "scopes": sorted(principal.scopes),
                    "projects": sorted(principal.projects)}

        return router

    async def check_readiness(self) -> dict[str, str]:
        """Run every probe with a short timeout; 'ok' or the reason it failed."""
        results: dict[str, str] = {}
        for name, probe in self.parts.probes.items():
            try:
                outcome = probe() if inspect.iscoroutinefunction(probe) else asyncio.to_thread(probe)
                if inspect.isawaitable(outcome):
                    await asyncio.wait_for(outcome, timeout=3.0)
                results[name] = "ok"
            except Exception as exc:  # a probe failure is a state, not an error of ours
                results[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        if self.settings.grpc_port:
            results["grpc"] = "ok" if self.grpc_server is not None else "failed: not started"
        return results

    # ---------------------------------------------------------------- lifecycle
    @asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.start_background()
        try:
            yield
        finally:
            await self.stop_background()

    async def start_background(self) -> None:
        """Start the gRPC server and every background task."""
        self._stop.clear()
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ErrorInterceptor(self.settings.service_name, self.grpc_metrics)]
        if self.verifier is not None:
            from mlp_core.auth import AuthInterceptor

            interceptors.insert(0, self.parts.grpc_auth_interceptor or AuthInterceptor(self.verifier))
        interceptors[1:1] = self.extra_interceptors
        if self.settings.grpc_port:
            _instrument_grpc()
            # Recording server spans only when they are exported; otherwise the caller's trace
            # context alone (the OpenTelemetry interceptor cost ~10 % of a small call's CPU).
            interceptors.insert(0, _grpc_server_tracing() if tracing_exported() else GrpcTraceContextInterceptor())
            self.grpc_server = GrpcServer(host=self.settings.http_host, port=self.settings.grpc_port,
                                          registrars=self.parts.grpc_registrars, interceptors=interceptors)
            await self.grpc_server.start()
            log.info("gRPC listening", extra={"port": self.grpc_server.port})
        for task in self.parts.background:
            self._tasks.append(asyncio.create_task(_supervise(task, self._stop)))

    async def stop_background(self) -> None:
        """Stop background tasks and the gRPC server."""
        self._stop.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for t in pending:
                t.cancel()
            self._tasks.clear()
        if self.grpc_server is not None:
            await self.grpc_server.stop()
            self.grpc_server = None
        for fn in self.parts.on_shutdown:
            result = fn()
            if inspect.isawaitable(result):
                await result

    async def serve(self) -> None:
        """Run REST (uvicorn, and the edge when the service has fast routes) and gRPC until SIGINT/SIGTERM
        (in the running loop; see ``run``)."""
        await self.start_http(self.settings.http_host, self.settings.http_port)
        try:
            await self.wait_http()
        finally:
            await self.stop_http()

    async def start_http(self, host: str, port: int, *, lifespan: Literal["on", "off"] = "on") -> int:
        """Start serving REST; returns the bound main port (``port=0`` picks a free one).

        ``lifespan="off"`` when the caller runs ``start_background``/``stop_background`` itself (tests).
        """
        import uvicorn

        parts = self.parts
        behind_edge = parts.fast_routes is not None and parts.fast_port is None
        where: dict[str, Any] = {"host": host, "port": port}
        if behind_edge:
            self._socket_dir = tempfile.mkdtemp(prefix="mlp-app-")  # 0700: only this user reaches the app
            where = {"uds": str(Path(self._socket_dir) / "app.sock")}
        # "auto" picks httptools when installed (uvicorn[standard]); the event loop is the caller's.
        # Behind the edge the app trusts the edge's X-Forwarded-For (only the edge can reach the socket).
        config = uvicorn.Config(self.app, **where, log_config=None, access_log=False, lifespan=lifespan,
                                http="auto", proxy_headers=behind_edge, forwarded_allow_ips="*" if behind_edge else None)
        server = uvicorn.Server(config)
        self._app_server = server
        self._app_task = asyncio.create_task(server.serve())
        while not server.started:
            if self._app_task.done():
                self._app_task.result()
                raise RuntimeError("the REST server stopped during start-up")
            await asyncio.sleep(0.01)
        bound = port if behind_edge else int(server.servers[0].sockets[0].getsockname()[1])
        if parts.fast_routes is not None and (behind_edge or parts.fast_port):
            from mlp_core.edge import Edge, EdgeConfig
            from mlp_core.grpc_edge import GrpcRoutes

            grpc_routes = None if not parts.fast_grpc_routes else GrpcRoutes(
                parts.fast_grpc_routes, service=self.settings.service_name, metrics=self.grpc_metrics,
                max_message_bytes=parts.fast_max_body_bytes)
            self.edge = Edge(EdgeConfig(parts.fast_routes, fallback_uds=where.get("uds", ""),
                                        service=self.settings.service_name, metrics=self.http_metrics,
                                        max_body_bytes=parts.fast_max_body_bytes,
                                        on_refused=parts.fast_on_refused, grpc=grpc_routes))
            edge_port = await self.edge.start(host, port if behind_edge else int(parts.fast_port or 0),
                                              reuse_port=parts.fast_reuse_port)
            if behind_edge:
                bound = edge_port
            else:
                self.fast_bound_port = edge_port
                log.info("fast routes listening", extra={"port": edge_port})
        return bound

    async def wait_http(self) -> None:
        """Until the REST server exits (SIGINT/SIGTERM reach uvicorn's handlers)."""
        if self._app_task is not None:
            await self._app_task

    async def stop_http(self) -> None:
        """Close the edge, then the app server."""
        if self.edge is not None:
            await self.edge.close()
            self.edge = None
        if self._app_server is not None:
            self._app_server.should_exit = True
        if self._app_task is not None:
            await self._app_task
            self._app_task = None
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = ""

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM on a fresh event loop: uvloop when installed, else asyncio."""
        run_loop(self.serve())


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (uvicorn[standard] brings it), else plain asyncio.

    ``uvicorn.Config(loop=...)`` only applies to ``uvicorn.run``; a host served with ``await serve()``
    runs on whatever loop its caller started, so processes start their loop through this function.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] is a dependency
        return asyncio.run(main)
    return uvloop.run(main)


async def _supervise(task: BackgroundTask, stop: asyncio.Event) -> None:
    """Restart a crashed background task with backoff until the service stops."""
    delay = 0.5
    while not stop.is_set():
        try:
            await task(stop)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting in %.1fs", delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)


def _build_verifier(settings: CoreSettings) -> Any:
    from mlp_core.auth import build_verifier

    return build_verifier(settings)


def _instrument_fastapi(app: FastAPI) -> None:
    """Server spans when spans are exported; otherwise only trace-context propagation.

    The OpenTelemetry ASGI instrumentation costs about as much CPU as a small endpoint itself, which
    buys nothing while no exporter is configured. Call ``configure_tracing`` (``setup_process``)
    before building the host, as ``bootstrap.run`` does, for the full instrumentation.
    """
    if not tracing_exported():
        app.add_middleware(TraceContextMiddleware)
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")


def _instrument_grpc() -> None:
    """Trace context on every outgoing grpc.aio call of the process (channels are patched globally).

    Not OpenTelemetry's ``GrpcAioInstrumentorClient``: its interceptor awaits the call's status
    before handing the call back, so ``call.cancel()`` and a cancelled caller task never reach the
    server (open-telemetry/opentelemetry-python-contrib#3271). Ours only adds ``traceparent`` (and
    ``tracestate``/``baggage``) of the current context to the metadata; the callee's server span is
    then the child of the caller's current span. No client span is recorded.
    """
    from mlp_core.grpc import install_trace_context_propagation

    install_trace_context_propagation()  # idempotent


_GRPC_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


class GrpcTraceContextInterceptor(grpc.aio.ServerInterceptor):
    """The gRPC twin of ``TraceContextMiddleware``: the call's ``traceparent`` metadata (or a fresh
    trace id) becomes the current context of the call's task; no span is recorded."""

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
        carrier = {k: v.encode("latin-1") if isinstance(v, str) else v
                   for k, v in metadata if k in _GRPC_TRACE_KEYS}
        # grpc.aio runs each call (interceptors and handler) in a task of its own, so the context
        # attached here lasts exactly as long as the call.
        otel_context.attach(incoming_context(carrier))
        return await continuation(handler_call_details)


def _grpc_server_tracing() -> grpc.aio.ServerInterceptor:
    """The OpenTelemetry server interceptor for this host's own gRPC server only.

    Not the global ``GrpcAioInstrumentorServer().instrument()``, which patches ``grpc.aio.server``
    for every server in the process (and breaks write-style streaming handlers of servers that are
    not ours, e.g. in tests).
    """
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor()
    return interceptor


def tcp_probe(address: str, timeout: float = 2.0) -> Probe:
    """A probe that opens a TCP connection to ``host:port`` (used for Kafka bootstrap servers)."""
    host, _, port = address.rpartition(":")

    def probe() -> None:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass

    return probe


def setup_process(settings: CoreSettings) -> None:
    """Logging and tracing for a service process; call once in ``main()``."""
    log_file = settings.log_dir / f"{settings.service_name}.log" if settings.log_dir else None
    configure_logging(settings.service_name, settings.log_level, log_file)
    configure_tracing(settings.service_name, settings.otlp_endpoint)
