"""The online store in Redis: one hash per (view version, entity), written only forward in time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis

from mlp_feature_store.store.base import OnlineStore, OnlineValue, ViewLayout
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


class RedisOnlineStore(OnlineStore):
    """Latest values per entity in Redis: one string record per (view version, entity).

    A read of any number of entities and views is one ``MGET`` (one command, one reply) and decodes one
    JSON blob per record, not one value per feature.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._write_script = client.register_script(_WRITE_IF_NEWER)

    @classmethod
    def from_url(cls, url: str) -> RedisOnlineStore:
        """A store on the Redis at ``url``."""
        return cls(redis.Redis.from_url(url))

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

    def read(self, requests: Sequence[tuple[ViewLayout, Sequence[str], Sequence[tuple[Any, ...]]]]
             ) -> list[list[OnlineValue | None]]:
        """See ``OnlineStore.read``: one ``MGET`` of every requested record."""
        keys = [key_prefix(layout) + orjson.dumps(key).decode() for layout, _f, ks in requests for key in ks]
        raw: list[Any] = self.client.mget(keys) if keys else []
        out: list[list[OnlineValue | None]] = []
        i = 0
        for _layout, _features, ks in requests:
            out.append([_decode(r) for r in raw[i:i + len(ks)]])
            i += len(ks)
        return out

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
