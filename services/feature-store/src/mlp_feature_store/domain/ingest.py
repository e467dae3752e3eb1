"""Turning incoming Arrow batches into typed store rows, with data-quality checks per row.

A row that fails a type conversion or an expectation is quarantined with its reasons; the others are
written. Schema problems (a missing key column, an unknown column, a naive timestamp column) refuse the
whole ingest before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.models import ExpectationKind, FeatureView, ValueType
from mlp_feature_store.domain.quality import failing_rows
from mlp_feature_store.domain.timeutil import parse_ts, to_us
from mlp_feature_store.store.base import PreparedBatch, ViewLayout
from mlp_feature_store.store.offline_tables import feat_col, key_col


class ConversionError(ValueError):
    """A value that cannot be stored as the declared type."""


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ConversionError(f"{v!r} is a bool, not an int64")
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise ConversionError(f"{v!r} is out of int64 range")
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return _to_int(int(v.strip()))
        except ValueError as exc:
            raise ConversionError(f"{v!r} is not an integer") from exc
    raise ConversionError(f"{v!r} is not an integer")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ConversionError(f"{v!r} is a bool, not a float64")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError as exc:
            raise ConversionError(f"{v!r} is not a number") from exc
    raise ConversionError(f"{v!r} is not a number")


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise ConversionError(f"{v!r} is not a string")


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConversionError(f"{v!r} is not a bool")


def _to_ts(v: Any) -> int:
    if isinstance(v, datetime | str):
        try:
            return parse_ts(v)
        except InvalidArgument as exc:
            raise ConversionError(exc.detail) from exc
    raise ConversionError(f"{v!r} is not a timestamp")


CONVERTERS: dict[ValueType, Callable[[Any], Any]] = {
    ValueType.INT64: _to_int,
    ValueType.FLOAT64: _to_float,
    ValueType.STRING: _to_str,
    ValueType.BOOL: _to_bool,
    ValueType.TIMESTAMP: _to_ts,
}


def convert(dtype: ValueType, value: Any) -> Any:
    """``value`` as stored for ``dtype`` (None stays None); ``ConversionError`` if impossible."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value) and dtype != ValueType.FLOAT64:
        return None
    return CONVERTERS[dtype](value)


def check_schema(layout: ViewLayout, schema: pa.Schema, ts_column: str) -> None:
    """Refuse a batch whose columns don't fit the view (before anything is written)."""
    names = set(schema.names)
    missing = [k for k in layout.key_names if k not in names]
    if ts_column not in names:
        missing.append(ts_column)
    if missing:
        raise InvalidArgument(f"the rows lack column(s) {missing}; every row needs the join keys and "
                              f"the event timestamp column '{ts_column}'")
    known = set(layout.key_names) | {f.name for f in layout.view.features} | {ts_column}
    unknown = sorted(names - known)
    if unknown:
        raise InvalidArgument(f"column(s) {unknown} are not features of view '{layout.view.name}'; "
                              "add them to the definition first or drop them")
    ts_type = schema.field(ts_column).type
    if pa.types.is_timestamp(ts_type) and ts_type.tz is None:
        raise InvalidArgument(f"column '{ts_column}' is a timestamp without time zone; give it one (UTC)")


