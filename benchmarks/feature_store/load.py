"""Closed-loop load: ``concurrency`` workers send requests back to back for ``seconds``; latency per request."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Stats:
    """p50/p99 latency (ms) and throughput (requests/s)."""

    p50_ms: float
    p99_ms: float
    rps: float
    n: int


def summarize(latencies: list[float], wall: float) -> Stats:
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return Stats(statistics.median(lat) * 1000, p99 * 1000, len(lat) / wall, len(lat))


async def closed_loop(call: Callable[[int], Awaitable[None]], concurrency: int, seconds: float,
                      warmup: float = 0.5) -> Stats:
    """Run ``call(i)`` from ``concurrency`` tasks; the first ``warmup`` seconds are not counted."""
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def worker(w: int) -> None:
        i = w
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            await call(i)
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return summarize(latencies, time.perf_counter() - measure_from)


def raw_redis(url: str, keys_for: Callable[[int], list[str]], seconds: float) -> Stats:
    """The raw limit: the same records read with one MGET by redis-py in-process, back to back."""
    client = redis.Redis.from_url(url)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    i = 0
    start = time.perf_counter()
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        client.mget(keys_for(i))
        latencies.append(time.perf_counter() - t0)
        i += 1
    wall = time.perf_counter() - start
    client.close()
    return summarize(latencies, wall)


def start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The feature store as its own process (uvicorn REST + grpc.aio), as deployed."""
    return subprocess.Popen([sys.executable, "-m", "mlp_feature_store"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(http_port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0, path: str = "/healthz") -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")
