"""The definitions registry: CRUD with tenancy, versioning rules for feature views, plan and apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from mlp_core.errors import FailedPrecondition, InvalidArgument, NotFound
from mlp_feature_store.domain.access import READ, WRITE, Caller, authorize
from mlp_feature_store.domain.compat import breaking_changes, compatible_changes
from mlp_feature_store.domain.events import DEFINITION_APPLIED, DomainEvent
from mlp_feature_store.domain.models import (
    DataSource,
    Entity,
    FeatureService,
    FeatureView,
    JoinKey,
    OnDemandTransformation,
    check_name,
)
from mlp_feature_store.domain.regions import Regions
from mlp_feature_store.domain.transforms import TransformRegistry
from mlp_feature_store.store.base import DefinitionWrite, RegistryStore, StoredDefinition, ViewLayout

KINDS: dict[str, type[BaseModel]] = {
    "entity": Entity,
    "data_source": DataSource,
    "feature_view": FeatureView,
    "transformation": OnDemandTransformation,
    "feature_service": FeatureService,
}
#: Apply order: what a definition refers to is applied before it.
APPLY_ORDER = ["entity", "data_source", "feature_view", "transformation", "feature_service"]


@dataclass
class PlannedChange:
    """One line of a plan: what apply would do to one definition."""

    kind: str
    name: str
    action: str  # create | update | new_version | unchanged | error
    version: int = 1
    changes: list[str] = field(default_factory=list)
    definition: BaseModel | None = None
    #: For an update: the stored version's ``updated_us`` when planned (optimistic concurrency).
    base_updated_us: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {"kind": self.kind, "name": self.name, "action": self.action, "version": self.version,
                "changes": self.changes}


def parse_definition(kind: str, spec: dict[str, Any]) -> BaseModel:
    """Validate a definition of ``kind``; errors become ``InvalidArgument`` with field details."""
    model = KINDS.get(kind)
    if model is None:
        raise InvalidArgument(f"unknown kind '{kind}'; use one of {sorted(KINDS)}")
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(x) for x in first["loc"]) or "definition"
        raise InvalidArgument(f"invalid {kind} definition: {where}: {first['msg']}", errors=errors) from None


class RegistryService:
    """Definitions per project; every method checks tenancy and scope first."""

    def __init__(self, store: RegistryStore, regions: Regions, transforms: TransformRegistry) -> None:
        self.store = store
        self.regions = regions
        self.transforms = transforms
        #: Bumped by every local change, so that caches of resolved definitions drop stale entries.
        self.generation = 0

    # -- reads -------------------------------------------------------------------------------

    def get(self, caller: Caller, project: str, kind: str, name: str, version: int | None = None) -> BaseModel:
        """One definition (newest version unless ``version``); NotFound if absent or not visible."""
        authorize(caller, project, READ)
        return self.load(project, kind, name, version)

    def list_kind(self, caller: Caller, project: str, kind: str) -> list[BaseModel]:
        """The newest version of every definition of ``kind`` in ``project``."""
        authorize(caller, project, READ)
        if kind not in KINDS:
            raise InvalidArgument(f"unknown kind '{kind}'")
        return [KINDS[kind].model_validate(d.spec) for d in self.store.query(project, kind)]

    def versions(self, caller: Caller, project: str, name: str) -> list[FeatureView]:
        """Every version of a feature view, oldest first."""
        authorize(caller, project, READ)
        found = [FeatureView.model_validate(d.spec) for d in self.store.query(project, "feature_view", False)
                 if d.name == name]
        if not found:
            raise NotFound(f"feature view '{name}' not found in project '{project}'")
        return found

    def load(self, project: str, kind: str, name: str, version: int | None = None) -> Any:
        """A definition without access checks (callers have checked); NotFound if absent."""
        if kind not in KINDS:
            raise InvalidArgument(f"unknown kind '{kind}'")
        stored = self.store.get(project, kind, name, version)
        if stored is None:
            v = f" version {version}" if version is not None else ""
            raise NotFound(f"{kind.replace('_', ' ')} '{name}'{v} not found in project '{project}'")
        return KINDS[kind].model_validate(stored.spec)

    def layout(self, project: str, view_name: str, version: int | None = None) -> ViewLayout:
        """A feature view with its join keys resolved from its entities."""
        view: FeatureView = self.load(project, "feature_view", view_name, version)
        return ViewLayout(project=project, view=view, keys=tuple(self._keys(project, view.entities)))

    def _keys(self, project: str, entities: list[str], planned: dict[tuple[str, str], BaseModel] | None = None
              ) -> list[JoinKey]:
        keys: dict[str, JoinKey] = {}
        for name in entities:
            entity = (planned or {}).get(("entity", name))
            if entity is None:
                entity = self.load(project, "entity", name)
            assert isinstance(entity, Entity)
            for k in entity.join_keys:
                keys.setdefault(k.name, k)
        return list(keys.values())

    # -- writes ------------------------------------------------------------------------------

    def delete(self, caller: Caller, project: str, kind: str, name: str) -> None:
        """Delete a definition (all versions); refused while another definition refers to it."""
        authorize(caller, project, WRITE)
        self.load(project, kind, name)
        users = self._referrers(project, kind, name)
        if users:
            raise FailedPrecondition(f"{kind} '{name}' is used by {users}; change or delete those first")
        layouts = self._all_layouts(project, name) if kind == "feature_view" else []
        self.store.delete(project, kind, name)
        self.generation += 1
        # No definition serves these records any more: purge them, so a deleted view leaves no
        # (possibly personal) values behind in Redis. The offline rows stay, append-only history
        # that erasure requests still reach through the store.
        for region, layout in layouts:
            self.regions.get(region).online.erase(layout, {})

    def _all_layouts(self, project: str, name: str) -> list[tuple[str, ViewLayout]]:
        out = []
        for stored in self.store.query(project, "feature_view", latest_only=False):
            if stored.name == name:
                view = FeatureView.model_validate(stored.spec)
                out.append((view.residency_region, ViewLayout(project, view, tuple(self._keys(project, view.entities)))))
        return out

    def _referrers(self, project: str, kind: str, name: str) -> list[str]:
        users: list[str] = []
        for d in self.store.query(project):
            spec = d.spec
            if kind == "entity" and d.kind == "feature_view" and name in spec.get("entities", []):
                users.append(f"feature_view:{d.name}")
            if kind == "data_source" and d.kind == "feature_view" and spec.get("source") == name:
                users.append(f"feature_view:{d.name}")
            if kind in ("feature_view", "transformation") and d.kind in ("feature_service", "transformation"):
                refs = spec.get("features", []) + spec.get("inputs", [])
                if any(r.split(":")[0].split("@")[0] == name for r in refs):
                    users.append(f"{d.kind}:{d.name}")
        return users

    def apply_one(self, caller: Caller, project: str, kind: str, spec: dict[str, Any]) -> PlannedChange:
        """Create or change one definition (same rules as ``apply``)."""
        changes = self.apply(caller, project, [(kind, spec)])
        return changes[0]

    def plan(self, caller: Caller, project: str, items: list[tuple[str, dict[str, Any]]]) -> list[PlannedChange]:
        """What ``apply`` would do, without changing anything."""
        authorize(caller, project, READ)
        return self._plan(project, items)

    def apply(self, caller: Caller, project: str, items: list[tuple[str, dict[str, Any]]]
              ) -> list[PlannedChange]:
        """Plan, then apply every change; if any item is invalid nothing is applied."""
        authorize(caller, project, WRITE)
        check_name(project, "project")
        plan = self._plan(project, items)
        errors = [{"kind": p.kind, "name": p.name, "msg": "; ".join(p.changes)} for p in plan if p.action == "error"]
        if errors:
            raise FailedPrecondition("the definitions cannot be applied: " + "; ".join(
                f"{e['kind']} '{e['name']}': {e['msg']}" for e in errors), errors=errors)
        writes: list[DefinitionWrite] = []
        events: list[DomainEvent] = []
        planned = {(c.kind, c.name): c.definition for c in plan if c.definition is not None}
        for change in plan:
            if change.action == "unchanged" or change.definition is None:
                continue
            definition = change.definition
            if isinstance(definition, FeatureView):
                # DDL first (idempotent): an apply that then fails leaves at most an unused empty table.
                keys = self._keys(project, definition.entities, planned)
                layout = ViewLayout(project, definition, tuple(keys))
                self.regions.get(definition.residency_region).offline.ensure_table(layout)
            writes.append(DefinitionWrite(change.kind, change.name, change.version,
                                          definition.model_dump(mode="json"), change.base_updated_us))
            events.append(DomainEvent(DEFINITION_APPLIED, f"{project}/{change.kind}/{change.name}",
                                      {"project": project, **change.as_dict()}))
        if writes:
            # Every definition of the apply and its events commit together (or not at all).
            self.store.put_all(project, writes, events)
            self.generation += 1
        return plan

    # -- planning ----------------------------------------------------------------------------

    def _plan(self, project: str, items: list[tuple[str, dict[str, Any]]]) -> list[PlannedChange]:
        parsed: list[tuple[str, BaseModel]] = [(kind, parse_definition(kind, spec)) for kind, spec in items]
        seen: set[tuple[str, str]] = set()
        for kind, d in parsed:
            ident = (kind, d.name)  # type: ignore[attr-defined]
            if ident in seen:
                raise InvalidArgument(f"{kind} '{ident[1]}' is defined twice")
            seen.add(ident)
        parsed.sort(key=lambda p: APPLY_ORDER.index(p[0]))
        planned = {(k, d.name): d for k, d in parsed}  # type: ignore[attr-defined]
        return [self._plan_one(project, kind, d, planned) for kind, d in parsed]

    def _plan_one(self, project: str, kind: str, d: Any, planned: dict[tuple[str, str], BaseModel]
                  ) -> PlannedChange:
        problems = self._reference_problems(project, kind, d, planned)
        if problems:
            return PlannedChange(kind, d.name, "error", changes=problems)
        current = self.store.get(project, kind, d.name)
        if kind != "feature_view":
            if current is None:
                return PlannedChange(kind, d.name, "create", 1, definition=d)
            if current.spec == d.model_dump(mode="json"):
                return PlannedChange(kind, d.name, "unchanged", 1)
            if kind == "entity":
                old = Entity.model_validate(current.spec)
                if old.join_keys != d.join_keys and self._referrers(project, kind, d.name):
                    return PlannedChange(kind, d.name, "error", changes=[
                        "join keys of an entity in use cannot change; define a new entity"])
            return PlannedChange(kind, d.name, "update", current.version, ["definition changed"], definition=d,
                                 base_updated_us=current.updated_us)
        return self._plan_view(project, d, current)

    def _plan_view(self, project: str, view: FeatureView, current: StoredDefinition | None) -> PlannedChange:
        name = view.name
        if current is None:
            if view.version != 1:
                return PlannedChange("feature_view", name, "error", view.version,
                                     [f"a new feature view starts at version 1, not {view.version}"])
            return PlannedChange("feature_view", name, "create", 1, definition=view)
        old = FeatureView.model_validate(current.spec)
        if view.version == old.version + 1:
            return PlannedChange("feature_view", name, "new_version", view.version,
                                 breaking_changes(old, view) + compatible_changes(old, view), definition=view)
        if view.version < old.version:
            stored = self.store.get(project, "feature_view", name, view.version)
            if stored is not None and stored.spec == view.model_dump(mode="json"):
                return PlannedChange("feature_view", name, "unchanged", view.version)
            return PlannedChange("feature_view", name, "error", view.version, [
                f"version {view.version} is not the newest ({old.version}); old versions are immutable"])
        if view.version > old.version + 1:
            return PlannedChange("feature_view", name, "error", view.version, [
                f"the next version is {old.version + 1}, not {view.version}"])
        breaking = breaking_changes(old, view)
        if breaking:
            return PlannedChange("feature_view", name, "error", view.version, [
                *breaking, f"these changes break compatibility: set version: {old.version + 1}"])
        compatible = compatible_changes(old, view)
        if not compatible:
            return PlannedChange("feature_view", name, "unchanged", view.version)
        return PlannedChange("feature_view", name, "update", view.version, compatible, definition=view,
                             base_updated_us=current.updated_us)

    def _exists(self, project: str, kind: str, name: str, planned: dict[tuple[str, str], BaseModel]) -> bool:
        return (kind, name) in planned or self.store.get(project, kind, name) is not None

    def _reference_problems(self, project: str, kind: str, d: Any,
                            planned: dict[tuple[str, str], BaseModel]) -> list[str]:
        problems: list[str] = []
        if kind == "feature_view":
            problems += [f"entity '{e}' does not exist" for e in d.entities
                         if not self._exists(project, "entity", e, planned)]
            if d.source and not self._exists(project, "data_source", d.source, planned):
                problems.append(f"data source '{d.source}' does not exist")
            if d.residency_region not in self.regions.names:
                problems.append(f"residency region '{d.residency_region}' has no configured store "
                                f"(configured: {self.regions.names})")
            if self._exists(project, "transformation", d.name, planned):
                problems.append(f"a transformation is already called '{d.name}'")
            if not problems:
                keys = [k.name for k in self._keys(project, d.entities, planned)]
                clash = sorted(set(keys) & {f.name for f in d.features})
                if clash:
                    problems.append(f"feature(s) {clash} have the same name as a join key")
        elif kind == "transformation":
            if d.function not in self.transforms:
                problems.append(f"function '{d.function}' is not registered in this service")
            if self._exists(project, "feature_view", d.name, planned):
                problems.append(f"a feature view is already called '{d.name}'")
            problems += self._ref_problems(project, d.inputs, planned, allow_transforms=False)
        elif kind == "feature_service":
            problems += self._ref_problems(project, d.features, planned, allow_transforms=True)
        return problems

    def _ref_problems(self, project: str, refs: list[str], planned: dict[tuple[str, str], BaseModel],
                      allow_transforms: bool) -> list[str]:
        problems: list[str] = []
        for ref in refs:
            name, _version, feature = split_ref(ref)
            view = planned.get(("feature_view", name))
            odt = planned.get(("transformation", name))
            if view is None and odt is None:
                stored = self.store.get(project, "feature_view", name) or (
                    self.store.get(project, "transformation", name) if allow_transforms else None)
                if stored is None:
                    problems.append(f"'{ref}' refers to an unknown feature view"
                                    + (" or transformation" if allow_transforms else ""))
                    continue
                model = KINDS[stored.kind].model_validate(stored.spec)
            else:
                model = view or odt  # type: ignore[assignment]
            if isinstance(model, OnDemandTransformation) and not allow_transforms:
                problems.append(f"'{ref}': transformations cannot read other transformations")
                continue
            names = [f.name for f in (model.features if isinstance(model, FeatureView) else model.outputs)]  # type: ignore[attr-defined]
            if feature is not None and feature not in names:
                problems.append(f"'{ref}': no feature '{feature}' in '{name}'")
        return problems


def split_ref(ref: str) -> tuple[str, int | None, str | None]:
    """'view@2:feature' → ('view', 2, 'feature'); 'view' → ('view', None, None)."""
    head, _, feature = ref.partition(":")
    name, _, version = head.partition("@")
    try:
        check_name(name, "feature view")
        if feature:
            check_name(feature, "feature")
        v = int(version) if version else None
    except ValueError as exc:
        raise InvalidArgument(f"bad feature reference '{ref}': use 'view:feature' or 'view@2:feature'"
                              ) from exc
    return name, v, feature or None
