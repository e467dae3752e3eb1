"""Reading features: point-in-time historical retrieval and low-latency online reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.access import READ, Caller, authorize, require_pii
from mlp_feature_store.domain.ingest import ConversionError, convert
from mlp_feature_store.domain.models import ValueType
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService
from mlp_feature_store.domain.resolve import SEP, Resolved, resolve
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.store.base import OnlineRequest, OnlineRows, PitRequest, ViewLayout


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
    dtypes: dict[str, ValueType] = field(default_factory=dict)


class RetrievalService:
    """Historical (point-in-time) and online reads, with transformations and the PII rule."""

    def __init__(self, registry: RegistryService, regions: Regions, transforms: TransformRegistry,
                 cache_s: float = 2.0) -> None:
        self.registry = registry
        self.regions = regions
        self.transforms = transforms
        #: How long an online read reuses a feature resolution; local applies invalidate it at once,
        #: other replicas' applies become visible within this time.
        self.cache_s = cache_s
        self._cache: dict[tuple[Any, ...], tuple[float, tuple[int, int], Resolved]] = {}

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
        """The latest value of each feature per entity, with status and age; expired values are missing.

        Column-wise: one status and age per (view, entity) is shared by all features of that view, and
        the feature columns of a view are one transpose of its records' value tuples.
        """
        resolved, n, requests = self._online_plan(caller, project, entities, features, feature_service)
        now = now if now is not None else now_us()
        rows = self.regions.get(resolved.region).online.read_rows(requests) if requests else []
        return self._online_finish(resolved, entities, n, requests, rows, now, max_staleness_s)

    async def online_async(self, caller: Caller, project: str, entities: dict[str, list[Any]], *,
                           features: list[str] | None = None, feature_service: str | None = None,
                           max_staleness_s: float | None = None, now: int | None = None) -> OnlineResult:
        """``online`` for an event loop: the store read awaits instead of blocking the loop."""
        resolved, n, requests = self._online_plan(caller, project, entities, features, feature_service)
        now = now if now is not None else now_us()
        rows = await self.regions.get(resolved.region).online.read_rows_async(requests) if requests else []
        return self._online_finish(resolved, entities, n, requests, rows, now, max_staleness_s)

    def _online_plan(self, caller: Caller, project: str, entities: dict[str, list[Any]],
                     features: list[str] | None, feature_service: str | None
                     ) -> tuple[Resolved, int, list[OnlineRequest]]:
        resolved = self._resolve_cached(caller, project, features, feature_service)
        n = _entity_count(entities)
        converted: dict[str, list[Any]] = {}
        requests: list[OnlineRequest] = []
        for part in resolved.views.values():
            keys = _entity_keys(part.layout, entities, n, converted)
            names = part.online_names
            if names is None:
                names = part.online_names = tuple(part.features + sorted(part.hidden))
            requests.append((part.layout, names, keys))
        return resolved, n, requests

    def _online_finish(self, resolved: Resolved, entities: dict[str, list[Any]], n: int,
                       requests: list[OnlineRequest], rows: list[OnlineRows], now: int,
                       max_staleness_s: float | None) -> OnlineResult:
        columns: dict[str, FeatureColumn] = {}
        stale_us = None if max_staleness_s is None else max_staleness_s * 1_000_000
        for (layout, names, _keys), (events, values) in zip(requests, rows, strict=True):
            statuses, ages = _statuses(events, now, (layout.view.ttl_seconds or 0) * 1_000_000, stale_us)
            empty = (None,) * len(names)
            present = [vals if st is _PRESENT and vals is not None else empty
                       for vals, st in zip(values, statuses, strict=True)]
            prefix = f"{layout.view.name}{SEP}"
            for fname, col in zip(names, zip(*present, strict=True), strict=True):
                columns[prefix + fname] = FeatureColumn(list(col), statuses, ages)
        for odt, wanted in resolved.transforms:
            inputs = [columns[_ref_column(ref)] for ref in odt.inputs]
            result = self.transforms.run(odt.function, {ref: c.values for ref, c in zip(
                odt.inputs, inputs, strict=True)}, wanted, n)
            statuses = [max((c.statuses[i] for c in inputs), key=_WORST.index) for i in range(n)]
            ages = [max([a for c in inputs if (a := c.ages_s[i]) is not None], default=None) for i in range(n)]
            for w in wanted:
                columns[f"{odt.name}{SEP}{w}"] = FeatureColumn(list(result[w]), statuses, ages)
        return OnlineResult(entities=entities, features={name: columns[name] for name in resolved.outputs},
                            dtypes=resolved.dtypes)

    def _resolve_cached(self, caller: Caller, project: str, features: list[str] | None,
                        feature_service: str | None) -> Resolved:
        """``_resolve`` with the resolution cached for ``cache_s`` (the access checks always run)."""
        authorize(caller, project, READ)
        key = (project, tuple(features or ()), feature_service, self.registry.generation)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            resolved = hit[2]
        else:
            # Revalidate with one cheap query; resolve again only when the project's definitions changed.
            stamp = self.registry.store.stamp(project)
            if hit is not None and hit[1] == stamp:
                resolved = hit[2]
            else:
                resolved = resolve(self.registry, project, features, feature_service)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self.cache_s, stamp, resolved)
        require_pii(caller, resolved.pii)
        return resolved


_PRESENT = ValueStatus.PRESENT


def _statuses(events: list[int | None], now: int, ttl_us: int, stale_us: float | None
              ) -> tuple[list[ValueStatus], list[float | None]]:
    """Per entity record (its event time, None when not found): its status (not found, expired by TTL,
    stale, present) and age in seconds."""
    statuses: list[ValueStatus] = []
    ages: list[float | None] = []
    for event_us in events:
        if event_us is None:
            statuses.append(ValueStatus.NOT_FOUND)
            ages.append(None)
            continue
        age = now - event_us
        if ttl_us and age > ttl_us:
            statuses.append(ValueStatus.EXPIRED)
        elif stale_us is not None and age > stale_us:
            statuses.append(ValueStatus.STALE)
        else:
            statuses.append(_PRESENT)
        ages.append(age / 1_000_000)
    return statuses, ages


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


def _entity_keys(layout: ViewLayout, entities: dict[str, list[Any]], n: int,
                 converted: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """Typed key tuples of one view; ``converted`` memoizes key columns shared by several views."""
    signature = "keys:" + ",".join(f"{k.name}:{k.dtype}" for k in layout.keys)
    shared = converted.get(signature)
    if shared is not None:  # another view of the same entity: the same key tuples (one list object)
        return shared
    columns = []
    for key in layout.keys:
        if key.name not in entities:
            raise InvalidArgument(f"feature view '{layout.view.name}' needs join key '{key.name}'")
        cache_key = f"{key.name}:{key.dtype}"
        column = converted.get(cache_key)
        if column is None:
            try:
                column = [convert(key.dtype, v) for v in entities[key.name]]
            except ConversionError as exc:
                raise InvalidArgument(f"join key '{key.name}': {exc}") from exc
            converted[cache_key] = column
        columns.append(column)
    keys = [(v,) for v in columns[0]] if len(columns) == 1 else list(zip(*columns, strict=True))
    converted[signature] = keys
    return keys
