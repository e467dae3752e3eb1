"""Added latency of the gateway for an authenticated call, against a direct call to the same service.

Real processes on loopback: one service (uvicorn ServiceHost with token checks) and the gateway in
front of it (its edge: token check, scope, rate limit with Redis leases, forwarding). A small asyncio load generator with
16 concurrent workers alternates rounds of direct and gateway calls so both see the same machine
noise. Bounded: ``--requests`` per target (default 3,000) and ``--max-seconds`` overall.

The default client (``--client raw``) writes prebuilt HTTP/1.1 keep-alive requests on one
connection per worker and parses only the status line and the body framing, on uvloop: about
0.1 ms of client CPU per call, against ~1 ms for ``--client httpx`` (kept for comparison). Client
costs are shared by both targets but steal CPU from the servers on a small machine; ``--pin``
puts the load generator on CPU 0 and the servers on the other CPUs (Linux only).
``--profile DIR`` records py-spy profiles (folded stacks) of both servers during the measured rounds.

    .venv/bin/python benchmarks/gateway/run.py [--requests 3000] [--concurrency 16] [--client raw|httpx] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvloop

from mlp_core.broker import free_port
from mlp_core.testing.tokens import TestIssuer

HERE = Path(__file__).parent
PATH = "/api/v1/feature-store/ping"


def start(args: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=out)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


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


class RawClient:
    """HTTP/1.1 keep-alive GETs over one connection per worker: the leanest client asyncio allows."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._requests: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        parsed = urlsplit(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        key = (url, tuple(headers.items()))
        request = self._requests.get(key)
        if request is None:
            lines = [f"GET {parsed.path or '/'}{'?' + parsed.query if parsed.query else ''} HTTP/1.1",
                     f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
            request = self._requests[key] = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        idle = self._idle.setdefault((host, port), [])
        while idle:  # a kept-alive connection the server closed while idle (uvicorn: 5 s) is retried once
            reader, writer = idle.pop()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
        else:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            body = await reader.readexactly(int(lower[at + 17:lower.index(b"\r\n", at + 2)]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            raise SystemExit(f"{url}: answer without Content-Length or chunked framing")
        if b"\r\nconnection: close" in lower:
            writer.close()
        else:
            idle.append((reader, writer))
        return status, body

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()


class HttpxClient:
    """The same calls through ``httpx.AsyncClient`` (the heavier client, for comparison)."""

    def __init__(self, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(limits=limits, timeout=10)

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        reply = await self.client.get(url, headers=headers)
        return reply.status_code, reply.content

    async def aclose(self) -> None:
        await self.client.aclose()


Client = RawClient | HttpxClient


async def measure(client: Client, url: str, headers: dict[str, str], count: int,
                  concurrency: int) -> list[float]:
    latencies: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status, body = await client.get(url, headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise SystemExit(f"{url} answered {status}: {body[:200]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(direct: str, gateway: str, token: str, total: int, concurrency: int, rounds: int,
               max_seconds: float, client_kind: str, on_measure: Callable[[], None] = lambda: None,
               pids: dict[str, int] | None = None,
               cpu: dict[str, dict[str, float]] | None = None) -> tuple[list[float], list[float]]:
    """Measured latencies per target; ``cpu[target][process]`` gets the CPU seconds each process
    (and the load generator, ``client``) spent during that target's rounds."""
    headers = {"Authorization": f"Bearer {token}"}
    results: dict[str, list[float]] = {"direct": [], "gateway": []}
    procs = {"client": os.getpid(), **(pids or {})}
    client: Client = RawClient() if client_kind == "raw" else HttpxClient(concurrency)
    try:
        for base in (direct, gateway):  # warm-up: connections, JWKS, code paths
            await measure(client, base + PATH, headers, 300, concurrency)
        on_measure()
        started = time.monotonic()
        for _ in range(rounds):
            for name, base in (("direct", direct), ("gateway", gateway)):
                before = {proc: cpu_seconds(pid) for proc, pid in procs.items()}
                results[name] += await measure(client, base + PATH, headers, total // rounds, concurrency)
                if cpu is not None:
                    spent = cpu.setdefault(name, {})
                    for proc, pid in procs.items():
                        spent[proc] = spent.get(proc, 0.0) + cpu_seconds(pid) - before[proc]
            if time.monotonic() - started > max_seconds:
                break
    finally:
        await client.aclose()
    return results["direct"], results["gateway"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per target")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator client (raw: prebuilt HTTP/1.1 on uvloop; httpx: AsyncClient)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the load generator to CPU 0 and the servers to the other CPUs")
    parser.add_argument("--lease", type=int, default=20,
                        help="rate-limit tokens taken from Redis at a time (1: Redis on every call, as before leases)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write py-spy folded stacks of both servers (measured rounds) here")
    opts = parser.parse_args()
    server_cpus: set[int] | None = None
    if opts.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        server_cpus = set(cpus[1:])
        os.sched_setaffinity(0, {cpus[0]})

    work = Path(tempfile.mkdtemp(prefix="mlp-bench-gw-"))
    issuer = TestIssuer().start()
    token = issuer.mint(scope="features:read", projects=["bench"], lifetime_s=3600, client_id="bench")
    svc_port, gw_port, gw_grpc = free_port(), free_port(), free_port()
    common = {"MLP_OIDC_ISSUER": issuer.issuer, "MLP_KAFKA_BOOTSTRAP_SERVERS": "", "MLP_LOG_LEVEL": "WARNING",
              "MLP_STATE_DIR": str(work), "MLP_OTLP_ENDPOINT": ""}
    procs = []
    try:
        procs.append(start([str(HERE / "upstream.py")], {**common, "MLP_HTTP_PORT": str(svc_port)},
                           work / "upstream.log", server_cpus))
        procs.append(start(["-m", "mlp_gateway"], {
            **common, "MLP_HTTP_PORT": str(gw_port), "MLP_GRPC_PORT": str(gw_grpc),
            "MLP_DATABASE_URL": f"sqlite:///{work}/gateway.db",
            "MLP_GATEWAY_UPSTREAM_FEATURE_STORE": f"http://127.0.0.1:{svc_port}",
            # A limit the benchmark never reaches, taken in leases of 20 tokens: the lease of the default
            # limit (100/s, burst 200), so one call in 20 goes to Redis, as for a client on the defaults.
            "MLP_GATEWAY_RATE_LIMIT_PER_S": "1000000", "MLP_GATEWAY_RATE_LIMIT_BURST": "1000000",
            "MLP_GATEWAY_RATE_LIMIT_LEASE": str(opts.lease),
            "MLP_GATEWAY_OPENAPI_REFRESH_S": "3600"}, work / "gateway.log", server_cpus))
        direct, gateway = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{gw_port}"
        wait_ready(direct, procs[0], work / "upstream.log")
        wait_ready(gateway, procs[1], work / "gateway.log")
        profilers: list[subprocess.Popen[bytes]] = []
        cpu: dict[str, dict[str, float]] = {}

        def start_profilers() -> None:
            if opts.profile is None:
                return
            opts.profile.mkdir(parents=True, exist_ok=True)
            spy = Path(sys.executable).with_name("py-spy")
            for name, proc in (("upstream", procs[0]), ("gateway", procs[1])):
                profilers.append(subprocess.Popen(
                    [str(spy), "record", "--pid", str(proc.pid), "--rate", "200", "--nonblocking", "--format", "raw",
                     "--output", str(opts.profile / f"{name}.folded")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        try:
            d, g = uvloop.run(load(direct, gateway, token, opts.requests, opts.concurrency, opts.rounds,
                                   opts.max_seconds, opts.client, start_profilers,
                                   {"service": procs[0].pid, "gateway": procs[1].pid}, cpu))
        finally:
            for spy_proc in profilers:
                spy_proc.send_signal(signal.SIGINT)
            for spy_proc in profilers:
                try:
                    spy_proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy_proc.kill()
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
    print(f"\nGateway added latency — authenticated GET, concurrency {opts.concurrency}, {len(d)}+{len(g)} requests, "
          f"client {opts.client}{', pinned' if opts.pin else ''}")
    print(f"{'target':<10}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, values in rows:
        print(f"{name:<10}{len(values):>7}{pct(values, 0.5):>10.2f}{pct(values, 0.99):>10.2f}"
              f"{statistics.fmean(values):>10.2f}")
    print(f"{'overhead':<10}{'':>7}{pct(g, 0.5) - pct(d, 0.5):>10.2f}{pct(g, 0.99) - pct(d, 0.99):>10.2f}"
          f"{statistics.fmean(g) - statistics.fmean(d):>10.2f}")
    print("CPU per request (ms) during each target's rounds: " + "; ".join(
        f"{name}: " + ", ".join(f"{proc} {1000 * sec / max(1, n):.3f}" for proc, sec in cpu.get(name, {}).items())
        for name, n in (("direct", len(d)), ("gateway", len(g)))))
    print(f"rate limit: one Redis call per {opts.lease} gateway calls (--lease)")
    print("goal: p50 overhead < 1 ms, p99 overhead < 3 ms (2 shared cores; see README for context)")


if __name__ == "__main__":
    main()
