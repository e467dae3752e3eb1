"""Feature store benchmarks: online reads (gRPC, REST, raw Redis limit) and historical retrieval.

    .venv/bin/python benchmarks/feature_store/run.py [--quick] [--online-only] [--client native|python]

The online cells use h2load (gRPC) and wrk (REST): apt-get install -y nghttp2-client wrk.

Needs PostgreSQL on 127.0.0.1:5432 (postgres, trust) and Redis (MLP_REDIS_URL or 127.0.0.1:6379).
Everything it creates (a database, Redis keys under its own project) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data
import load
import native

from mlp_core.broker import free_port
from mlp_feature_store.store.online_redis import key_prefix

GRPC_METHOD = "/mlp.featurestore.v1.FeatureStoreService/GetOnlineFeatures"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"


@dataclass
class Cell:
    """One measured cell: path, entities per request (0: health check), concurrency, result, server CPU."""

    path: str
    n: int
    conc: int
    stats: load.Stats
    cpu_us: float | None = None  # server process CPU (user+system) per request, microseconds


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` and its children (the online workers; Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _ids(i: int, n: int, entities: int) -> list[int]:
    return [(i * 7919 + k * 104_729) % entities for k in range(n)]


def _grpc_request(bench: data.Bench, ids: list[int], status_per_view: bool = True) -> Any:
    from mlp_protos.mlp.common.v1 import value_pb2
    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb

    return pb.GetOnlineFeaturesRequest(project=bench.project, features=bench.feature_refs, full_feature_names=True,
                                       status_per_view=status_per_view, entities={"user_id": value_pb2.RepeatedValue(
                                           values=[value_pb2.Value(int64_val=e) for e in ids])})


async def _python_cells(bench: data.Bench, token: str, grpc_port: int, http_port: int, entities: int,
                        seconds: float, pid: int) -> list[Cell]:
    """Every cell with Python clients (grpc.aio, httpx) in this process: the old way, for comparison."""
    import grpc
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

    md = [("authorization", f"Bearer {token}")]
    out: list[Cell] = []

    async def measured(path: str, n: int, conc: int, call: Any) -> None:
        cpu = _cpu_s(pid)
        stats = await load.closed_loop(call, conc, seconds)
        # warm-up calls are not in stats.n: count them by time share (closed loop, same rate)
        calls = stats.n * (seconds + 0.5) / seconds
        out.append(Cell(path, n, conc, stats, (_cpu_s(pid) - cpu) / calls * 1e6))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", headers={"authorization": f"Bearer {token}"},
                              limits=httpx.Limits(max_connections=32), timeout=60) as http:
        stub = pb_grpc.FeatureStoreServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def health_call(_i: int) -> None:
            await health.Check(health_pb2.HealthCheckRequest())

        for conc in (1, 16):
            await measured("gRPC health check (floor)", 0, conc, health_call)
        for n in (1, 100):
            async def grpc_call(i: int, n: int = n) -> None:
                resp = await stub.GetOnlineFeatures(_grpc_request(bench, _ids(i, n, entities)), metadata=md)
                assert resp.row_count == n and len(resp.columns) == 51

            async def rest_call(i: int, n: int = n) -> None:
                r = await http.post(f"/api/v1/feature-store/projects/{bench.project}/online-features",
                                    json={"features": bench.feature_refs, "entities": {"user_id": _ids(i, n, entities)}})
                assert r.status_code == 200, r.text[:300]

            for path, call in (("gRPC", grpc_call), ("REST", rest_call)):
                for conc in (1, 16):
                    await measured(path, n, conc, call)
            out.append(_raw_cell(bench, n, entities, seconds))
    return out


def _raw_cell(bench: data.Bench, n: int, entities: int, seconds: float, label: str = "raw redis-py") -> Cell:
    prefixes = [key_prefix(bench.wiring.service.registry.layout(bench.project, f"v{v}")) for v in range(data.VIEWS)]
    return Cell(label, n, 1, load.raw_redis(
        bench.redis_url, lambda i: [p + f"[{e}]" for p in prefixes for e in _ids(i, n, entities)], seconds))


def _check_grpc(bench: data.Bench, token: str, grpc_port: int, request: Any, n: int) -> None:
    """One call with the Python client: the payload h2load will send is valid and answered in full."""
    import grpc

    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb
    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        resp = pb_grpc.FeatureStoreServiceStub(channel).GetOnlineFeatures(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert resp.row_count == n and len(resp.columns) == 51, resp
    present = pb.FEATURE_STATUS_PRESENT
    statuses = [s for c in resp.columns for s in c.statuses] + [s for g in resp.status_groups for s in g.statuses]
    assert statuses and all(s == present for s in statuses), "benchmark data must be PRESENT"


def _native_cells(bench: data.Bench, token: str, grpc_port: int, http_port: int, entities: int,
                  seconds: float, pid: int, fast_port: int, workers: int = 1) -> list[Cell]:
    """gRPC cells with h2load (concurrency 16 = 1 connection x 16 streams, like one client channel),
    REST cells with wrk (concurrency 16 = 16 keep-alive connections); server CPU per request from /proc."""
    from grpc_health.v1 import health_pb2

    out: list[Cell] = []

    def grpc_cell(path: str, n: int, method: str, message: bytes, port: int = grpc_port) -> None:
        for conc in (1, 16):
            # With workers, concurrency 16 on the fast port is spread over 4 connections per process, like
            # that many clients with a channel each: the kernel spreads connections (not streams) over the
            # processes by a hash, so with one connection per process two often land on the same one.
            clients = min(16, 4 * workers) if port == fast_port and conc == 16 and workers > 1 else 1
            cpu = _cpu_s(pid)
            before = native.grpc_counts(http_port, method).get("OK", 0.0)
            stats = native.h2load_grpc(port, http_port, method, message, token, clients=clients,
                                       streams=conc // clients, seconds=seconds)
            calls = native.grpc_counts(http_port, method).get("OK", 0.0) - before
            out.append(Cell(path, n, conc, stats, (_cpu_s(pid) - cpu) / calls * 1e6))

    grpc_cell("gRPC health check (floor)", 0, HEALTH_METHOD, health_pb2.HealthCheckRequest().SerializeToString())
    url = f"http://127.0.0.1:{http_port}/api/v1/feature-store/projects/{bench.project}/online-features"
    fast_url = f"http://127.0.0.1:{fast_port}/api/v1/feature-store/projects/{bench.project}/online-features"
    for n in (1, 100):
        # The raw limit moves with the machine (3,900-11,000 reads/s for 1 x 50 over runs on this VM), so it
        # is measured before and after the cells of its size, and ratios use the faster of the two.
        out.append(_raw_cell(bench, n, entities, seconds, "raw redis-py (before)"))
        request = _grpc_request(bench, _ids(1, n, entities))
        _check_grpc(bench, token, grpc_port, request, n)
        grpc_cell("gRPC", n, GRPC_METHOD, request.SerializeToString())
        _check_grpc(bench, token, fast_port, request, n)  # the same call on the fast port (h2c, mlp_core.grpc_edge)
        fast_label = "gRPC, fast port" + (f", {workers} processes" if workers > 1 else "")
        grpc_cell(fast_label, n, GRPC_METHOD, request.SerializeToString(), fast_port)
        if n == 100:  # the older per-column status shape, for comparison
            request = _grpc_request(bench, _ids(1, n, entities), status_per_view=False)
            _check_grpc(bench, token, grpc_port, request, n)
            grpc_cell("gRPC, per-column statuses", n, GRPC_METHOD, request.SerializeToString())
        bodies = [json.dumps({"features": bench.feature_refs, "entities": {"user_id": _ids(i, n, entities)}})
                  for i in range(64)]
        rest_fast = "REST, fast port" + (f", {workers} processes" if workers > 1 else "")
        for label, target in (("REST", url), (rest_fast, fast_url)):
            for conc in (1, 16):
                native.wrk_post(target, bodies, token, connections=conc, seconds=0.5, warmup=0)
                cpu = _cpu_s(pid)
                stats = native.wrk_post(target, bodies, token, connections=conc, seconds=seconds, warmup=0)
                out.append(Cell(label, n, conc, stats, (_cpu_s(pid) - cpu) / stats.n * 1e6))
        out.append(_raw_cell(bench, n, entities, seconds, "raw redis-py (after)"))
    return out


def online(bench: data.Bench, entities: int, seconds: float, client: str, workers: int = 1) -> list[str]:
    """Table (a): the server as a separate process with auth, the load client here, raw Redis next to them."""
    from mlp_core.testing.tokens import TestIssuer

    loaded = data.load_online(bench, entities)
    issuer = TestIssuer().start()
    grpc_port, http_port, fast_port = free_port(), free_port(), free_port()
    proc = load.start_server({
        "MLP_DATABASE_URL": bench.db_url, "MLP_REDIS_URL": bench.redis_url, "MLP_OIDC_ISSUER": issuer.issuer,
        "MLP_OIDC_AUDIENCE": "mlp", "MLP_GRPC_PORT": str(grpc_port), "MLP_HTTP_PORT": str(http_port),
        "MLP_FEATURE_STORE_ONLINE_PORT": str(fast_port), "MLP_FEATURE_STORE_ONLINE_WORKERS": str(workers),
        "MLP_HTTP_HOST": "127.0.0.1", "MLP_KAFKA_BOOTSTRAP_SERVERS": "", "MLP_LOG_LEVEL": "WARNING",
        "MLP_OTLP_ENDPOINT": ""})
    try:
        load.wait_ready(http_port, proc, path="/readyz")  # with workers: all of them listen
        # valid for the whole run (the verifier caches a verified token until its exp at the latest)
        token = issuer.mint(scope="features:read", projects=[bench.project], lifetime_s=3000)
        if client == "native":
            cells = _native_cells(bench, token, grpc_port, http_port, entities, seconds, proc.pid, fast_port,
                                  workers)
        else:
            cells = asyncio.run(_python_cells(bench, token, grpc_port, http_port, entities, seconds, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)
        issuer.stop()
    raw: dict[int, load.Stats] = {}
    for c in cells:  # the fastest raw measurement of each size: the ratios are the conservative ones
        if c.path.startswith("raw") and (c.n not in raw or c.stats.rps > raw[c.n].rps):
            raw[c.n] = c.stats
    how = ("h2load (gRPC: 1 connection x 1 or 16 streams) and wrk (REST: 1 or 16 connections), one thread each"
           if client == "native" else "Python grpc.aio and httpx clients in the benchmark process")
    lines = [f"Online: {entities:,} entities x {data.VIEWS} views x {data.FEATURES} features in Redis "
             f"(loaded in {loaded:.1f} s); {seconds:.0f} s per cell after 0.5 s warm-up; load: {how}",
             "", "| path | entities x features | concurrency | p50 ms | p99 ms | req/s | vs raw req/s "
                 "| server CPU us/req |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s = c.stats
        ratio = f"{s.rps / raw[c.n].rps:.2f}" if c.n in raw else "-"
        shape = f"{c.n} x 50" if c.n else "-"
        cpu = f"{c.cpu_us:,.0f}" if c.cpu_us is not None else "-"
        lines.append(f"| {c.path} | {shape} | {c.conc} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.rps:,.0f} | {ratio} "
                     f"| {cpu} |")
    return lines


def historical_child(db_url: str, redis_url: str, project: str, rows: int, entities: int) -> None:
    """Runs in its own process so that its peak RSS is the retrieval's alone; prints JSON."""
    import numpy as np
    import pyarrow as pa

    from mlp_feature_store.main import wire
    from mlp_feature_store.settings import FeatureStoreSettings

    wiring = wire(FeatureStoreSettings(database_url=db_url, redis_url=redis_url, kafka_bootstrap_servers=""))
    rng = np.random.default_rng(3)
    ts = data.T0_US + rng.integers(0, 32 * data.DAY_US, rows)
    table = pa.table({"user_id": rng.integers(0, entities, rows),
                      "event_timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    refs = [f"v{i}:f{j}" for i in range(data.VIEWS) for j in range(data.FEATURES)]
    started = time.perf_counter()
    out_rows = 0
    in_order = True
    for batch in wiring.service.retrieval.historical(data.Admin(), project, table, features=refs):
        in_order &= batch.column(0).equals(table.column(0).slice(out_rows, batch.num_rows).combine_chunks())
        out_rows += batch.num_rows
    wall = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"wall_s": wall, "peak_rss": rss, "out_rows": out_rows, "in_order": in_order,
                      "columns": batch.num_columns}))


