"""Compatibility of a feature view change: what may change in place and what needs a new version."""

from __future__ import annotations

from mlp_feature_store.domain.models import FeatureView


def breaking_changes(old: FeatureView, new: FeatureView) -> list[str]:
    """Changes that would break readers or stored data (removed/retyped features, keys, region)."""
    changes: list[str] = []
    new_types = {f.name: f.dtype for f in new.features}
    for f in old.features:
        if f.name not in new_types:
            changes.append(f"feature '{f.name}' removed")
        elif new_types[f.name] != f.dtype:
            changes.append(f"feature '{f.name}' type {f.dtype} -> {new_types[f.name]}")
    if old.entities != new.entities:
        changes.append(f"entities {old.entities} -> {new.entities}")
    if old.residency_region != new.residency_region:
        changes.append(f"residency region {old.residency_region} -> {new.residency_region}")
    return changes


def compatible_changes(old: FeatureView, new: FeatureView) -> list[str]:
    """Changes that can be applied to the current version in place."""
    changes: list[str] = []
    old_names = {f.name for f in old.features}
    changes += [f"feature '{f.name}' added" for f in new.features if f.name not in old_names]
    old_by_name = {f.name: f for f in old.features}
    for f in new.features:
        prev = old_by_name.get(f.name)
        if prev is not None and prev.dtype == f.dtype and prev != f:
            changes.append(f"feature '{f.name}' metadata changed")
    for attr in ("description", "owner", "tags", "source", "ttl_seconds", "online", "expectations"):
        if getattr(old, attr) != getattr(new, attr):
            changes.append(f"{attr} changed")
    return changes
