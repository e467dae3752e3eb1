"""The hand-written online response bytes equal the message built with the protobuf API, field for field.

The reference below is the plain way: one message, ``columns.add()`` per column, every list set through
the generated classes. Hypothesis draws results of every shape the retrieval produces: join keys of
each type, views whose columns share one status and age list, transformations with lists of their own,
nulls (also in PRESENT rows), every status, missing ages, declared and undeclared types, both response
shapes and both naming modes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp_core.errors import InvalidArgument
from mlp_feature_store.api.online_wire import STATUS, TO_PB_TYPE, infer_dtype, online_response_bytes
from mlp_feature_store.domain.models import ValueType
from mlp_feature_store.domain.resolve import SEP
from mlp_feature_store.domain.retrieval import FeatureColumn, OnlineResult, ValueStatus
from mlp_protos.mlp.featurestore.v1 import featurestore_pb2 as pb

_LIST = {ValueType.FLOAT64: "double_list_val", ValueType.STRING: "string_list_val", ValueType.BOOL: "bool_list_val",
         ValueType.INT64: "int64_list_val", ValueType.TIMESTAMP: "int64_list_val"}
_FILL: dict[ValueType, Any] = {ValueType.FLOAT64: 0.0, ValueType.STRING: "", ValueType.INT64: 0,
                               ValueType.TIMESTAMP: 0, ValueType.BOOL: False}


def reference(result: OnlineResult, dtypes: dict[str, ValueType], full_names: bool,
              status_per_view: bool) -> pb.GetOnlineFeaturesResponse:
    n = len(next(iter(result.entities.values())))
    out = pb.GetOnlineFeaturesResponse(row_count=n)
    if status_per_view:
        out.status_groups.add(statuses=[pb.FEATURE_STATUS_PRESENT] * n, age_ms=[0] * n)

    def fill(column: pb.FeatureColumn, dtype: ValueType, values: list[Any]) -> None:
        column.dtype = TO_PB_TYPE[dtype]
        typed = getattr(column.values, _LIST[dtype])
        typed.SetInParent()
        typed.values.extend(_FILL[dtype] if v is None else (bool(v) if dtype == ValueType.BOOL else v)
                            for v in values)

    for name, values in result.entities.items():
        column = out.columns.add(name=name)
        fill(column, infer_dtype(values), values)
        if not status_per_view:
            column.statuses.extend([pb.FEATURE_STATUS_PRESENT] * n)
            column.age_ms.extend([0] * n)
    groups: dict[tuple[int, int], int] = {}
    names: set[str] = set()
    for name, col in result.features.items():
        out_name = name if full_names else name.partition(SEP)[2]
        if out_name in names:
            raise InvalidArgument("duplicate")
        names.add(out_name)
        column = out.columns.add(name=out_name)
        fill(column, dtypes.get(name) or infer_dtype(col.values), col.values)
        codes = [STATUS[s] for s in col.statuses]
        ages = [-1 if a is None else int(a * 1000) for a in col.ages_s]
        nulls = [i for i, v in enumerate(col.values) if v is None and codes[i] == pb.FEATURE_STATUS_PRESENT]
        if status_per_view:
            key = (id(col.statuses), id(col.ages_s))
            if key not in groups:
                groups[key] = len(out.status_groups)
                out.status_groups.add(statuses=codes, age_ms=ages)
            column.status_group = groups[key]
            column.null_rows.extend(nulls)
        else:
            for i in nulls:
                codes[i] = pb.FEATURE_STATUS_NULL_VALUE
            column.statuses.extend(codes)
            column.age_ms.extend(ages)
    return out


_TYPES = [ValueType.FLOAT64, ValueType.INT64, ValueType.STRING, ValueType.BOOL, ValueType.TIMESTAMP]
_VALUES = {
    ValueType.FLOAT64: st.floats(allow_nan=False) | st.integers(-(2**53), 2**53),
    ValueType.INT64: st.integers(-(2**63), 2**63 - 1),
    ValueType.TIMESTAMP: st.integers(0, 2**62),
    ValueType.STRING: st.text(max_size=20),
    ValueType.BOOL: st.booleans(),
}


@st.composite
def results(draw: st.DrawFn) -> tuple[OnlineResult, dict[str, ValueType]]:
    n = draw(st.integers(1, 6))
    keys = {}
    for k in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from([ValueType.STRING, ValueType.INT64]))
        keys[f"key{k}"] = draw(st.lists(_VALUES[kind], min_size=n, max_size=n))
    features: dict[str, FeatureColumn] = {}
    dtypes: dict[str, ValueType] = {}
    statuses = st.lists(st.sampled_from(list(ValueStatus)), min_size=n, max_size=n)
    ages = st.lists(st.none() | st.floats(0, 1e6), min_size=n, max_size=n)
    for v in range(draw(st.integers(0, 3))):
        shared_status, shared_ages = draw(statuses), draw(ages)  # a view's columns share them
        for f in range(draw(st.integers(1, 4))):
            dtype = draw(st.sampled_from(_TYPES))
            values = draw(st.lists(st.none() | _VALUES[dtype], min_size=n, max_size=n))
            own = draw(st.booleans())  # a transformation output: lists of its own
            name = f"v{v}{SEP}{draw(st.sampled_from(['a', 'b', 'c', f'f{f}']))}"
            features[name] = FeatureColumn(values=values, statuses=draw(statuses) if own else shared_status,
                                           ages_s=draw(ages) if own else shared_ages)
            if draw(st.booleans()):
                dtypes[name] = dtype
    return OnlineResult(entities=keys, features=features, dtypes=dtypes), dtypes


@given(results(), st.booleans(), st.booleans())
@settings(max_examples=400, deadline=None)
def test_bytes_equal_the_reference_message(case: tuple[OnlineResult, dict[str, ValueType]], full_names: bool,
                                           per_view: bool) -> None:
    result, dtypes = case
    try:
        expected = reference(result, dtypes, full_names, per_view)
    except InvalidArgument:
        with pytest.raises(InvalidArgument):
            online_response_bytes(result, dtypes, full_names, per_view)
        return
    except TypeError:  # an undeclared column whose first value is an int and a later one a float (clashing
        # names, checked for all columns first, may be the error reported instead)
        with pytest.raises((TypeError, struct.error, InvalidArgument)):
            online_response_bytes(result, dtypes, full_names, per_view)
        return
    got = online_response_bytes(result, dtypes, full_names, per_view)
    assert pb.GetOnlineFeaturesResponse.FromString(got) == expected
    assert got == expected.SerializeToString()  # same field order too: the canonical encoding


def test_one_row_fast_paths_and_special_doubles() -> None:
    statuses, ages = [ValueStatus.PRESENT], [0.5]
    result = OnlineResult(entities={"id": ["u1"]}, features={
        f"v{SEP}x": FeatureColumn([math.inf], statuses, ages), f"v{SEP}y": FeatureColumn([-0.0], statuses, ages),
        f"v{SEP}b": FeatureColumn([True], statuses, ages), f"v{SEP}n": FeatureColumn([None], statuses, ages)},
        dtypes={f"v{SEP}x": ValueType.FLOAT64, f"v{SEP}y": ValueType.FLOAT64, f"v{SEP}b": ValueType.BOOL,
                f"v{SEP}n": ValueType.BOOL})
    got = pb.GetOnlineFeaturesResponse.FromString(online_response_bytes(result, result.dtypes, False, True))
    cols = {c.name: c for c in got.columns}
    assert cols["x"].values.double_list_val.values[0] == math.inf
    assert math.copysign(1, cols["y"].values.double_list_val.values[0]) == -1
    assert list(cols["b"].values.bool_list_val.values) == [True]
    assert list(cols["n"].values.bool_list_val.values) == [False] and list(cols["n"].null_rows) == [0]
    assert got == reference(result, result.dtypes, False, True)

