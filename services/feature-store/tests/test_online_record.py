"""The binary online record: round trips of every type, nulls, schema changes in place, bad records."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from mlp_feature_store.domain.models import ValueType
from mlp_feature_store.store.online_record import (
    RECORD_FORMAT,
    RecordError,
    Schema,
    record_times,
    schema_from_spec,
)
from mlp_feature_store.store.online_redis import entity_key, key_prefix

from .conftest import Caller

ALL = Schema((("f", ValueType.FLOAT64), ("i", ValueType.INT64), ("s", ValueType.STRING),
              ("b", ValueType.BOOL), ("t", ValueType.TIMESTAMP), ("s2", ValueType.STRING)))
NAMES = ["f", "i", "s", "b", "t", "s2"]


def _values(schema: Schema, raw: bytes, names: list[str] = NAMES) -> tuple[Any, ...]:
    return tuple(schema.getter(names)(schema.unpack(raw)))


def test_round_trip_of_every_type() -> None:
    ts = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    raw = ALL.encode(111, 222, {"f": 1.5, "i": -(2**62), "s": "héllo ✓", "b": True, "t": ts, "s2": ""})
    assert raw[0] == RECORD_FORMAT and record_times(raw) == (111, 222)
    t_us = int(ts.timestamp()) * 1_000_000 + 123456
    assert _values(ALL, raw) == (1.5, -(2**62), "héllo ✓", True, t_us, "")
    assert ALL.unpack(raw)[2:4] == (111, 222)
    # a timestamp given as microseconds is stored as is
    assert _values(ALL, ALL.encode(1, 1, {"t": t_us}), ["t"]) == (t_us,)


def test_nulls_and_missing_values_read_as_none() -> None:
    raw = ALL.encode(1, 2, {"f": None, "i": 7, "b": False})  # s, t, s2 absent
    assert _values(ALL, raw) == (None, 7, None, False, None, None)
    wide = Schema(tuple((f"x{i}", ValueType.INT64) for i in range(20)))  # a null bitmap of 3 bytes
    values = {f"x{i}": (None if i % 3 == 0 else i) for i in range(20)}
    names = [f"x{i}" for i in range(20)]
    got = wide.unpack_many([wide.encode(5, 5, values), wide.encode(6, 6, {})])
    assert tuple(wide.getter(names)(got[0])) == tuple(values[n] for n in names)
    assert tuple(wide.getter(names)(got[1])) == (None,) * 20
    assert [t[2] for t in got] == [5, 6]


def test_fixed_size_records_decode_in_one_call_and_select_names() -> None:
    schema = Schema((("a", ValueType.FLOAT64), ("b", ValueType.INT64), ("c", ValueType.BOOL)))
    records = [schema.encode(i, i, {"a": i / 2, "b": i, "c": i % 2 == 0}) for i in range(5)]
    decoded = schema.unpack_many(records)
    assert [tuple(schema.getter(["c", "a"])(t)) for t in decoded] == [(i % 2 == 0, i / 2) for i in range(5)]
    assert [tuple(schema.getter(["b"])(t)) for t in decoded] == [(i,) for i in range(5)]
    # a name the record does not have (a feature added later) reads as None
    assert tuple(schema.getter(["b", "new"])(decoded[3])) == (3, None)


def test_schema_description_round_trips() -> None:
    again = schema_from_spec(ALL.spec())
    assert again == ALL and again.id == ALL.id
    assert Schema((("a", ValueType.INT64),)).id != Schema((("a", ValueType.FLOAT64),)).id


@pytest.mark.parametrize("raw, message", [
    (b'1700000000,1700000000,{"f":1.0}', "older text format"),          # a format-2 record
    (bytes([RECORD_FORMAT]) + b"\x00" * 5, "unreadable online record"),  # truncated
    (bytes([9]) + b"\x00" * 60, "unreadable online record"),            # an unknown format byte
])
def test_bad_records_give_a_clear_error(raw: bytes, message: str) -> None:
    schema = Schema((("f", ValueType.FLOAT64),))
    for decode in (lambda: schema.unpack(raw), lambda: schema.unpack_many([raw]), lambda: ALL.unpack(raw)):
        with pytest.raises(RecordError, match=message):
            decode()
    good = schema.encode(1, 1, {"f": 1.0})
    with pytest.raises(RecordError):
        schema.unpack(good + b"x")  # trailing bytes
    with pytest.raises(RecordError, match="another schema"):
        ALL.unpack(ALL.encode(1, 1, {})[:1] + b"12345678" + ALL.encode(1, 1, {})[9:])


def test_string_lengths_must_add_up() -> None:
    raw = ALL.encode(1, 1, {"s": "abc", "s2": "de"})
    with pytest.raises(RecordError, match="string lengths"):
        ALL.unpack(raw[:-1])


def _push(fs: Any, user: str, clicks: int | None, when: datetime, event_id: str) -> None:
    fs.ingestion.push(Caller(), "p1", "stats", [{"user_id": user, "event_timestamp": when.isoformat(),
                                                 "clicks": clicks, "views": 1, "email": "e"}], event_id=event_id)


def test_store_reads_records_written_before_a_feature_was_added(applied, redis_url: str) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    _push(applied, "u1", 3, t, "e1")
    _push(applied, "u2", None, t, "e2")
    from .conftest import STATS

    spec = {**STATS, "features": [*STATS["features"], {"name": "spend", "dtype": "float64"}]}
    applied.registry.apply(Caller(), "p1", [("feature_view", spec)])  # compatible: same version
    _push(applied, "u3", 9, t, "e3")  # written with the new schema
    from mlp_feature_store.store import online_redis

    online_redis._SCHEMAS.clear()  # as in a fresh process: the old schema is read from Redis
    for sync in (False, True):  # the second time the old schema comes from the process cache
        ents = {"user_id": ["u1", "u2", "u3", "nobody"]}
        features = ["stats:clicks", "stats:spend"]
        got = (applied.retrieval.online(Caller(), "p1", ents, features=features) if sync else
               asyncio.run(applied.retrieval.online_async(Caller(), "p1", ents, features=features)))
        assert got.features["stats__clicks"].values == [3, None, 9, None]
        assert got.features["stats__spend"].values == [None, None, None, None]
        assert [s.value for s in got.features["stats__clicks"].statuses] == ["PRESENT"] * 3 + ["NOT_FOUND"]


def test_store_refuses_a_corrupted_record_and_a_write_replaces_it(applied, redis_url: str) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    _push(applied, "u1", 3, t, "e1")
    layout = applied.registry.layout("p1", "stats")
    client = redis.Redis.from_url(redis_url)
    key = entity_key(layout, ["u1"])
    client.set(key, b'1,2,{"clicks":1}')  # left by older code
    with pytest.raises(RecordError, match="older text format"):
        applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:clicks"])
    _push(applied, "u1", 4, t - timedelta(minutes=5), "e2")  # older event time, but the value is unreadable
    got = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:clicks"])
    assert got.features["stats__clicks"].values == [4]
    # a record of an unknown schema whose description is gone
    raw = client.get(key)
    client.set(key, raw[:1] + b"zzzzzzzz" + raw[9:])
    with pytest.raises(RecordError, match="unknown schema"):
        applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:clicks"])
    assert key.startswith(key_prefix(layout)) and key_prefix(layout).startswith(f"fs{RECORD_FORMAT}:")
    client.close()


def test_write_keeps_the_newer_record(applied, redis_url: str) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    _push(applied, "u1", 3, t, "e1")
    _push(applied, "u1", 99, t - timedelta(seconds=10), "e2")  # late
    got = applied.retrieval.online(Caller(), "p1", {"user_id": ["u1"]}, features=["stats:clicks"])
    assert got.features["stats__clicks"].values == [3]
    raw = redis.Redis.from_url(redis_url).get(entity_key(applied.registry.layout("p1", "stats"), ["u1"]))
    assert raw is not None and struct.unpack_from("<q", raw, 9)[0] == record_times(raw)[0]


def test_lean_mget_client_pipelines_and_reconnects(redis_url: str) -> None:
    from mlp_feature_store.store.redis_mget import AsyncMget

    assert AsyncMget.from_url("rediss://h:6379/0") is None and AsyncMget.from_url("unix:///tmp/r.sock") is None
    client = redis.Redis.from_url(redis_url)
    client.mset({"mget-a": b"1", "mget-b": b"\x00\r\n2"})
    lean = AsyncMget.from_url(redis_url)
    assert lean is not None

    async def scenario() -> None:
        keys = [b"mget-a", b"nope", b"mget-b"]
        got = await asyncio.gather(*(lean.mget(keys) for _ in range(20)))  # one connection, in order
        assert got == [[b"1", None, b"\x00\r\n2"]] * 20
        assert lean._proto is not None and lean._proto.transport is not None
        lean._proto.transport.close()  # the connection dies: the next call opens a new one
        await asyncio.sleep(0)
        assert await lean.mget([b"mget-a"]) == [b"1"]
        lean.close()

    asyncio.run(scenario())
    client.close()
