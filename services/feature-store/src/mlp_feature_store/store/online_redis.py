"""The online store in Redis: one hash per (view version, entity), written only forward in time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from mlp_feature_store.store.base import OnlineRequest, OnlineRows, OnlineStore, OnlineValue, ViewLayout
from mlp_feature_store.store.offline_tables import feat_col, key_col
from mlp_feature_store.store.online_record import RECORD_FORMAT, RecordError, Schema, schema_from_spec
from mlp_feature_store.store.redis_mget import AsyncMget

__all__ = ["RECORD_FORMAT", "RecordError", "RedisOnlineStore", "encode_record", "entity_key", "key_prefix"]

# A record is binary (see ``online_record``): format byte, schema id, event and ingestion time, then
# the values, so that a read of many entities is ONE MGET and one ``struct`` unpack per view. It is
# replaced only if the new row is newer by (event time, ingestion time): a late or replayed row never
# overwrites a newer value, and rerunning a materialization changes nothing. A current value that is
# not a record of this format (corrupted, or left by older code) is replaced.
_WRITE_IF_NEWER = f"""
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 25 and string.byte(cur, 1) == {RECORD_FORMAT} then
  local cev = struct.unpack('<i8', cur, 10)
  local cing = struct.unpack('<i8', cur, 18)
  local ev = tonumber(ARGV[1]); local ing = tonumber(ARGV[2])
  if cev > ev or (cev == ev and cing >= ing) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[4])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
return 1
"""

_WRITE_CHUNK = 1_000

#: Schemas by id (content-addressed, so shared by every store and never stale).
_SCHEMAS: dict[bytes, Schema] = {}
#: The current schema of a view version's layout object (resolved layouts are cached and reused).
_LAYOUT_SCHEMA: dict[int, tuple[ViewLayout, Schema]] = {}


def layout_schema(layout: ViewLayout) -> Schema:
    """The record schema of the view's current feature list."""
    hit = _LAYOUT_SCHEMA.get(id(layout))
    if hit is not None and hit[0] is layout:
        return hit[1]
    schema = Schema(tuple((f.name, f.dtype) for f in layout.view.features))
    schema = _SCHEMAS.setdefault(schema.id, schema)
    if len(_LAYOUT_SCHEMA) > 10_000:
        _LAYOUT_SCHEMA.clear()
    _LAYOUT_SCHEMA[id(layout)] = (layout, schema)
    return schema


def encode_record(layout: ViewLayout, event_us: int, ingested_us: int, values: dict[str, Any]) -> bytes:
    """The stored form of one record of ``layout`` (what the write script stores)."""
    return layout_schema(layout).encode(event_us, ingested_us, values)


def schema_key(layout: ViewLayout, schema_id: bytes) -> str:
    """Where a writer stores the description of a record schema (outside the records' key prefix)."""
    return key_prefix(layout)[:-1] + "#schema:" + schema_id.hex()


def key_prefix(layout: ViewLayout) -> str:
    """The prefix of every record key of one view version."""
    v = layout.view
    return f"fs{RECORD_FORMAT}:{layout.project}:{v.name}:v{v.version}:"


def entity_key(layout: ViewLayout, key: Sequence[Any]) -> str:
    """The Redis key of one entity's record; the key tuple is JSON-encoded so composite keys never collide."""
    return key_prefix(layout) + orjson.dumps(list(key)).decode()


_EVENT = itemgetter(2)  # a decoded record's event time


class _MissingSchemas(Exception):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys


