"""Reading features: point-in-time historical retrieval and low-latency online reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.access import READ, Caller, authorize, require_pii
from mlp_feature_store.domain.ingest import ConversionError, convert
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService
from mlp_feature_store.domain.resolve import SEP, Resolved, resolve
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.store.base import PitRequest, ViewLayout


class ValueStatus(StrEnum):
    """Why an online value is (or is not) there."""

    PRESENT = "PRESENT"
    NOT_FOUND = "NOT_FOUND"
    EXPIRED = "EXPIRED"      # older than the view's TTL
    STALE = "STALE"          # older than the request's max staleness


_WORST = [ValueStatus.PRESENT, ValueStatus.STALE, ValueStatus.EXPIRED, ValueStatus.NOT_FOUND]


@dataclass
class FeatureColumn:
    """One output feature for every requested entity: values, statuses and ages in seconds."""

    values: list[Any] = field(default_factory=list)
    statuses: list[ValueStatus] = field(default_factory=list)
    ages_s: list[float | None] = field(default_factory=list)


@dataclass
class OnlineResult:
    """Online features, column by column, in the order requested."""

    entities: dict[str, list[Any]]
    features: dict[str, FeatureColumn]


class RetrievalService:
    """Historical (point-in-time) and online reads, with transformations and the PII rule."""

    def __init__(self, registry: RegistryService, regions: Regions, transforms: TransformRegistry) -> None:
        self.registry = registry
        self.regions = regions
        self.transforms = transforms

    def _resolve(self, caller: Caller, project: str, features: list[str] | None,
                 feature_service: str | None) -> Resolved:
        authorize(caller, project, READ)
        resolved = resolve(self.registry, project, features, feature_service)
        require_pii(caller, resolved.pii)
        return resolved

    # -- historical --------------------------------------------------------------------------

    def historical(self, caller: Caller, project: str, entity_rows: pa.Table, *,
                   features: list[str] | None = None, feature_service: str | None = None,
                   timestamp_column: str = "event_timestamp", no_backfill: bool = False,
                   batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        """One output row per entity row, in order: the entity columns plus each feature's value as of
        that row's timestamp (latest event ≤ timestamp within TTL, ties by ingestion time).

        ``no_backfill``: ignore rows ingested after the row's timestamp (what a model could have seen).
        """
        resolved = self._resolve(caller, project, features, feature_service)
        if entity_rows.num_rows == 0:
            raise InvalidArgument("the entity rows are empty")
        clash = [c for c in entity_rows.column_names if SEP in c]
        if clash:
            raise InvalidArgument(f"entity column(s) {clash} contain '{SEP}', reserved for feature columns")
        stores = self.regions.get(resolved.region)
        requests = [PitRequest(layout=p.layout, features=tuple(p.features + sorted(p.hidden)),
                               prefix=f"{name}{SEP}") for name, p in resolved.views.items()]
        batches = stores.offline.historical(requests, entity_rows, timestamp_column, no_backfill, batch_size)
        return self._finish(resolved, entity_rows.column_names, batches)

    def _finish(self, resolved: Resolved, entity_cols: list[str], batches: Iterator[pa.RecordBatch]
                ) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            columns = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
            for odt, wanted in resolved.transforms:
                inputs = {ref: columns[_ref_column(ref)].to_pylist() for ref in odt.inputs}
                result = self.transforms.run(odt.function, inputs, wanted, batch.num_rows)
                for w in wanted:
                    columns[f"{odt.name}{SEP}{w}"] = pa.array(result[w])
            names = entity_cols + resolved.outputs
            yield pa.RecordBatch.from_arrays([columns[n] for n in names], names=names)

    # -- online ------------------------------------------------------------------------------

    def online(self, caller: Caller, project: str, entities: dict[str, list[Any]], *,
               features: list[str] | None = None, feature_service: str | None = None,
               max_staleness_s: float | None = None, now: int | None = None) -> OnlineResult:
        """The latest value of each feature per entity, with status and age; expired values are missing."""
        resolved = self._resolve(caller, project, features, feature_service)
        n = _entity_count(entities)
        now = now if now is not None else now_us()
        stores = self.regions.get(resolved.region)
        requests: list[tuple[ViewLayout, list[str], list[tuple[Any, ...]]]] = []
        for part in resolved.views.values():
            keys = _entity_keys(part.layout, entities, n)
            requests.append((part.layout, part.features + sorted(part.hidden), keys))
        stored = stores.online.read(requests) if requests else []
        columns: dict[str, FeatureColumn] = {}
        for (layout, names, _keys), values in zip(requests, stored, strict=True):
            ttl_us = (layout.view.ttl_seconds or 0) * 1_000_000
            for fname in names:
                col = FeatureColumn()
                for v in values:
                    if v is None:
                        col.values.append(None)
                        col.statuses.append(ValueStatus.NOT_FOUND)
                        col.ages_s.append(None)
                        continue
                    age = now - v.event_us
                    status = ValueStatus.PRESENT
                    if ttl_us and age > ttl_us:
                        status = ValueStatus.EXPIRED
                    elif max_staleness_s is not None and age > max_staleness_s * 1_000_000:
                        status = ValueStatus.STALE
                    col.values.append(v.values[fname] if status == ValueStatus.PRESENT else None)
                    col.statuses.append(status)
                    col.ages_s.append(age / 1_000_000)
                columns[f"{layout.view.name}{SEP}{fname}"] = col
        for odt, wanted in resolved.transforms:
            inputs = [columns[_ref_column(ref)] for ref in odt.inputs]
            result = self.transforms.run(odt.function, {ref: c.values for ref, c in zip(
                odt.inputs, inputs, strict=True)}, wanted, n)
            statuses = [max((c.statuses[i] for c in inputs), key=_WORST.index) for i in range(n)]
            ages = [max([a for c in inputs if (a := c.ages_s[i]) is not None], default=None) for i in range(n)]
            for w in wanted:
                columns[f"{odt.name}{SEP}{w}"] = FeatureColumn(list(result[w]), list(statuses), list(ages))
        return OnlineResult(entities=entities, features={name: columns[name] for name in resolved.outputs})


def _ref_column(ref: str) -> str:
    head, _, feature = ref.partition(":")
    return f"{head.partition('@')[0]}{SEP}{feature}"


def _entity_count(entities: dict[str, list[Any]]) -> int:
    lengths = {len(v) for v in entities.values()}
    if not entities or len(lengths) != 1:
        raise InvalidArgument("'entities' must map each join key to a list, all lists of the same length")
    n = lengths.pop()
    if n == 0:
        raise InvalidArgument("no entities requested")
    return n


def _entity_keys(layout: ViewLayout, entities: dict[str, list[Any]], n: int) -> list[tuple[Any, ...]]:
    columns = []
    for key in layout.keys:
        if key.name not in entities:
            raise InvalidArgument(f"feature view '{layout.view.name}' needs join key '{key.name}'")
        try:
            columns.append([convert(key.dtype, v) for v in entities[key.name]])
        except ConversionError as exc:
            raise InvalidArgument(f"join key '{key.name}': {exc}") from exc
    return [tuple(c[i] for c in columns) for i in range(n)]
