"""Compliance and metadata: erasure of an entity across stores (audited), search, and lineage."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.access import READ, WRITE, Caller, authorize
from mlp_feature_store.domain.events import ENTITY_ERASED, DomainEvent
from mlp_feature_store.domain.ingest import ConversionError, convert
from mlp_feature_store.domain.models import Entity, FeatureService, FeatureView
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.registry import RegistryService, split_ref
from mlp_feature_store.domain.timeutil import now_us
from mlp_feature_store.store.base import RunStore, ViewLayout


class ComplianceService:
    """GDPR Art. 17 erasure, metadata search and lineage."""

    def __init__(self, registry: RegistryService, regions: Regions, runs: RunStore) -> None:
        self.registry = registry
        self.regions = regions
        self.runs = runs

    def erase(self, caller: Caller, project: str, entity: str, keys: dict[str, Any]) -> dict[str, Any]:
        """Delete one entity's rows from every version of every view that uses it, offline and online."""
        authorize(caller, project, WRITE)
        ent: Entity = self.registry.load(project, "entity", entity)
        expected = {k.name for k in ent.join_keys}
        if set(keys) != expected:
            raise InvalidArgument(f"entity '{entity}' is identified by {sorted(expected)}; give exactly those")
        try:
            typed = {k.name: convert(k.dtype, keys[k.name]) for k in ent.join_keys}
        except ConversionError as exc:
            raise InvalidArgument(f"bad key value: {exc}") from exc
        offline_rows = online_keys = quarantined = 0
        views: list[str] = []
        names: set[tuple[str, str]] = set()
        for stored in self.registry.store.query(project, "feature_view", latest_only=False):
            view = FeatureView.model_validate(stored.spec)
            if entity not in view.entities:
                continue
            layout = ViewLayout(project, view, tuple(self.registry._keys(project, view.entities)))
            stores = self.regions.get(view.residency_region)
            offline_rows += stores.offline.erase(layout, typed)
            online_keys += stores.online.erase(layout, typed)
            if (view.name, view.residency_region) not in names:  # quarantine rows are per view, any version
                names.add((view.name, view.residency_region))
                quarantined += stores.offline.erase_quarantined(project, view.name, typed)
            views.append(f"{view.name}@{view.version}")
        digest = hashlib.sha256(json.dumps(typed, sort_keys=True).encode()).hexdigest()
        record = {"id": str(uuid.uuid4()), "project": project, "entity": entity, "key_digest": digest,
                  "requested_by": caller.subject, "offline_rows": offline_rows, "online_keys": online_keys,
                  "detail": json.dumps({"views": views, "quarantined_rows": quarantined}),
                  "erased_us": now_us()}
        event = DomainEvent(ENTITY_ERASED, f"{project}/{entity}/{digest[:16]}", {
            k: record[k] for k in ("id", "project", "entity", "key_digest", "offline_rows", "online_keys")})
        self.runs.record_erasure(record, [event])
        return record

    def erasures(self, caller: Caller, project: str) -> list[dict[str, Any]]:
        """The erasure audit of a project."""
        authorize(caller, project, WRITE)
        return self.runs.erasures(project)

    def search(self, caller: Caller, project: str, *, tag: str | None = None, owner: str | None = None,
               pii: bool | None = None, text: str | None = None) -> list[dict[str, Any]]:
        """Feature views and features matching tag ('k' or 'k=v'), owner, PII flag and/or text."""
        authorize(caller, project, READ)
        hits: list[dict[str, Any]] = []
        for stored in self.registry.store.query(project, "feature_view"):
            view = FeatureView.model_validate(stored.spec)
            for f in view.features:
                tags = {**view.tags, **f.tags}
                if tag is not None:
                    k, _, v = tag.partition("=")
                    if k not in tags or (v and tags[k] != v):
                        continue
                if owner is not None and view.owner != owner:
                    continue
                if pii is not None and f.pii != pii:
                    continue
                if text and text.lower() not in f"{view.name} {f.name} {view.description} {f.description}".lower():
                    continue
                hits.append({"view": view.name, "version": view.version, "feature": f.name, "dtype": f.dtype,
                             "pii": f.pii, "owner": view.owner, "tags": tags})
        return hits

    def record_usage(self, project: str, feature_service: str, consumer_kind: str, consumer_ref: str,
                     event_id: str | None = None) -> bool:
        """From training/registry events: a run or model version used a feature service."""
        if consumer_kind not in ("training_run", "model_version"):
            raise InvalidArgument("consumer_kind must be 'training_run' or 'model_version'")
        return self.runs.link(project, feature_service, consumer_kind, consumer_ref, event_id)

    def lineage(self, caller: Caller, project: str, feature_service: str) -> dict[str, Any]:
        """Sources → feature views → this feature service → training runs and model versions."""
        authorize(caller, project, READ)
        service: FeatureService = self.registry.load(project, "feature_service", feature_service)
        views: dict[str, dict[str, Any]] = {}
        for ref in service.features:
            name, version, _f = split_ref(ref)
            if self.registry.store.get(project, "feature_view", name, version) is None:
                continue  # a transformation
            view: FeatureView = self.registry.load(project, "feature_view", name, version)
            views[name] = {"view": name, "version": view.version, "source": view.source}
        links = self.runs.links(project, feature_service)
        return {"feature_service": feature_service, "feature_views": list(views.values()),
                "consumers": [{"kind": r["consumer_kind"], "ref": r["consumer_ref"]} for r in links]}