def _rows(requests: Sequence[OnlineRequest], raw: list[Any]) -> list[OnlineRows]:
    """Decode every record of an ``MGET``: one ``iter_unpack`` per view when all its records have the
    view's current fixed-size schema, else record by record with each record's own schema.

    Raises ``_MissingSchemas`` naming the schema keys to load first; ``RecordError`` for a record
    that is not of this format.
    """
    out: list[OnlineRows] = []
    i = 0
    for layout, names, ks in requests:
        part = raw[i:i + len(ks)]
        i += len(ks)
        schema = layout_schema(layout)
        found = [r for r in part if r is not None]
        try:
            decoded = schema.unpack_many(found)
            tuples = list(map(schema.getter(names), decoded))
        except RecordError:
            decoded, tuples = _mixed(layout, schema, names, found)
        if len(found) == len(part):
            out.append((list(map(_EVENT, decoded)), tuples))
            continue
        it = iter(zip(decoded, tuples, strict=True))
        events: list[int | None] = []
        values: list[tuple[Any, ...] | None] = []
        for r in part:
            if r is None:
                events.append(None)
                values.append(None)
            else:
                t, v = next(it)
                events.append(t[2])
                values.append(v)
        out.append((events, values))
    return out


def _mixed(layout: ViewLayout, current: Schema, names: Sequence[str], found: list[bytes]
           ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Records of several schemas (some written before a feature was added in place), one by one."""
    missing = {r[1:9] for r in found if r[:1] == bytes([RECORD_FORMAT]) and len(r) >= 9} - set(_SCHEMAS)
    if missing:
        raise _MissingSchemas([schema_key(layout, sid) for sid in missing])
    decoded = []
    tuples = []
    for r in found:
        schema = _SCHEMAS.get(r[1:9], current) if r[:1] == bytes([RECORD_FORMAT]) else current
        t = schema.unpack(r)
        decoded.append(t)
        tuples.append(schema.getter(names)(t))
    return decoded, tuples


def _learn(specs: list[Any], keys: list[str]) -> None:
    for key, spec in zip(keys, specs, strict=True):
        if spec is None:
            raise RecordError(f"online record of an unknown schema ({key} is missing); rematerialize the view")
        schema = schema_from_spec(spec)
        _SCHEMAS.setdefault(schema.id, schema)


def _count(results: list[Any]) -> int:
    return sum(int(x) for x in results if not isinstance(x, bool))  # SET of the schema answers True


class RedisOnlineStore(OnlineStore):
    """Latest values per entity in Redis: one string record per (view version, entity).

    A read of any number of entities and views is one ``MGET`` (one command, one reply) and decodes the
    records of a view with one ``struct`` call, not one call per record or value. ``read_rows_async`` uses an
    asyncio client (one per event loop) so that a read does not block the loop for the round trip.
    """

    def __init__(self, client: redis.Redis, url: str | None = None) -> None:
        self.client = client
        self.url = url
        self._write_script = client.register_script(_WRITE_IF_NEWER)
        self._async: tuple[asyncio.AbstractEventLoop, AsyncMget | aredis.Redis] | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisOnlineStore:
        """A store on the Redis at ``url``."""
        return cls(redis.Redis.from_url(url), url)

    def write(self, layout: ViewLayout, rows: Iterable[dict[str, Any]]) -> int:
        """See ``OnlineStore.write``; rows carry store column names (k_*, f_*, event_ts, ingested_ts)."""
        ttl_us = (layout.view.ttl_seconds or 0) * 1_000_000
        schema = layout_schema(layout)
        columns = [(f.name, feat_col(f.name)) for f in layout.view.features]
        changed = 0
        pipe = self.client.pipeline(transaction=False)
        pipe.set(schema_key(layout, schema.id), schema.spec())  # readers of older records need it
        pending = 1
        for row in rows:
            key = entity_key(layout, [row[key_col(k)] for k in layout.key_names])
            # Keep an expired record for one more TTL so that reads can say EXPIRED, not NOT_FOUND.
            expire_ms = (row["event_ts"] + 2 * ttl_us) // 1000 if ttl_us else 0
            record = schema.encode(row["event_ts"], row["ingested_ts"], {n: row.get(c) for n, c in columns})
            args: list[Any] = [row["event_ts"], row["ingested_ts"], expire_ms, record]
            self._write_script(keys=[key], args=args, client=pipe)
            pending += 1
            if pending >= _WRITE_CHUNK:
                changed += _count(pipe.execute())
                pending = 0
        if pending:
            changed += _count(pipe.execute())
        return changed

    @staticmethod
    def _keys(requests: Sequence[OnlineRequest]) -> list[bytes]:
        keys: list[bytes] = []
        encoded: dict[int, list[bytes]] = {}  # views of one entity share the key list: encode it once
        for layout, _features, ks in requests:
            prefix = key_prefix(layout).encode()
            suffixes = encoded.get(id(ks))
            if suffixes is None:
                suffixes = encoded[id(ks)] = list(map(orjson.dumps, ks))
            keys += [prefix + s for s in suffixes]
        return keys

    def read(self, requests: Sequence[OnlineRequest]) -> list[list[OnlineValue | None]]:
        """See ``OnlineStore.read``: one ``MGET`` of every requested record, each decoded in full."""
        keys = self._keys(requests)
        raw: list[Any] = self.client.mget(keys) if keys else []
        out: list[list[OnlineValue | None]] = []
        i = 0
        for layout, _names, ks in requests:
            current = layout_schema(layout)
            part: list[OnlineValue | None] = []
            for r in raw[i:i + len(ks)]:
                if r is None:
                    part.append(None)
                    continue
                sid = r[1:9]
                if sid not in _SCHEMAS and r[:1] == bytes([RECORD_FORMAT]):
                    _learn(self.client.mget([schema_key(layout, sid)]), [schema_key(layout, sid)])
                schema = _SCHEMAS.get(sid, current)
                t = schema.unpack(r)
                names = [n for n, _t in schema.columns]
                part.append(OnlineValue(dict(zip(names, schema.getter(names)(t), strict=True)), t[2], t[3]))
            out.append(part)
            i += len(ks)
        return out

    def read_rows(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """See ``OnlineStore.read_rows``: one ``MGET``, one ``struct`` unpack per view."""
        keys = self._keys(requests)
        raw: list[Any] = self.client.mget(keys) if keys else []
        while True:
            try:
                return _rows(requests, raw)
            except _MissingSchemas as missing:
                _learn(self.client.mget(missing.keys), missing.keys)

    async def read_rows_async(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """See ``OnlineStore.read_rows_async``: the ``MGET`` awaits on the running loop's client."""
        if self.url is None:
            return self.read_rows(requests)
        keys = self._keys(requests)
        client = self._async_client()
        raw: list[Any] = await client.mget(keys) if keys else []
        while True:
            try:
                return _rows(requests, raw)
            except _MissingSchemas as missing:
                _learn(await client.mget([k.encode() for k in missing.keys]), missing.keys)

    def _async_client(self) -> AsyncMget | aredis.Redis:
        """The asyncio client of the running loop (asyncio connections belong to the loop that made them):
        the lean pipelined ``AsyncMget`` for plain ``redis://`` URLs, else redis-py's."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            url = self.url or ""
            self._async = (loop, AsyncMget.from_url(url) or aredis.Redis.from_url(url))
        return self._async[1]

    def erase(self, layout: ViewLayout, key_values: dict[str, Any]) -> int:
        """See ``OnlineStore.erase``; a partial key scans the view's records."""
        names = layout.key_names
        if set(key_values) == set(names):
            return int(self.client.delete(entity_key(layout, [key_values[k] for k in names])))
        prefix = key_prefix(layout)
        deleted = 0
        if not key_values:  # the whole view version: its schema descriptions go too
            for raw in self.client.scan_iter(match=prefix[:-1] + "#schema:*", count=1000):
                self.client.delete(raw)
        for raw in self.client.scan_iter(match=prefix + "*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            values = dict(zip(names, json.loads(key[len(prefix):]), strict=True))
            if all(values.get(k) == val for k, val in key_values.items()):
                deleted += int(self.client.delete(key))
        return deleted
