"""Arrow types of feature values on the way out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mlp_feature_store.domain.models import ValueType

ARROW_TYPES: dict[ValueType, pa.DataType] = {
    ValueType.INT64: pa.int64(),
    ValueType.FLOAT64: pa.float64(),
    ValueType.STRING: pa.string(),
    ValueType.BOOL: pa.bool_(),
    ValueType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
}


def to_arrow(dtype: ValueType, values: Sequence[Any]) -> pa.Array:
    """An Arrow array of stored values (timestamps arrive as µs integers)."""
    if dtype == ValueType.TIMESTAMP:
        return pa.array(values, type=pa.int64()).cast(ARROW_TYPES[dtype])
    return pa.array(values, type=ARROW_TYPES[dtype])
