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

# A record is one string "<event µs>,<ingested µs>,<JSON object of feature values>", so that a read of
# many entities is ONE MGET. It is replaced only if the new row is newer by (event time, ingestion
# time): a late or replayed row never overwrites a newer value, and rerunning a materialization
# changes nothing.
_WRITE_IF_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local cev, cing = string.match(cur, '^(%d+),(%d+),')
  cev = tonumber(cev); cing = tonumber(cing)
  local ev = tonumber(ARGV[1]); local ing = tonumber(ARGV[2])
  if cev > ev or (cev == ev and cing >= ing) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ',' .. ARGV[2] .. ',' .. ARGV[4])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
return 1
"""

_WRITE_CHUNK = 1_000


def encode_record(event_us: int, ingested_us: int, values: dict[str, Any]) -> bytes:
    """The stored form of one record (what the write script builds)."""
    return b"%d,%d," % (event_us, ingested_us) + orjson.dumps(values)


def _decode(raw: bytes | None) -> OnlineValue | None:
    if raw is None:
        return None
    ev, ing, blob = raw.split(b",", 2)
    return OnlineValue(orjson.loads(blob), int(ev), int(ing))


#: Version of the record layout in Redis; bump it when the encoding changes so old records are
#: never read with the new decoder (they are rebuilt by the next materialization).
RECORD_FORMAT = 2


def key_prefix(layout: ViewLayout) -> str:
    """The prefix of every record key of one view version."""
    v = layout.view
    return f"fs{RECORD_FORMAT}:{layout.project}:{v.name}:v{v.version}:"


def entity_key(layout: ViewLayout, key: Sequence[Any]) -> str:
    """The Redis key of one entity's record; the key tuple is JSON-encoded so composite keys never collide."""
    return key_prefix(layout) + orjson.dumps(list(key)).decode()


def _getter(names: Sequence[str]) -> Any:
    """A C-level function from a record's value dict to the tuple of ``names`` (KeyError if one is absent)."""
    if len(names) == 1:
        one = itemgetter(names[0])
        return lambda d: (one(d),)
    return itemgetter(*names)


def _rows(requests: Sequence[OnlineRequest], raw: list[Any]) -> list[OnlineRows]:
    """Decode every record of an ``MGET`` with ONE ``orjson.loads``.

    A record ``<event>,<ingested>,<JSON object>`` wrapped in brackets is the JSON array
    ``[event, ingested, {...}]``, so the whole reply joins into one JSON document.
    """
    if not raw:
        return [([], []) for _ in requests]
    if None in raw:
        found = [r for r in raw if r is not None]
        decoded: list[Any] = orjson.loads(b"[[" + b"],[".join(found) + b"]]") if found else []
        it = iter(decoded)
        records: list[Any] = [None if r is None else next(it) for r in raw]
    else:
        records = orjson.loads(b"[[" + b"],[".join(raw) + b"]]")
    out: list[OnlineRows] = []
    i = 0
    for _layout, names, ks in requests:
        part = records[i:i + len(ks)]
        i += len(ks)
        get = _getter(names)
        values: list[tuple[Any, ...] | None] = []
        try:
            values = [None if rec is None else get(rec[2]) for rec in part]
        except KeyError:  # a record without some feature (never written by this code): read it as null
            values = [None if rec is None else tuple(rec[2].get(f) for f in names) for rec in part]
        out.append(([None if rec is None else rec[0] for rec in part], values))
    return out


class RedisOnlineStore(OnlineStore):
    """Latest values per entity in Redis: one string record per (view version, entity).

    A read of any number of entities and views is one ``MGET`` (one command, one reply) and decodes the
    whole reply with one ``orjson.loads``, not one call per record or value. ``read_rows_async`` uses an
    asyncio client (one per event loop) so that a read does not block the loop for the round trip.
    """

    def __init__(self, client: redis.Redis, url: str | None = None) -> None:
        self.client = client
        self.url = url
        self._write_script = client.register_script(_WRITE_IF_NEWER)
        self._async: tuple[asyncio.AbstractEventLoop, aredis.Redis] | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisOnlineStore:
        """A store on the Redis at ``url``."""
        return cls(redis.Redis.from_url(url), url)

    def write(self, layout: ViewLayout, rows: Iterable[dict[str, Any]]) -> int:
        """See ``OnlineStore.write``; rows carry store column names (k_*, f_*, event_ts, ingested_ts)."""
        ttl_us = (layout.view.ttl_seconds or 0) * 1_000_000
        changed = 0
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        for row in rows:
            key = entity_key(layout, [row[key_col(k)] for k in layout.key_names])
            # Keep an expired record for one more TTL so that reads can say EXPIRED, not NOT_FOUND.
            expire_ms = (row["event_ts"] + 2 * ttl_us) // 1000 if ttl_us else 0
            values = {f.name: row.get(feat_col(f.name)) for f in layout.view.features}
            args: list[Any] = [row["event_ts"], row["ingested_ts"], expire_ms, orjson.dumps(values)]
            self._write_script(keys=[key], args=args, client=pipe)
            pending += 1
            if pending >= _WRITE_CHUNK:
                changed += sum(int(x) for x in pipe.execute())
                pending = 0
        if pending:
            changed += sum(int(x) for x in pipe.execute())
        return changed

    @staticmethod
    def _keys(requests: Sequence[OnlineRequest]) -> list[bytes]:
        keys: list[bytes] = []
        for layout, _features, ks in requests:
            prefix = key_prefix(layout).encode()
            keys += [prefix + orjson.dumps(key) for key in ks]
        return keys

    def read(self, requests: Sequence[OnlineRequest]) -> list[list[OnlineValue | None]]:
        """See ``OnlineStore.read``: one ``MGET`` of every requested record."""
        keys = self._keys(requests)
        raw: list[Any] = self.client.mget(keys) if keys else []
        out: list[list[OnlineValue | None]] = []
        i = 0
        for _layout, _features, ks in requests:
            out.append([_decode(r) for r in raw[i:i + len(ks)]])
            i += len(ks)
        return out

    def read_rows(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """See ``OnlineStore.read_rows``: one ``MGET``, one JSON decode."""
        keys = self._keys(requests)
        return _rows(requests, self.client.mget(keys) if keys else [])

    async def read_rows_async(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """See ``OnlineStore.read_rows_async``: the ``MGET`` awaits on the running loop's client."""
        if self.url is None:
            return self.read_rows(requests)
        keys = self._keys(requests)
        raw: list[Any] = await self._async_client().mget(keys) if keys else []
        return _rows(requests, raw)

    def _async_client(self) -> aredis.Redis:
        """The asyncio client of the running loop (asyncio connections belong to the loop that made them)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, aredis.Redis.from_url(self.url or ""))
        return self._async[1]

    def erase(self, layout: ViewLayout, key_values: dict[str, Any]) -> int:
        """See ``OnlineStore.erase``; a partial key scans the view's records."""
        names = layout.key_names
        if set(key_values) == set(names):
            return int(self.client.delete(entity_key(layout, [key_values[k] for k in names])))
        prefix = key_prefix(layout)
        deleted = 0
        for raw in self.client.scan_iter(match=prefix + "*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            values = dict(zip(names, json.loads(key[len(prefix):]), strict=True))
            if all(values.get(k) == val for k, val in key_values.items()):
                deleted += int(self.client.delete(key))
        return deleted
