"""Feature store benchmarks: online reads (gRPC, REST, raw Redis limit) and historical retrieval.

    .venv/bin/python benchmarks/feature_store/run.py [--quick] [--online-only]

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data
import load

from mlp_core.broker import free_port
from mlp_feature_store.store.online_redis import key_prefix


async def _online_cells(bench: data.Bench, token: str, grpc_port: int, http_port: int, entities: int,
                        seconds: float) -> list[tuple[str, int, int, load.Stats]]:
    import grpc
    import httpx

    from mlp_protos.mlp.common.v1 import value_pb2
    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb
    from mlp_protos.mlp.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

    refs = bench.feature_refs
    md = [("authorization", f"Bearer {token}")]
    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", headers={"authorization": f"Bearer {token}"},
                              limits=httpx.Limits(max_connections=32), timeout=60) as http:
        stub = pb_grpc.FeatureStoreServiceStub(channel)
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)

        async def health_call(_i: int) -> None:
            await health.Check(health_pb2.HealthCheckRequest())

        # the floor: an empty gRPC round trip to the same server (no auth, no work)
        for conc in (1, 16):
            out.append(("gRPC health check (floor)", 0, conc, await load.closed_loop(health_call, conc, seconds)))
        for n in (1, 100):
            def ids(i: int, n: int = n) -> list[int]:
                return [(i * 7919 + k * 104_729) % entities for k in range(n)]

            async def grpc_call(i: int, n: int = n) -> None:
                req = pb.GetOnlineFeaturesRequest(project=bench.project, features=refs, full_feature_names=True, entities={
                    "user_id": value_pb2.RepeatedValue(values=[value_pb2.Value(int64_val=e) for e in ids(i, n)])})
                resp = await stub.GetOnlineFeatures(req, metadata=md)
                assert resp.row_count == n and len(resp.columns) == 51

            async def rest_call(i: int, n: int = n) -> None:
                r = await http.post(f"/api/v1/feature-store/projects/{bench.project}/online-features",
                                    json={"features": refs, "entities": {"user_id": ids(i, n)}})
                assert r.status_code == 200, r.text[:300]

            for proto, call in (("gRPC", grpc_call), ("REST", rest_call)):
                for conc in (1, 16):
                    out.append((proto, n, conc, await load.closed_loop(call, conc, seconds)))
            prefixes = [key_prefix(bench.wiring.service.registry.layout(bench.project, f"v{v}"))
                        for v in range(data.VIEWS)]
            out.append(("raw redis-py", n, 1, load.raw_redis(
                bench.redis_url, lambda i, n=n, ps=prefixes: [p + f"[{e}]" for p in ps for e in ids(i, n)], seconds)))
    return out


def online(bench: data.Bench, entities: int, seconds: float) -> list[str]:
    """Table (a): the servers as separate processes with auth, the client here, raw Redis next to them."""
    from mlp_core.testing.tokens import TestIssuer

    loaded = data.load_online(bench, entities)
    issuer = TestIssuer().start()
    grpc_port, http_port = free_port(), free_port()
    proc = load.start_server({
        "MLP_DATABASE_URL": bench.db_url, "MLP_REDIS_URL": bench.redis_url, "MLP_OIDC_ISSUER": issuer.issuer,
        "MLP_OIDC_AUDIENCE": "mlp", "MLP_GRPC_PORT": str(grpc_port), "MLP_HTTP_PORT": str(http_port),
        "MLP_HTTP_HOST": "127.0.0.1", "MLP_KAFKA_BOOTSTRAP_SERVERS": "", "MLP_LOG_LEVEL": "WARNING",
        "MLP_OTLP_ENDPOINT": ""})
    try:
        load.wait_ready(http_port, proc)
        token = issuer.mint(scope="features:read", projects=[bench.project], lifetime_s=3000)
        cells = asyncio.run(_online_cells(bench, token, grpc_port, http_port, entities, seconds))
    finally:
        proc.terminate()
        proc.wait(10)
        issuer.stop()
    raw = {n: s for p, n, _c, s in cells if p.startswith("raw")}
    lines = [f"Online: {entities:,} entities x {data.VIEWS} views x {data.FEATURES} features in Redis "
             f"(loaded in {loaded:.1f} s); {seconds:.0f} s per cell after 0.5 s warm-up",
             "", "| path | entities x features | concurrency | p50 ms | p99 ms | req/s | vs raw req/s |",
             "|---|---|---|---|---|---|---|"]
    for proto, n, conc, s in cells:
        ratio = f"{s.rps / raw[n].rps:.2f}" if n in raw else "-"
        shape = f"{n} x 50" if n else "-"
        lines.append(f"| {proto} | {shape} | {conc} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.rps:,.0f} | {ratio} |")
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
    parser.add_argument("--historical-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.historical_child:
        db_url, redis_url, project, rows, entities = args.historical_child
        historical_child(db_url, redis_url, project, int(rows), int(entities))
        return
    redis_url = os.environ.get("MLP_REDIS_URL", "redis://127.0.0.1:6379/0")
    entities, seconds = (10_000, 1.5) if args.quick else (100_000, 4.0)
    rows_per_view, entity_rows = (100_000, 10_000) if args.quick else (1_000_000, 100_000)
    bench = data.create(redis_url)
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"client and servers share these cores\n")
        print("\n".join(online(bench, entities, seconds)) + "\n", flush=True)
        if not args.online_only:
            print("\n".join(historical(bench, rows_per_view, entity_rows, entities)))
    finally:
        data.drop(bench)


if __name__ == "__main__":
    main()
