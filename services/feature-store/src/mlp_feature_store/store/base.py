"""Interfaces of the feature store's storage: registry, offline (SQL) and online (key-value) stores.

Each backend implements one of these; contract tests run every implementation through the same cases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mlp_feature_store.domain.events import DomainEvent
from mlp_feature_store.domain.models import FeatureView, JoinKey

#: Builds the events of an ingest from its result, inside the write transaction (it may raise to abort).
IngestEvents = Callable[["IngestResult"], Sequence[DomainEvent]]


@dataclass(frozen=True)
class StoredDefinition:
    """A definition as the registry holds it."""

    project: str
    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    created_us: int
    updated_us: int


@dataclass(frozen=True)
class DefinitionWrite:
    """One definition version to insert or replace."""

    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    #: Optimistic concurrency: None = the version must not exist yet; else its ``updated_us`` as planned.
    expected_updated_us: int | None = None


class RegistryStore(ABC):
    """Versioned definitions per project and kind."""

    @abstractmethod
    def get(self, project: str, kind: str, name: str, version: int | None = None) -> StoredDefinition | None:
        """One definition; the newest version when ``version`` is None."""

    @abstractmethod
    def query(self, project: str | None, kind: str | None = None, latest_only: bool = True
             ) -> list[StoredDefinition]:
        """Definitions of a project (every project when None), newest version of each by default."""

    @abstractmethod
    def put_all(self, project: str, writes: Sequence[DefinitionWrite], events: Sequence[DomainEvent] = ()
                ) -> list[StoredDefinition]:
        """Insert new versions or replace specs, plus ``events``, in ONE transaction.

        Raises ``Conflict`` when a version exists that should not, or changed since it was planned.
        """

    def put(self, project: str, kind: str, name: str, version: int, spec: dict[str, Any]) -> StoredDefinition:
        """Insert a new version or replace the spec of an existing one (no event)."""
        return self.put_all(project, [DefinitionWrite(kind, name, version, spec)])[0]

    @abstractmethod
    def delete(self, project: str, kind: str, name: str) -> int:
        """Delete every version; returns how many were deleted."""

    @abstractmethod
    def stamp(self, project: str) -> tuple[int, int]:
        """(number of definitions, newest ``updated_us``) of a project: changes whenever a definition does."""


@dataclass(frozen=True)
class ViewLayout:
    """What the offline and online stores need to know about one feature view version."""

    project: str
    view: FeatureView
    keys: tuple[JoinKey, ...]

    @property
    def key_names(self) -> list[str]:
        """Join key names in order."""
        return [k.name for k in self.keys]


@dataclass
class IngestResult:
    """Counts and the quality report of one ingest."""

    run_id: str
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    ingested_us: int = 0


@dataclass(frozen=True)
class PreparedBatch:
    """Rows of one batch already converted to store values, split into good and quarantined."""

    good: list[dict[str, Any]]
    bad: list[tuple[dict[str, Any], list[str]]]


@dataclass(frozen=True)
class PitRequest:
    """One feature view's part of a point-in-time join."""

    layout: ViewLayout
    features: tuple[str, ...]
    prefix: str


