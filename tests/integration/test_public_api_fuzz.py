"""Schemathesis over the REAL public REST API: dev issuer, feature store, registry and gateway as processes.

Every process is started the way ``mlp up`` starts it (``python -m ...`` with ``MLP_*`` env), but on
free ports, with a fresh PostgreSQL database each, a dedicated Redis db and the session's Tansu
broker. The merged ``/openapi.json`` of the gateway drives the cases; each feature-store and registry
operation gets a few examples with an admin token, under an overall time budget. Online reads reach
the feature store's fast port (``mlp_core.edge``), as under ``mlp up``. Checks: never a 5xx,
4xx answers are ``application/problem+json``, and no answer leaks a stack trace. The other upstreams
point at closed ports: their operations are not fuzzed (one call proves they answer a 503 problem).
Process logs are under the test's tmp folder; their tails are shown when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.result import Ok

from mlp_core.broker import free_port
from mlp_core.testing.fixtures import REDIS_BASE_URL, pg_database

pytestmark = pytest.mark.integration

REDIS_URL = f"{REDIS_BASE_URL}/13"  # db 13: not the gateway suite's 14, not the launcher's 0
FUZZED = ("/api/v1/feature-store/", "/api/v1/registry/")
MAX_EXAMPLES = int(os.environ.get("MLP_FUZZ_MAX_EXAMPLES", "10"))
FUZZ_BUDGET_S = float(os.environ.get("MLP_FUZZ_BUDGET_S", "45"))
STACK_TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages/")


def _tail(path: Path, lines: int = 15, width: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(line[:width] for line in text.splitlines()[-lines:])


class Stack:
    """The platform processes this test started; ``stop()`` ends each of them (by pid, process group)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.tmp / f"{name}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.tmp, start_new_session=True)
        self.procs[name], self.logs[name] = proc, log_path

    def wait(self, name: str, ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}\n{self.tails()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready within {timeout_s:.0f}s\n{self.tails()}")

    def tails(self) -> str:
        return "\n".join(f"----- {name} ({path}) -----\n{_tail(path)}" for name, path in self.logs.items())

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _has_both_services(url: str) -> bool:
    try:
        paths = httpx.get(url, timeout=2.0).json().get("paths", {})
    except (httpx.HTTPError, ValueError):
        return False
    return all(any(p.startswith(prefix) for p in paths) for prefix in FUZZED)


def _client_secrets(state_dir: Path) -> dict[str, str]:
    data = json.loads((state_dir / "issuer" / "clients.json").read_text())
    clients = data.get("clients", data)
    return {cid: str(c["client_secret"]) for cid, c in clients.items()}


class Platform:
    def __init__(self, stack: Stack, gateway: str, token: str) -> None:
        self.stack, self.gateway, self.token = stack, gateway, token


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("public-api-fuzz")
    flush = redis.Redis.from_url(REDIS_URL)
    flush.flushdb()
    stack = Stack(tmp)
    try:
        with pg_database() as fs_db, pg_database() as registry_db, pg_database() as gateway_db:
            try:
                yield _start(stack, tmp, kafka_bootstrap, fs_db, registry_db, gateway_db)
            finally:
                stack.stop()  # before the databases are dropped
    finally:
        stack.stop()
        flush.flushdb()
        flush.close()


def _start(stack: Stack, tmp: Path, kafka: str, fs_db: str, registry_db: str, gateway_db: str) -> Platform:
    issuer_port = free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    issuer_dir = tmp / "issuer-state"
    stack.start("issuer", ["-m", "mlp_core.devissuer", "--port", str(issuer_port), "--state-dir",
                           str(issuer_dir), "--issuer", issuer], dict(os.environ))
    stack.wait("issuer", lambda: _ok(f"{issuer}/.well-known/openid-configuration"))
    secrets = _client_secrets(issuer_dir)

    closed = {name: f"http://127.0.0.1:{free_port()}" for name in ("training", "serving", "experiments",
                                                                     "monitoring")}
    ports: dict[str, tuple[int, int]] = {}
    online_port = free_port()  # the feature store's fast online port, used by the gateway as under `mlp up`
    for name, module, db_url in (("feature-store", "mlp_feature_store", fs_db),
                                 ("registry", "mlp_registry", registry_db),
                                 ("gateway", "mlp_gateway", gateway_db)):
        http_port, grpc_port = free_port(), free_port()
        ports[name] = (http_port, grpc_port)
        state_dir = tmp / f"{name}-state"
        state_dir.mkdir()
        env = dict(os.environ) | {
            "MLP_MODE": "local",
            "MLP_STATE_DIR": str(state_dir),
            "MLP_DATABASE_URL": db_url,
            "MLP_REDIS_URL": REDIS_URL,
            "MLP_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "MLP_KAFKA_MAX_POLL_INTERVAL_MS": "5000",
            "MLP_OIDC_ISSUER": issuer,
            "MLP_OIDC_AUDIENCE": "mlp",
            "MLP_OIDC_CLIENT_ID": f"svc-{name}",
            "MLP_OIDC_CLIENT_SECRET": secrets[f"svc-{name}"],
            "MLP_HTTP_PORT": str(http_port),
            "MLP_GRPC_PORT": str(grpc_port),
        }
        if name == "feature-store":
            env["MLP_FEATURE_STORE_ONLINE_PORT"] = str(online_port)
        if name == "gateway":
            env["MLP_GATEWAY_UPSTREAM_FEATURE_STORE_ONLINE"] = f"http://127.0.0.1:{online_port}"
            for service, (h, g) in ((s, ports[s]) for s in ("feature-store", "registry")):
                key = service.upper().replace("-", "_")
                env[f"MLP_GATEWAY_UPSTREAM_{key}"] = f"http://127.0.0.1:{h}"
                env[f"MLP_GATEWAY_GRPC_UPSTREAM_{key}"] = f"127.0.0.1:{g}"
            for service, url in closed.items():
                key = service.upper()
                env[f"MLP_GATEWAY_UPSTREAM_{key}"] = url
                env[f"MLP_GATEWAY_GRPC_UPSTREAM_{key}"] = url.removeprefix("http://")
            env |= {"MLP_GATEWAY_RATE_LIMIT_PER_S": "100000", "MLP_GATEWAY_RATE_LIMIT_BURST": "100000"}
            for service in ("feature-store", "registry"):  # so the gateway's first OpenAPI merge has both
                stack.wait(service, partial(_ok, f"http://127.0.0.1:{ports[service][0]}/readyz"), 90)
        stack.start(name, ["-m", module], env)
    stack.wait("gateway", lambda: _ok(f"http://127.0.0.1:{ports['gateway'][0]}/readyz"), 90)
    gateway = f"http://127.0.0.1:{ports['gateway'][0]}"
    stack.wait("gateway", lambda: _has_both_services(f"{gateway}/openapi.json"), 30)

    reply = httpx.post(f"{issuer}/token", data={"grant_type": "client_credentials"},
                       auth=("mlp-admin", secrets["mlp-admin"]), timeout=5)
    reply.raise_for_status()
    return Platform(stack, gateway, reply.json()["access_token"])


def _content_type(response: Any) -> str:
    value = response.headers.get("content-type") or ""
    return str(value[0] if isinstance(value, list) else value)


def _check(case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path}"
    body = response.text or ""
    assert response.status_code < 500, f"{where}: {response.status_code} {body[:500]}"
    leaked = [m for m in STACK_TRACE_MARKERS if m in body]
    assert not leaked, f"{where}: stack trace in the answer ({leaked}): {body[:500]}"
    if response.status_code >= 400:
        assert _content_type(response).startswith("application/problem+json"), (
            f"{where}: {response.status_code} as {_content_type(response)!r}: {body[:300]}")


def test_public_api_has_no_server_errors(platform: Platform) -> None:
    """Feature-store and registry operations through the gateway: no 5xx, problems, no stack traces."""
    try:
        _fuzz(platform)
    except Exception as exc:
        raise AssertionError(f"{exc}\n\nprocess logs:\n{platform.stack.tails()}") from exc


def _fuzz(platform: Platform) -> None:
    headers = {"Authorization": f"Bearer {platform.token}"}
    # the unfuzzed upstreams are down on purpose: a 503 problem, not a crash
    down = httpx.get(f"{platform.gateway}/api/v1/training/whoami", headers=headers, timeout=10)
    assert down.status_code == 503 and _content_type(down).startswith("application/problem+json"), down.text

    api = schemathesis.openapi.from_url(platform.gateway + "/openapi.json")
    operations = []
    for result in api.get_all_operations():
        if not isinstance(result, Ok):
            raise result.err()
        if result.ok().path.startswith(FUZZED):
            operations.append(result.ok())
    for prefix in FUZZED:
        assert sum(op.path.startswith(prefix) for op in operations) >= 3, f"too few operations under {prefix}"

    deadline = time.monotonic() + FUZZ_BUDGET_S
    failures: list[str] = []
    fuzzed = calls = 0
    for operation in operations:
        if time.monotonic() > deadline:
            break
        fuzzed += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=not os.environ.get("MLP_FUZZ_RANDOM"),
                  phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)  # no shrinking: bounded
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            _check(case, case.call(headers=headers, timeout=15))

        try:
            run()
        except Exception as exc:  # a failed check, or Hypothesis' report of one that did not replay
            while isinstance(exc, ExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    print(f"{calls} calls over {fuzzed} operations")
    assert not failures, "\n".join(failures)
    assert fuzzed == len(operations), f"time budget ran out after {fuzzed} of {len(operations)} operations"