def historical(bench: data.Bench, rows_per_view: int, entity_rows: int, entities: int) -> list[str]:
    """Table (b): bulk-load, then a point-in-time join in a fresh process."""
    loaded = data.load_offline(bench, rows_per_view, entities)
    proc = subprocess.run([sys.executable, __file__, "--historical-child", bench.db_url, bench.redis_url,
                           bench.project, str(entity_rows), str(entities)], capture_output=True, text=True,
                          timeout=600, check=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = r["out_rows"] == entity_rows and r["in_order"]
    return [f"Historical: {entity_rows:,} entity rows against {rows_per_view:,} rows per view x {data.VIEWS} views "
            f"(50 features), PostgreSQL; data bulk-loaded with COPY in {loaded:.1f} s",
            "", "| wall s | peak RSS MiB | output rows | one row per input row, in order | columns |",
            "|---|---|---|---|---|",
            f"| {r['wall_s']:.2f} | {r['peak_rss'] / 2**20:,.0f} | {r['out_rows']:,} | {'yes' if ok else 'NO'} | "
            f"{r['columns']} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data and short cells (about a minute)")
    parser.add_argument("--online-only", action="store_true", help="run only the online table (a)")
    parser.add_argument("--client", choices=("native", "python"), default="native",
                        help="load generators: h2load + wrk (default; falls back to python when missing) or the "
                             "Python grpc.aio/httpx clients in this process")
    parser.add_argument("--entities", type=int, help="online entities (default 100,000; --quick 10,000)")
    parser.add_argument("--seconds", type=float, help="seconds per online cell (default 4; --quick 1.5)")
    parser.add_argument("--online-workers", type=int, default=1,
                        help="processes on the feature store's fast port (MLP_FEATURE_STORE_ONLINE_WORKERS)")
    parser.add_argument("--historical-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.historical_child:
        db_url, redis_url, project, rows, entities = args.historical_child
        historical_child(db_url, redis_url, project, int(rows), int(entities))
        return
    redis_url = os.environ.get("MLP_REDIS_URL", "redis://127.0.0.1:6379/0")
    entities, seconds = (10_000, 1.5) if args.quick else (100_000, 4.0)
    entities, seconds = args.entities or entities, args.seconds or seconds
    client = args.client
    missing = [name for name, ok in native.available().items() if not ok]
    if client == "native" and missing:
        print(f"NOTE: {', '.join(missing)} not installed ({native.INSTALL_HINT}); using the Python clients, whose "
              "CPU competes with the server on these cores\n")
        client = "python"
    rows_per_view, entity_rows = (100_000, 10_000) if args.quick else (1_000_000, 100_000)
    bench = data.create(redis_url)
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"client and servers share these cores\n")
        print("\n".join(online(bench, entities, seconds, client, args.online_workers)) + "\n", flush=True)
        if not args.online_only:
            print("\n".join(historical(bench, rows_per_view, entity_rows, entities)))
    finally:
        data.drop(bench)


if __name__ == "__main__":
    main()
