"""Added latency of the gateway for an authenticated call, against a direct call to the same service.

Real uvicorn processes on loopback: one service (ServiceHost with token checks) and the gateway in
front of it (token check, scope, Redis rate limit, forwarding). A small asyncio load generator with
16 concurrent workers alternates rounds of direct and gateway calls so both see the same machine
noise. Bounded: ``--requests`` per target (default 3,000) and ``--max-seconds`` overall.

    .venv/bin/python benchmarks/gateway/run.py [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mlp_core.broker import free_port
from mlp_core.testing.tokens import TestIssuer

HERE = Path(__file__).parent
PATH = "/api/v1/feature-store/ping"


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=out)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready in {timeout_s}s; see {log}")


async def measure(client: httpx.AsyncClient, url: str, headers: dict[str, str], count: int,
                  concurrency: int) -> list[float]:
    latencies: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            reply = await client.get(url, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                raise SystemExit(f"{url} answered {reply.status_code}: {reply.text[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(direct: str, gateway: str, token: str, total: int, concurrency: int, rounds: int,
               max_seconds: float) -> tuple[list[float], list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: dict[str, list[float]] = {"direct": [], "gateway": []}
    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        for base in (direct, gateway):  # warm-up: connections, JWKS, code paths
            await measure(client, base + PATH, headers, 300, concurrency)
        for _ in range(rounds):
            for name, base in (("direct", direct), ("gateway", gateway)):
                results[name] += await measure(client, base + PATH, headers, total // rounds, concurrency)
            if time.monotonic() - started > max_seconds:
                break
    return results["direct"], results["gateway"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per target")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=120)
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlp-bench-gw-"))
    issuer = TestIssuer().start()
    token = issuer.mint(scope="features:read", projects=["bench"], lifetime_s=3600, client_id="bench")
    svc_port, gw_port, gw_grpc = free_port(), free_port(), free_port()
    common = {"MLP_OIDC_ISSUER": issuer.issuer, "MLP_KAFKA_BOOTSTRAP_SERVERS": "", "MLP_LOG_LEVEL": "WARNING",
              "MLP_STATE_DIR": str(work), "MLP_OTLP_ENDPOINT": ""}
    procs = []
    try:
        procs.append(start([str(HERE / "upstream.py")], {**common, "MLP_HTTP_PORT": str(svc_port)},
                           work / "upstream.log"))
        procs.append(start(["-m", "mlp_gateway"], {
            **common, "MLP_HTTP_PORT": str(gw_port), "MLP_GRPC_PORT": str(gw_grpc),
            "MLP_DATABASE_URL": f"sqlite:///{work}/gateway.db",
            "MLP_GATEWAY_UPSTREAM_FEATURE_STORE": f"http://127.0.0.1:{svc_port}",
            "MLP_GATEWAY_RATE_LIMIT_PER_S": "1000000", "MLP_GATEWAY_RATE_LIMIT_BURST": "1000000",
            "MLP_GATEWAY_OPENAPI_REFRESH_S": "3600"}, work / "gateway.log"))
        direct, gateway = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{gw_port}"
        wait_ready(direct, procs[0], work / "upstream.log")
        wait_ready(gateway, procs[1], work / "gateway.log")
        d, g = asyncio.run(load(direct, gateway, token, opts.requests, opts.concurrency, opts.rounds,
                                opts.max_seconds))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        issuer.stop()

    rows = [("direct", d), ("gateway", g)]
    print(f"\nGateway added latency — authenticated GET, concurrency {opts.concurrency}, {len(d)}+{len(g)} requests")
    print(f"{'target':<10}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in rows:
        print(f"{name:<10}{len(values):>7}{pct(values, 0.5):>10.2f}{pct(values, 0.99):>10.2f}"
              f"{statistics.fmean(values):>10.2f}")
    print(f"{'overhead':<10}{'':>7}{pct(g, 0.5) - pct(d, 0.5):>10.2f}{pct(g, 0.99) - pct(d, 0.99):>10.2f}"
          f"{statistics.fmean(g) - statistics.fmean(d):>10.2f}")
    print("goal: p50 overhead < 1 ms, p99 overhead < 3 ms (2 shared cores; see README for context)")


if __name__ == "__main__":
    main()
