"""Benchmark data: a throwaway PostgreSQL database, definitions, bulk COPY offline rows, online records."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import redis

from mlp_feature_store.main import Wiring, wire
from mlp_feature_store.settings import FeatureStoreSettings
from mlp_feature_store.store.offline_tables import key_col, view_table
from mlp_feature_store.store.online_redis import RECORD_FORMAT, encode_record, key_prefix

VIEWS = 5
FEATURES = 10
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DAY_US = 86_400 * 1_000_000
T0_US = 1_700_000_000 * 1_000_000


@dataclass
class Bench:
    """One benchmark environment: its database, project and wiring."""

    db_name: str
    db_url: str
    redis_url: str
    project: str
    wiring: Wiring

    @property
    def feature_refs(self) -> list[str]:
        return [f"v{i}:f{j}" for i in range(VIEWS) for j in range(FEATURES)]


class Admin:
    """Another admin caller for setting up definitions in-process."""

    subject = "bench"

    def has_scope(self, scope: str) -> bool:
        return True

    def can_access(self, project: str) -> bool:
        return True


def create(redis_url: str) -> Bench:
    """A new database with the feature store's schema and five views of ten float features."""
    name = f"fs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    settings = FeatureStoreSettings(database_url=url, redis_url=redis_url, kafka_bootstrap_servers="")
    wiring = wire(settings)
    project = f"bench{uuid.uuid4().hex[:6]}"
    items = [("entity", {"name": "user", "join_keys": [{"name": "user_id", "dtype": "int64"}]})]
    items += [("feature_view", {"name": f"v{i}", "entities": ["user"], "ttl_seconds": 3650 * 86_400,
                                "features": [{"name": f"f{j}", "dtype": "float64"} for j in range(FEATURES)]})
              for i in range(VIEWS)]
    wiring.service.registry.apply(Admin(), project, items)
    return Bench(name, url, redis_url, project, wiring)


def drop(bench: Bench) -> None:
    """Remove the database and the project's Redis records."""
    bench.wiring.db.dispose()
    for db in bench.wiring.databases.values():
        db.dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench.db_name}" WITH (FORCE)')
    client = redis.Redis.from_url(bench.redis_url)
    batch = []
    for key in client.scan_iter(match=f"fs{RECORD_FORMAT}:{bench.project}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()


def load_online(bench: Bench, entities: int) -> float:
    """Write ``entities`` records per view in the online store's format; returns seconds taken."""
    import time

    started = time.perf_counter()
    client = redis.Redis.from_url(bench.redis_url)
    rng = np.random.default_rng(1)
    now = int(time.time() * 1_000_000)
    for i in range(VIEWS):
        layout = bench.wiring.service.registry.layout(bench.project, f"v{i}")
        prefix = key_prefix(layout)
        values = rng.random((entities, FEATURES)).round(6).tolist()
        for start in range(0, entities, 10_000):
            client.mset({f"{prefix}[{e}]": encode_record(layout, now, now, {f"f{j}": values[e][j]
                                                                             for j in range(FEATURES)})
                         for e in range(start, min(start + 10_000, entities))})
    client.close()
    return time.perf_counter() - started


def load_offline(bench: Bench, rows_per_view: int, entities: int) -> float:
    """Bulk COPY ``rows_per_view`` rows into each view's table (CSV built by Arrow); returns seconds."""
    import time

    started = time.perf_counter()
    rng = np.random.default_rng(2)
    raw_url = bench.db_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw_url, autocommit=True) as conn:
        for i in range(VIEWS):
            table = view_table(bench.wiring.service.registry.layout(bench.project, f"v{i}"))
            cols = {key_col("user_id"): rng.integers(0, entities, rows_per_view),
                    "event_ts": T0_US + rng.integers(0, 30 * DAY_US, rows_per_view),
                    "ingested_ts": np.full(rows_per_view, T0_US + 31 * DAY_US)}
            cols.update({f"f_f{j}": rng.random(rows_per_view).round(6) for j in range(FEATURES)})
            buf = io.BytesIO()
            pacsv.write_csv(pa.table(cols), buf, pacsv.WriteOptions(include_header=False))
            names = ", ".join(f'"{c}"' for c in cols)
            with conn.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT csv)') as copy:
                view = buf.getbuffer()
                for start in range(0, len(view), 1 << 20):
                    copy.write(view[start:start + (1 << 20)])
            conn.execute(f'ANALYZE "{table.name}"')
    return time.perf_counter() - started