class BatchPreparer:
    """Converts and checks batches for one ingest; keeps state for uniqueness across batches."""

    def __init__(self, layout: ViewLayout, ts_column: str, now_us: int) -> None:
        self.layout = layout
        self.ts_column = ts_column
        self.now_us = now_us
        self._seen: dict[str, set[Any]] = {}

    def prepare(self, batches: Iterable[pa.RecordBatch]) -> Iterator[PreparedBatch]:
        """Yield one ``PreparedBatch`` per input batch."""
        for batch in batches:
            check_schema(self.layout, batch.schema, self.ts_column)
            yield self._prepare_one(batch)

    def _prepare_one(self, batch: pa.RecordBatch) -> PreparedBatch:
        view = self.layout.view
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        good: list[dict[str, Any]] = []
        good_raw: list[dict[str, Any]] = []
        bad: list[tuple[dict[str, Any], list[str]]] = []
        for i in range(batch.num_rows):
            raw = {name: values[i] for name, values in cols.items()}
            row, reasons = self._convert_row(view, raw)
            if not reasons:
                reasons = self._expectations(view, row)
            if reasons:
                bad.append((_jsonable(raw), reasons))
            else:
                good.append(row)
                good_raw.append(raw)
        for i, exp in enumerate(view.expectations):
            if exp.kind == ExpectationKind.SQL and good and exp.query:
                failing = self._sql_failures(exp.query, good)
                if failing:
                    reason = f"sql:expectation {i}: selected by the SQL expectation"
                    bad += [(_jsonable(good_raw[j]), [reason]) for j in sorted(failing) if j < len(good)]
                    good = [r for j, r in enumerate(good) if j not in failing]
                    good_raw = [r for j, r in enumerate(good_raw) if j not in failing]
        return PreparedBatch(good=good, bad=bad)

    def _sql_failures(self, query: str, good: list[dict[str, Any]]) -> set[int]:
        names = [*self.layout.key_names, "event_ts", *[f.name for f in self.layout.view.features]]
        cols = [*[key_col(k) for k in self.layout.key_names], "event_ts",
                *[feat_col(f.name) for f in self.layout.view.features]]
        return failing_rows(query, names, [[row.get(c) for c in cols] for row in good])

    def _convert_row(self, view: FeatureView, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        row: dict[str, Any] = {}
        reasons: list[str] = []
        for key in self.layout.keys:
            try:
                value = convert(key.dtype, raw[key.name])
            except ConversionError as exc:
                reasons.append(f"type:{key.name}: {exc}")
                continue
            if value is None:
                reasons.append(f"key:{key.name}: join key is null")
            row[key_col(key.name)] = value
        try:
            ts = raw[self.ts_column]
            if ts is None:
                reasons.append(f"timestamp:{self.ts_column}: event timestamp is null")
            else:
                row["event_ts"] = to_us(ts) if isinstance(ts, datetime) else _to_ts(ts)
        except (ConversionError, InvalidArgument) as exc:
            reasons.append(f"timestamp:{self.ts_column}: {exc}")
        for feature in view.features:
            try:
                row[feat_col(feature.name)] = convert(feature.dtype, raw.get(feature.name))
            except ConversionError as exc:
                reasons.append(f"type:{feature.name}: {exc}")
        return row, reasons

    def _expectations(self, view: FeatureView, row: dict[str, Any]) -> list[str]:
        reasons: list[str] = []
        for exp in view.expectations:
            value = row.get(feat_col(exp.feature)) if exp.feature else None
            if exp.kind == ExpectationKind.NOT_NULL and value is None:
                reasons.append(f"not_null:{exp.feature}")
            elif exp.kind == ExpectationKind.RANGE and value is not None and (
                    (exp.min is not None and value < exp.min) or (exp.max is not None and value > exp.max)):
                reasons.append(f"range:{exp.feature}: {value!r} outside [{exp.min}, {exp.max}]")
            elif exp.kind == ExpectationKind.ALLOWED_VALUES and value is not None and value not in (
                    exp.values or []):
                reasons.append(f"allowed_values:{exp.feature}: {value!r} not allowed")
            elif exp.kind == ExpectationKind.FRESHNESS and exp.max_age_seconds is not None and (
                    self.now_us - row["event_ts"] > exp.max_age_seconds * 1_000_000):
                reasons.append(f"freshness: event older than {exp.max_age_seconds}s")
            elif exp.kind == ExpectationKind.UNIQUE:
                ident: Any = value if exp.feature else (
                    tuple(row[key_col(k)] for k in self.layout.key_names), row["event_ts"])
                seen = self._seen.setdefault(exp.feature or "", set())
                if ident in seen:
                    reasons.append(f"unique:{exp.feature or 'keys+event_ts'}: duplicate in this ingest")
                elif ident is not None:
                    seen.add(ident)
        return reasons


def _jsonable(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None or isinstance(v, bool | int | str):
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else str(v)
        elif isinstance(v, datetime):
            out[k] = v.isoformat()
        else:
            out[k] = str(v)
    return out
