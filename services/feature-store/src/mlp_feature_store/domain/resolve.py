"""Resolving feature references (or a feature service) into views, features and transformations."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from mlp_core.errors import InvalidArgument
from mlp_feature_store.domain.models import FeatureService, OnDemandTransformation, ValueType
from mlp_feature_store.domain.registry import RegistryService, split_ref
from mlp_feature_store.store.base import RegistryStore, StoredDefinition, ViewLayout

SEP = "__"


@dataclass
class ViewPart:
    """The features read from one view version; ``hidden`` ones feed transformations only."""

    layout: ViewLayout
    features: list[str] = field(default_factory=list)
    hidden: set[str] = field(default_factory=set)
    #: ``features`` then sorted ``hidden``: the names an online read asks the store for (set on first read).
    online_names: tuple[str, ...] | None = field(default=None, compare=False)


@dataclass
class Resolved:
    """What a read needs: view parts, transformations, output column names and PII references."""

    views: dict[str, ViewPart] = field(default_factory=dict)
    transforms: list[tuple[OnDemandTransformation, list[str]]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    pii: list[str] = field(default_factory=list)
    dtypes: dict[str, ValueType] = field(default_factory=dict)

    @property
    def region(self) -> str:
        """The one residency region all views live in (mixed regions are refused)."""
        regions = {p.layout.view.residency_region for p in self.views.values()}
        if len(regions) > 1:
            raise InvalidArgument(f"the features live in several residency regions {sorted(regions)}; "
                                  "request each region's features separately")
        return regions.pop() if regions else "default"


class _MemoStore:
    """Memoizes ``get`` for the duration of one resolution (a request names each view many times)."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self.memo: dict[tuple[str, str, str, int | None], StoredDefinition | None] = {}

    def get(self, project: str, kind: str, name: str, version: int | None = None) -> StoredDefinition | None:
        key = (project, kind, name, version)
        if key not in self.memo:
            self.memo[key] = self.store.get(project, kind, name, version)
        return self.memo[key]


def resolve(registry: RegistryService, project: str, features: list[str] | None,
            feature_service: str | None) -> Resolved:
    """Resolve ``features`` (refs) or ``feature_service`` (exactly one of them) in ``project``."""
    registry = copy.copy(registry)
    registry.store = _MemoStore(registry.store)  # type: ignore[assignment]
    if bool(features) == bool(feature_service):
        raise InvalidArgument("give either 'features' (a list of 'view:feature') or 'feature_service'")
    refs = features or []
    if feature_service:
        service: FeatureService = registry.load(project, "feature_service", feature_service)
        refs = service.features
    out = Resolved()
    for ref in refs:
        name, version, feature = split_ref(ref)
        if registry.store.get(project, "transformation", name) is not None:
            odt: OnDemandTransformation = registry.load(project, "transformation", name)
            wanted = [feature] if feature else [o.name for o in odt.outputs]
            for w in wanted:
                if w not in {o.name for o in odt.outputs}:
                    raise InvalidArgument(f"transformation '{name}' has no output '{w}'")
            for inp in odt.inputs:
                _add_view_feature(registry, project, out, inp, hidden=True)
            out.transforms.append((odt, wanted))
            _add_outputs(out, [f"{name}{SEP}{w}" for w in wanted])
            out.dtypes.update({f"{name}{SEP}{o.name}": o.dtype for o in odt.outputs if o.name in wanted})
            pii_inputs = [i for i in odt.inputs if _is_pii(out, i)]
            out.pii += [f"{name}:{o.name}" for o in odt.outputs if o.name in wanted and (o.pii or pii_inputs)]
            continue
        layout = registry.layout(project, name, version)
        wanted = [feature] if feature else [f.name for f in layout.view.features]
        for w in wanted:
            _add_view_feature(registry, project, out, f"{name}@{layout.view.version}:{w}", hidden=False)
    # A feature both requested and used by a transformation is not hidden.
    for part in out.views.values():
        part.hidden -= set(part.features)
    return out


def _add_outputs(out: Resolved, names: list[str]) -> None:
    for n in names:
        if n in out.outputs:
            raise InvalidArgument(f"feature '{n.replace(SEP, ':')}' is requested twice")
        out.outputs.append(n)


def _is_pii(out: Resolved, ref: str) -> bool:
    name, _v, feature = split_ref(ref)
    part = out.views.get(name)
    return bool(part and feature and part.layout.view.feature(feature).pii)


def _add_view_feature(registry: RegistryService, project: str, out: Resolved, ref: str, hidden: bool) -> None:
    name, version, feature = split_ref(ref)
    if feature is None:
        raise InvalidArgument(f"'{ref}' must name a feature")
    part = out.views.get(name)
    if part is None:
        part = ViewPart(layout=registry.layout(project, name, version))
        out.views[name] = part
    elif version is not None and part.layout.view.version != version:
        raise InvalidArgument(f"two versions of feature view '{name}' in one request; use one")
    try:
        spec = part.layout.view.feature(feature)
    except KeyError:
        raise InvalidArgument(f"feature view '{name}' has no feature '{feature}'") from None
    if hidden:
        if feature not in part.features:
            part.hidden.add(feature)
        return
    if feature not in part.features:
        part.features.append(feature)
        _add_outputs(out, [f"{name}{SEP}{feature}"])
        out.dtypes[f"{name}{SEP}{feature}"] = spec.dtype
        if spec.pii:
            out.pii.append(f"{name}:{feature}")
