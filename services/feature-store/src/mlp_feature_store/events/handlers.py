"""Handlers of consumed events: push ingestion and lineage from training and registry events.

Each handler runs inside ``EventConsumer``'s transaction that records the event id, so a redelivered
event is skipped; push ingestion is idempotent on its own as well (the event id is the push receipt,
and online writes never replace newer values), because it writes to the region's database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mlp_core.errors import DomainError, Unavailable
from mlp_core.events import CloudEvent
from mlp_feature_store.domain.service import FeatureStoreService

log = logging.getLogger(__name__)

RUN_COMPLETED = "mlp.training.run-completed"
VERSION_REGISTERED = "mlp.registry.version-registered"


@dataclass(frozen=True)
class EventCaller:
    """The caller of an event-driven change: the service itself, acting for the event's project."""

    subject: str
    project: str

    def has_scope(self, scope: str) -> bool:
        """Writes and reads of features, nothing else."""
        return scope in ("features:read", "features:write")

    def can_access(self, project: str) -> bool:
        """Only the project the event belongs to."""
        return project == self.project


def _field(data: dict[str, Any], name: str) -> Any:
    """A payload field by its proto name or its JSON (lowerCamelCase) name."""
    if name in data:
        return data[name]
    head, *rest = name.split("_")
    return data.get(head + "".join(p.title() for p in rest))


class PushHandler:
    """``features-pushed`` events: ``{project, feature_view, rows, timestamp_column?}`` → offline + online."""

    def __init__(self, service: FeatureStoreService) -> None:
        self.service = service

    def __call__(self, _session: Session, event: CloudEvent) -> None:
        """Apply one push; a bad event is logged and dropped (retrying cannot fix it)."""
        data = event.data
        project, view, rows = _field(data, "project"), _field(data, "feature_view"), data.get("rows")
        if not isinstance(project, str) or not isinstance(view, str) or not isinstance(rows, list) or not rows:
            log.warning("push event %s lacks project, feature_view or rows; dropped", event.id)
            return
        if event.tenant is not None and event.tenant != project:
            log.warning("push event %s: tenant %r differs from project %r; dropped", event.id, event.tenant, project)
            return
        caller = EventCaller(subject=f"event:{event.source}", project=project)
        try:
            self.service.ingestion.push(caller, project, view, rows, event_id=event.id,
                                        timestamp_column=_field(data, "timestamp_column") or "event_timestamp")
        except Unavailable:
            raise  # transient: the consumer retries the event
        except DomainError as exc:
            log.warning("push event %s refused (%s): %s; dropped", event.id, type(exc).__name__, exc.detail)


class LineageHandler:
    """Records which training runs and model versions used which feature service."""

    def __init__(self, service: FeatureStoreService) -> None:
        self.service = service

    def __call__(self, _session: Session, event: CloudEvent) -> None:
        """Link the run or model version of the event to its feature service, if it names one."""
        data = event.data
        project, feature_service = _field(data, "project"), _field(data, "feature_service")
        if not project or not feature_service:
            return  # the run or model did not read from the feature store
        record = self.service.compliance.record_usage
        if event.type == VERSION_REGISTERED:
            model, version = _field(data, "model"), _field(data, "version")
            record(project, feature_service, "model_version", f"{model}@{version}", event.id)
            run_id = _field(data, "training_run_id")
            if run_id:
                record(project, feature_service, "training_run", str(run_id), event.id)
        elif event.type == RUN_COMPLETED:
            run_id = _field(data, "run_id")
            if run_id:
                record(project, feature_service, "training_run", str(run_id), event.id)
