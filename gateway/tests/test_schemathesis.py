"""Property-based run of schemathesis over the gateway's public OpenAPI: no answer may be a 5xx.

The gateway and a stand-in service run in real uvicorn servers on a background event loop; the
merged document (/openapi.json at the gateway) drives the cases. Bounded to a few examples per
operation so CI stays fast.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from gateway_support import gateway_settings, serve
from hypothesis import HealthCheck, given, settings
from upstream import Upstream, build_upstream

from mlp_core.broker import free_port
from mlp_core.settings import CoreSettings
from mlp_core.testing.tokens import TestIssuer
from mlp_gateway.main import build_gateway

REDIS_URL = "redis://127.0.0.1:6379/14"


class LiveStack:
    """Issuer, service and gateway on a private event loop in a thread."""

    def __init__(self, tmp: Path, pg_url: str) -> None:
        self.tmp, self.pg_url = tmp, pg_url
        self.issuer = TestIssuer().start()
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveStack:
        self._thread.start()
        if not self._ready.wait(60) or self._error:
            raise RuntimeError(f"stack did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        self.issuer.stop()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        core = CoreSettings(service_name="feature-store", grpc_port=free_port(), oidc_issuer=self.issuer.issuer)
        upstream = build_upstream(core, self.issuer.verifier(), Upstream())
        async with serve(upstream.app) as service_url:
            from gateway_support import Service

            svc = Service(service_url, f"127.0.0.1:{core.grpc_port}", Upstream(), upstream)
            gw_settings = gateway_settings(self.tmp, self.pg_url, REDIS_URL, self.issuer.issuer, svc,
                                           gateway_rate_limit_per_s=10_000, gateway_rate_limit_burst=10_000)
            gw = build_gateway(gw_settings, verifier=self.issuer.verifier())
            port = await gw.host.start_http("127.0.0.1", 0)  # the edge in front of the app, as in production
            try:
                await gw.openapi.refresh()
                self.url = f"http://127.0.0.1:{port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await gw.host.stop_http()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_url_module: str) -> Iterator[LiveStack]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with LiveStack(tmp_path_factory.mktemp("schemathesis"), pg_url_module) as live:
        yield live


def test_no_server_errors(stack: LiveStack) -> None:
    """Every operation of the merged document, with and without a token: never a 5xx, errors as problems."""
    token = stack.issuer.mint(scope="features:read features:write", projects=["p1"], lifetime_s=3600)
    api = schemathesis.openapi.from_url(stack.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert any(op.path.startswith("/api/v1/feature-store/") for op in operations)

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = case.call(headers=headers)
                assert response.status_code < 500, (
                    f"{case.method} {case.path}: {response.status_code} {response.text[:300]}")
                if response.status_code >= 400:
                    content_type = response.headers.get("content-type") or [""]
                    content_type = content_type[0] if isinstance(content_type, list) else content_type
                    assert content_type.startswith("application/problem+json"), (case.method, case.path)

        run()