class OfflineStore(ABC):
    """Append-only, time-stamped feature rows in SQL, one table per feature view version."""

    @abstractmethod
    def ensure_table(self, layout: ViewLayout) -> None:
        """Create the view's table, or add columns for features added compatibly."""

    @abstractmethod
    def write(self, layout: ViewLayout, batches: Iterable[PreparedBatch], result: IngestResult,
              source: str, receipt: str | None = None, events: IngestEvents | None = None
              ) -> IngestResult | None:
        """Append good rows and quarantine bad ones in ONE transaction, with the ingestion run record
        and the events that ``events(result)`` returns.

        ``receipt``: an event id recorded in the same transaction; if it was recorded before, nothing is
        written and None is returned (idempotent push ingestion).
        """

    @abstractmethod
    def receipt_time(self, receipt: str) -> int | None:
        """The ingestion time (µs) of the push recorded under ``receipt``; None if unknown."""

    @abstractmethod
    def historical(self, requests: Sequence[PitRequest], entity_rows: pa.Table, ts_column: str,
                   no_backfill: bool, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        """Point-in-time join pushed down to SQL; one output row per entity row, in input order."""

    @abstractmethod
    def latest_rows(self, layout: ViewLayout, *, after_ingested_us: int | None, until_ingested_us: int,
                    event_from_us: int | None = None, event_to_us: int | None = None
                    ) -> Iterator[dict[str, Any]]:
        """Per entity, the newest row among those ingested in (after, until] (and in the event range)."""

    @abstractmethod
    def erase(self, layout: ViewLayout, key_values: dict[str, Any]) -> int:
        """Delete every row whose keys match ``key_values`` (a subset of the view's keys)."""

    @abstractmethod
    def erase_quarantined(self, project: str, view: str, key_values: dict[str, Any]) -> int:
        """Delete the view's quarantined rows (any version) whose raw keys match ``key_values``."""

    @abstractmethod
    def ingestion_runs(self, project: str, view: str, limit: int = 50) -> list[dict[str, Any]]:
        """Recent ingestion runs of a view with their quality reports, newest first."""


@dataclass(frozen=True)
class OnlineValue:
    """A stored online row: feature values plus its event and ingestion times."""

    values: dict[str, Any]
    event_us: int
    ingested_us: int


#: One online read request: a view version, the feature names wanted, and the entity key tuples.
OnlineRequest = tuple[ViewLayout, Sequence[str], Sequence[tuple[Any, ...]]]
#: The answer to one request: per entity, the event time in µs and the values aligned with the names
#: (both None when the entity has no record).
OnlineRows = tuple[list[int | None], list[tuple[Any, ...] | None]]


class OnlineStore(ABC):
    """Latest feature values per entity, for low-latency reads."""

    @abstractmethod
    def write(self, layout: ViewLayout, rows: Iterable[dict[str, Any]]) -> int:
        """Write rows (keys, features, event_ts, ingested_ts); older rows never replace newer ones.

        Returns how many entity records changed.
        """

    @abstractmethod
    def read(self, requests: Sequence[tuple[ViewLayout, Sequence[str], Sequence[tuple[Any, ...]]]]
             ) -> list[list[OnlineValue | None]]:
        """For each (view, features, entity keys) request, the stored value per entity, in one round trip."""

    def read_rows(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """``read`` shaped for the hot path: per request, each entity's event time (None: not found) and its
        values as a tuple aligned with the requested feature names (None: not found).

        Stores override this when they can build the tuples without an intermediate dict per record.
        """
        out: list[OnlineRows] = []
        for (_layout, names, _keys), records in zip(requests, self.read(requests), strict=True):
            out.append(([None if r is None else r.event_us for r in records],
                        [None if r is None else tuple(r.values.get(f) for f in names) for r in records]))
        return out

    async def read_rows_async(self, requests: Sequence[OnlineRequest]) -> list[OnlineRows]:
        """``read_rows`` for an event loop; stores with an asynchronous client do not block the loop."""
        return self.read_rows(requests)

    @abstractmethod
    def erase(self, layout: ViewLayout, key_values: dict[str, Any]) -> int:
        """Delete the records whose keys match ``key_values`` (a subset of the view's keys)."""


class RunStore(ABC):
    """Materialization watermarks and runs, lineage links and the erasure audit (service database)."""

    @abstractmethod
    def watermark(self, project: str, view: str, version: int) -> int | None:
        """The ingestion-time watermark (µs) up to which the view was materialized incrementally."""

    @abstractmethod
    def record_materialization(self, run: dict[str, Any], new_watermark: int | None,
                               events: Sequence[DomainEvent] = ()) -> None:
        """Store a run, its events and, for incremental runs, the new watermark, in one transaction."""

    @abstractmethod
    def materialization(self, project: str, run_id: str) -> dict[str, Any] | None:
        """One run by id; None if absent."""

    @abstractmethod
    def materializations(self, project: str, view: str, limit: int = 50) -> list[dict[str, Any]]:
        """Recent runs of a view, newest first."""

    @abstractmethod
    def record_erasure(self, record: dict[str, Any], events: Sequence[DomainEvent] = ()) -> None:
        """Append an erasure audit record and its events in one transaction."""

    @abstractmethod
    def erasures(self, project: str) -> list[dict[str, Any]]:
        """Erasure audit records of a project, oldest first."""

    @abstractmethod
    def link(self, project: str, feature_service: str, consumer_kind: str, consumer_ref: str,
             event_id: str | None) -> bool:
        """Record that a training run or model version used a feature service (False if known)."""

    @abstractmethod
    def links(self, project: str, feature_service: str | None = None) -> list[dict[str, Any]]:
        """Lineage links of a project (optionally of one feature service)."""
