"""REST wire forms: JSON bodies and Arrow files in and out. Domain objects stop here."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.retrieval import OnlineResult
from mlp_feature_store.domain.timeutil import parse_ts

FileFormat = Literal["parquet", "csv", "arrow"]


class _Body(BaseModel):
    """Request bodies refuse unknown fields: nothing can be mass-assigned (tenant, owner, ...)."""

    model_config = ConfigDict(extra="forbid")


class RowsIn(_Body):
    """JSON rows to ingest."""

    rows: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)
    timestamp_column: str = "event_timestamp"


class PushIn(RowsIn):
    """A push event: rows with the id that makes it idempotent."""

    event_id: str = Field(min_length=1, max_length=128)


class FeaturesIn(_Body):
    """Which features to read: references or a feature service."""

    features: list[str] | None = None
    feature_service: str | None = None


class HistoricalIn(FeaturesIn):
    """Entity rows (column → values; timestamps ISO 8601 with offset) for a point-in-time join."""

    entities: dict[str, list[Any]]
    timestamp_column: str = "event_timestamp"
    no_backfill: bool = False
    format: Literal["arrow", "parquet"] = "arrow"


class OnlineIn(FeaturesIn):
    """Entities (join key → values) to read online, with an optional max staleness."""

    entities: dict[str, list[Any]]
    max_staleness_s: float | None = Field(default=None, gt=0)


class MaterializeIn(_Body):
    """An event-time range; empty means incremental since the watermark."""

    start: datetime | None = None
    end: datetime | None = None


class EraseIn(_Body):
    """The entity whose data must be erased."""

    entity: str
    keys: dict[str, Any]


def entity_table(body: HistoricalIn) -> pa.Table:
    """The JSON entity columns as an Arrow table with an explicit-UTC timestamp column."""
    cols = dict(body.entities)
    ts = cols.get(body.timestamp_column)
    if ts is None:
        raise InvalidArgument(f"'entities' lacks the timestamp column '{body.timestamp_column}'")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise InvalidArgument("every entity column must have the same length")
    cols[body.timestamp_column] = pa.array([parse_ts(v, "entity timestamp") for v in ts],
                                           pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    try:
        return pa.table(cols)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidArgument(f"entity columns: {exc}") from None


def online_json(result: OnlineResult) -> dict[str, Any]:
    """Online result: per feature, values, statuses and ages (statuses are str enums: JSON strings)."""
    return {"entities": result.entities, "features": {
        name: {"values": col.values, "statuses": col.statuses, "ages_s": col.ages_s}
        for name, col in result.features.items()}}


def read_batches(spool: tempfile.SpooledTemporaryFile[bytes], fmt: FileFormat,
                 batch_rows: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Record batches of an uploaded file, read incrementally (the file sits on disk, not in memory)."""
    spool.seek(0)
    try:
        if fmt == "parquet":
            yield from pq.ParquetFile(spool).iter_batches(batch_size=batch_rows)
        elif fmt == "csv":
            yield from pacsv.open_csv(spool, read_options=pacsv.ReadOptions(block_size=8 << 20))
        else:
            yield from ipc.open_stream(spool)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"cannot read the {fmt} upload: {exc}") from None


def arrow_stream(first: pa.RecordBatch, batches: Iterator[pa.RecordBatch], fmt: Literal["arrow", "parquet"]
                 ) -> Iterator[bytes]:
    """Serialise batches as an Arrow IPC stream or a Parquet file, chunk by chunk.

    The caller computes ``first`` before the response starts, so that input errors still become a
    problem response rather than a broken stream.
    """
    sink = io.BytesIO()
    writer: Any = (ipc.new_stream(sink, first.schema) if fmt == "arrow"
                   else pq.ParquetWriter(sink, first.schema))
    for batch in _chain(first, batches):
        writer.write_batch(batch) if fmt == "arrow" else writer.write_table(pa.Table.from_batches([batch]))
        yield sink.getvalue()
        sink.seek(0)
        sink.truncate()
    writer.close()
    yield sink.getvalue()


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest
