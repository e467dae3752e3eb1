"""Composition root of the gateway: the only public door of the platform."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi.openapi.utils import get_openapi

from mlp_core import bootstrap
from mlp_core.auth import TokenVerifier, build_verifier
from mlp_core.db import Database
from mlp_core.edge import Headers
from mlp_core.host import PUBLIC_PATHS, ServiceHost, ServiceParts, setup_process
from mlp_core.telemetry import tracing_exported
from mlp_gateway.audit import AuditLog, CheckpointSigner
from mlp_gateway.dpop import DpopVerifier, RedisReplayCache
from mlp_gateway.edge import GatewayRoutes
from mlp_gateway.exchange import TokenExchanger
from mlp_gateway.grpc_proxy import GatewayAuthInterceptor, GrpcProxy, proxy_registrar
from mlp_gateway.guard import GatewayGuard, GuardDeps, guard_factory
from mlp_gateway.metrics import GatewayCollector
from mlp_gateway.openapi import OpenApiAggregator
from mlp_gateway.proxy import ProxyApp, RouteTimeouts, build_proxy_router
from mlp_gateway.ratelimit import RateLimiter
from mlp_gateway.settings import GatewaySettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass
class Gateway:
    """The built gateway: its host and the parts tests and benchmarks look at."""

    host: ServiceHost
    audit: AuditLog
    openapi: OpenApiAggregator
    grpc_proxy: GrpcProxy
    routes: GatewayRoutes


def _exchanger(settings: GatewaySettings) -> TokenExchanger | None:
    if not settings.gateway_token_exchange:
        return None
    endpoint = settings.gateway_token_exchange_endpoint or settings.oidc_issuer.rstrip("/") + "/token"
    return TokenExchanger(token_endpoint=endpoint, client_id=settings.oidc_client_id,
                          client_secret=settings.oidc_client_secret)


def build_gateway(settings: GatewaySettings, *, verifier: TokenVerifier | None = None) -> Gateway:
    """Migrate the gateway's database and wire routing, checks, limits and audit into a host."""
    verifier = verifier or build_verifier(settings)
    built: dict[str, Any] = {}

    def build(settings: GatewaySettings, db: Database) -> ServiceParts:
        redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        limiter = RateLimiter(redis, rate_per_s=settings.gateway_rate_limit_per_s,
                              burst=settings.gateway_rate_limit_burst,
                              lease_size=settings.gateway_rate_limit_lease or None)
        audit = AuditLog(db, CheckpointSigner.from_state_dir(settings.state_dir),
                         checkpoint_every=settings.gateway_audit_checkpoint_every,
                         checkpoint_interval_s=settings.gateway_audit_checkpoint_interval_s,
                         queue_size=settings.gateway_audit_queue_size)
        exchanger = _exchanger(settings)
        grpc_proxy = GrpcProxy(settings.grpc_upstreams(), limiter=limiter, audit=audit, exchanger=exchanger,
                               default_timeout_s=settings.gateway_upstream_timeout_s,
                               method_upstreams=settings.grpc_method_upstreams())
        openapi = OpenApiAggregator(settings.upstreams(), base=lambda: _own_openapi(built["host"]),
                                    refresh_s=settings.gateway_openapi_refresh_s)
        deps = GuardDeps(dpop=DpopVerifier(RedisReplayCache(redis), max_age_s=settings.gateway_dpop_max_age_s),
                         limiter=limiter, audit=audit, max_body_bytes=settings.gateway_max_body_bytes,
                         max_token_bytes=settings.gateway_max_header_token_bytes,
                         public_url=settings.gateway_public_url)

        async def redis_probe() -> None:
            await redis.ping()

        edge_guard = GatewayGuard(None, verifier, tuple(PUBLIC_PATHS), deps=deps)  # type: ignore[arg-type]
        timeouts = RouteTimeouts(settings.gateway_upstream_timeout_s, settings.gateway_route_timeouts_s)
        routes = GatewayRoutes(edge_guard, settings.upstreams(), timeouts, exchanger=exchanger,
                               span=_edge_span if tracing_exported() else None,
                               route_upstreams=settings.route_upstreams())
        built.update(audit=audit, openapi=openapi, grpc_proxy=grpc_proxy, routes=routes)
        known = tuple(sorted(settings.upstreams()))
        return ServiceParts(
            title="MLP platform API",
            description="The public REST API of every platform service, through the gateway.",
            routers=[build_proxy_router(known)],
            grpc_registrars=[proxy_registrar(grpc_proxy)],
            probes={"redis": redis_probe},
            background=[audit.run, openapi.run],
            on_shutdown=[routes.close, grpc_proxy.close, openapi.aclose, redis.aclose,
                         *([exchanger.aclose] if exchanger is not None else [])],
            rest_auth_middleware=guard_factory(deps, inner=lambda app: ProxyApp(app, known)),
            grpc_auth_interceptor=GatewayAuthInterceptor(verifier, audit),
            collectors=[GatewayCollector(verifier, audit)],
            fast_routes=routes,  # the edge takes the public port; the app sits behind it
            fast_max_body_bytes=settings.gateway_max_body_bytes,
            fast_on_refused=routes.refused,  # 413s refused while reading are audited too
        )

    host = bootstrap.build_host(settings, MIGRATIONS_DIR, build, verifier=verifier)
    built["host"] = host
    host.app.openapi = built["openapi"].document  # type: ignore[method-assign]
    return Gateway(host=host, audit=built["audit"], openapi=built["openapi"],
                   grpc_proxy=built["grpc_proxy"], routes=built["routes"])


@contextlib.contextmanager
def _edge_span(name: str, headers: Headers) -> Iterator[None]:
    """A server span for a forwarded call (only when spans are exported); the service's spans become
    its children because the forwarded ``traceparent`` is replaced by this span's."""
    from opentelemetry import propagate, trace

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    tracer = trace.get_tracer("mlp_gateway.edge")
    with tracer.start_as_current_span(name, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER):
        out: dict[str, str] = {}
        propagate.inject(out)
        replaced = {k.encode() for k in out}
        headers[:] = [(k, v) for k, v in headers if k not in replaced]
        headers.extend((k.encode(), v.encode("latin-1")) for k, v in out.items())
        yield


def _own_openapi(host: ServiceHost) -> dict[str, Any]:
    app = host.app
    return get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)


def main() -> None:
    """Console entry point ``mlp-gateway``."""
    settings = GatewaySettings()
    setup_process(settings)
    build_gateway(settings).host.run()


if __name__ == "__main__":
    main()
