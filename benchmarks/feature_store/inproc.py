"""In-process cost of one online read, without transport: domain call, protobuf and JSON encoding.

``online_response_bytes`` is the serialized gRPC answer in the per-column shape, ``/view`` the
``status_per_view`` one.

    .venv/bin/python benchmarks/feature_store/inproc.py

Needs PostgreSQL and Redis like ``run.py``; prints median and p99 microseconds per step.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data
import orjson

from mlp_feature_store.api.online_wire import online_response_bytes
from mlp_feature_store.api.rest_io import online_json


def _time(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    for _ in range(20):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


def main() -> None:
    bench = data.create(os.environ.get("MLP_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        data.load_online(bench, 10_000)
        retrieval = bench.wiring.service.retrieval
        refs = bench.feature_refs
        loop = asyncio.new_event_loop()
        for n in (1, 100):
            ents = {"user_id": [(k * 104_729) % 10_000 for k in range(n)]}
            result = retrieval.online(data.Admin(), bench.project, ents, features=refs)

            def sync(ents: dict[str, list[Any]] = ents) -> Any:
                return retrieval.online(data.Admin(), bench.project, ents, features=refs)

            steps: list[tuple[str, Callable[[], Any]]] = [
                ("online (sync)", sync),
                ("online_response_bytes", lambda r=result: online_response_bytes(r, r.dtypes, True)),
                ("online_response_bytes/view", lambda r=result: online_response_bytes(r, r.dtypes, True, True)),
                ("online_json", lambda r=result: orjson.dumps(online_json(r))),
            ]
            if hasattr(retrieval, "online_async"):
                steps.insert(1, ("online (async)", lambda ents=ents: loop.run_until_complete(
                    retrieval.online_async(data.Admin(), bench.project, ents, features=refs))))
            for name, fn in steps:
                p50, p99 = _time(fn, 300 if n == 1 else 100)
                print(f"{n:>3} x 50  {name:<27} p50 {p50:8.0f} us   p99 {p99:8.0f} us")
        loop.close()
    finally:
        data.drop(bench)


if __name__ == "__main__":
    main()
