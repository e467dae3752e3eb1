"""The binary record of one (feature view version, entity) in the online store.

Layout (little-endian, no padding)::

    u8      format (RECORD_FORMAT)
    8 bytes schema id (the first 8 bytes of blake2b over the ordered "name:dtype" list of the writer)
    i64     event time, microseconds since the epoch
    i64     ingestion time, microseconds since the epoch
    N bytes null bitmap, one bit per feature in schema order (bit set = null), N = ceil(features / 8)
    then one fixed-size field per feature in schema order:
            float64 -> f64, int64 -> i64, timestamp -> i64 (µs), bool -> u8, string -> u32 byte length
    then the UTF-8 bytes of every string feature, in schema order

A schema without strings has fixed-size records, so every record of one view in an ``MGET`` reply is
decoded by ONE ``Struct.iter_unpack`` over the joined records (no JSON, no per-value parsing). A
record of another schema (written before a compatible change added a feature in place) is decoded
with its own schema, which the writer stores once under ``schema_key`` and the reader caches by id.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from mlp_feature_store.domain.models import ValueType

#: Version of the record layout; also the first byte of every record and part of every key prefix,
#: so records of an older layout are never read with this decoder (the next materialization rewrites
#: them under the new prefix; until then they read as NOT_FOUND).
RECORD_FORMAT = 3

HEADER = struct.Struct("<B8sqq")
_CODE = {ValueType.FLOAT64: "d", ValueType.INT64: "q", ValueType.TIMESTAMP: "q", ValueType.BOOL: "?",
         ValueType.STRING: "I"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordError(ValueError):
    """A stored record that this code cannot read: another format, truncated, or of an unknown schema."""


@dataclass(frozen=True)
class Schema:
    """The ordered (name, dtype) columns of a record and its compiled codec."""

    columns: tuple[tuple[str, ValueType], ...]

    def __post_init__(self) -> None:
        spec = ",".join(f"{n}:{t.value}" for n, t in self.columns).encode()
        nb = (len(self.columns) + 7) // 8
        fmt = "<B8sqq" + (f"{nb}s" if nb else "") + "".join(_CODE[t] for _n, t in self.columns)
        object.__setattr__(self, "id", hashlib.blake2b(spec, digest_size=8).digest())
        object.__setattr__(self, "nbytes", nb)
        object.__setattr__(self, "struct", struct.Struct(fmt))
        object.__setattr__(self, "strings", tuple(i for i, (_n, t) in enumerate(self.columns)
                                                  if t == ValueType.STRING))
        object.__setattr__(self, "index", {n: i for i, (n, _t) in enumerate(self.columns)})
        object.__setattr__(self, "empty_nulls", bytes(nb))
        object.__setattr__(self, "_getters", {})

    # derived in __post_init__; equality and repr are the columns'
    id: bytes = field(default=b"", compare=False, repr=False)
    nbytes: int = field(default=0, compare=False, repr=False)
    struct: struct.Struct = field(default=HEADER, compare=False, repr=False)
    strings: tuple[int, ...] = field(default=(), compare=False, repr=False)
    index: dict[str, int] | None = field(default=None, compare=False, repr=False)
    empty_nulls: bytes = field(default=b"", compare=False, repr=False)
    _getters: dict[tuple[str, ...], Any] | None = field(default=None, compare=False, repr=False)

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, event_us: int, ingested_us: int, values: dict[str, Any]) -> bytes:
        """One record; a value missing from ``values`` or None is stored as null."""
        nulls = 0
        fixed: list[Any] = []
        tail: list[bytes] = []
        for i, (name, dtype) in enumerate(self.columns):
            v = values.get(name)
            if v is None:
                nulls |= 1 << i
                fixed.append(0 if dtype != ValueType.FLOAT64 else 0.0)
                continue
            if dtype == ValueType.STRING:
                b = str(v).encode()
                tail.append(b)
                fixed.append(len(b))
            elif dtype == ValueType.TIMESTAMP:
                fixed.append(_timestamp_us(v))
            elif dtype == ValueType.FLOAT64:
                fixed.append(float(v))
            elif dtype == ValueType.BOOL:
                fixed.append(bool(v))
            else:
                fixed.append(int(v))
        head = [RECORD_FORMAT, self.id, int(event_us), int(ingested_us)]
        if self.nbytes:
            head.append(nulls.to_bytes(self.nbytes, "little"))
        return self.struct.pack(*head, *fixed) + b"".join(tail)

    def spec(self) -> bytes:
        """The stored description of this schema (what ``schema_from_spec`` reads)."""
        return ",".join(f"{n}:{t.value}" for n, t in self.columns).encode()

    # -- decoding ------------------------------------------------------------------------------

    def getter(self, names: Sequence[str]) -> Any:
        """A function from a decoded record tuple to the values of ``names`` (None for unknown names)."""
        key = tuple(names)
        assert self._getters is not None and self.index is not None
        get = self._getters.get(key)
        if get is None:
            base = 5 if self.nbytes else 4  # format, schema id, event, ingested[, null bitmap]
            idx = [self.index.get(n) for n in names]
            if all(i is not None for i in idx):
                positions = [base + i for i in idx if i is not None]
                if len(positions) == 1:
                    one = positions[0]
                    get = (lambda t: (t[one],))  # noqa: E731
                else:
                    get = itemgetter(*positions)
            else:
                def get(t: tuple[Any, ...], idx: list[int | None] = idx) -> tuple[Any, ...]:
                    return tuple(None if i is None else t[base + i] for i in idx)
            self._getters[key] = get
        return get

    def unpack(self, raw: bytes) -> tuple[Any, ...]:
        """One record as a tuple: header fields, then every feature (strings decoded, nulls as None)."""
        size = self.struct.size
        if len(raw) < size or raw[0] != RECORD_FORMAT:
            raise RecordError(_describe(raw, f"expected at least {size} bytes"))
        t = self.struct.unpack_from(raw)
        if t[1] != self.id:
            raise RecordError("online record of another schema")
        base = 5 if self.nbytes else 4
        if self.strings:
            vals = list(t)
            pos = size
            for i in self.strings:
                n = vals[base + i]
                vals[base + i] = raw[pos:pos + n].decode()
                pos += n
            if pos != len(raw):
                raise RecordError(_describe(raw, f"string lengths add up to {pos} bytes"))
            t = tuple(vals)
        elif len(raw) != size:
            raise RecordError(_describe(raw, f"expected {size} bytes"))
        if self.nbytes and t[4] != self.empty_nulls:
            t = _with_nulls(t, base, len(self.columns))
        return t

    def unpack_many(self, records: list[bytes]) -> list[tuple[Any, ...]]:
        """``unpack`` of many records of this schema; one ``iter_unpack`` when records are fixed-size."""
        if self.strings or not records:
            return [self.unpack(r) for r in records]
        joined = b"".join(records)
        size = self.struct.size
        if len(joined) != size * len(records):
            return [self.unpack(r) for r in records]  # finds and names the bad record
        out = list(self.struct.iter_unpack(joined))
        sid, empty = self.id, self.empty_nulls
        base = 5 if self.nbytes else 4
        for i, t in enumerate(out):
            if t[0] != RECORD_FORMAT or t[1] != sid:
                if t[0] != RECORD_FORMAT:
                    raise RecordError(_describe(records[i], "unknown format"))
                raise RecordError("online record of another schema")
            if self.nbytes and t[4] != empty:
                out[i] = _with_nulls(t, base, len(self.columns))
        return out


def _with_nulls(t: tuple[Any, ...], base: int, count: int) -> tuple[Any, ...]:
    bits = int.from_bytes(t[4], "little")
    vals = list(t)
    for i in range(count):
        if bits >> i & 1:
            vals[base + i] = None
    return tuple(vals)


def _describe(raw: bytes, why: str) -> str:
    if raw[:1] == b"{" or raw[:1].isdigit():
        return "online record in an older text format (rematerialize the view)"
    fmt = raw[0] if raw else None
    return f"unreadable online record (format byte {fmt}, {len(raw)} bytes; {why})"


def _timestamp_us(v: Any) -> int:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        delta = v - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return int(v)


def record_times(raw: bytes) -> tuple[int, int]:
    """(event µs, ingested µs) of a record of this format."""
    if len(raw) < HEADER.size or raw[0] != RECORD_FORMAT:
        raise RecordError(_describe(raw, f"expected at least {HEADER.size} bytes"))
    _f, _sid, ev, ing = HEADER.unpack_from(raw)
    return ev, ing


def schema_from_spec(spec: bytes) -> Schema:
    """The schema a writer stored with ``Schema.spec``."""
    cols = []
    for part in spec.decode().split(","):
        if part:
            name, _, dtype = part.rpartition(":")
            cols.append((name, ValueType(dtype)))
    return Schema(tuple(cols))
