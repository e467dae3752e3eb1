"""Registry: CRUD, versioning rules, plan/apply, tenancy and scopes (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import inspect

from mlp_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mlp_feature_store.store.offline_tables import table_name

from .conftest import STATS, USER, Caller


def test_apply_creates_and_plan_reports_unchanged(fs) -> None:
    plan = fs.registry.plan(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
    assert [(p.kind, p.action) for p in plan] == [("entity", "create"), ("feature_view", "create")]
    assert fs.registry.store.get("p1", "entity", "user") is None  # plan changed nothing
    fs.registry.apply(Caller(), "p1", [("feature_view", STATS), ("entity", USER)])  # order does not matter
    again = fs.registry.plan(Caller(), "p1", [("entity", USER), ("feature_view", STATS)])
    assert [p.action for p in again] == ["unchanged", "unchanged"]
    view = fs.registry.get(Caller(), "p1", "feature_view", "stats")
    assert view.version == 1 and view.feature("email").pii


def test_compatible_change_is_applied_in_place(applied) -> None:
    changed = copy.deepcopy(STATS)
    changed["features"].append({"name": "spend", "dtype": "float64"})
    changed["description"] = "per-user ad stats"
    [change] = applied.registry.apply(Caller(), "p1", [("feature_view", changed)])
    assert change.action == "update" and "feature 'spend' added" in change.changes
    layout = applied.registry.layout("p1", "stats")
    db = applied.ingestion.regions.get("default").offline.db
    cols = {c["name"] for c in inspect(db.engine).get_columns(table_name("p1", "stats", 1))}
    assert "f_spend" in cols and layout.view.version == 1


@pytest.mark.parametrize("mutate", [
    lambda v: v["features"].pop(1),                                     # removed feature
    lambda v: v["features"][0].update(dtype="string"),                  # type change
])
def test_breaking_change_needs_new_version(applied, mutate) -> None:
    changed = copy.deepcopy(STATS)
    mutate(changed)
    with pytest.raises(FailedPrecondition, match="set version: 2"):
        applied.registry.apply(Caller(), "p1", [("feature_view", changed)])
    assert applied.registry.layout("p1", "stats").view == applied.registry.load("p1", "feature_view", "stats", 1)
    changed["version"] = 2
    [change] = applied.registry.apply(Caller(), "p1", [("feature_view", changed)])
    assert change.action == "new_version"
    assert [v.version for v in applied.registry.versions(Caller(), "p1", "stats")] == [1, 2]
    with pytest.raises(FailedPrecondition, match="immutable"):
        old = copy.deepcopy(STATS)
        old["description"] = "edit of an old version"
        applied.registry.apply(Caller(), "p1", [("feature_view", old)])


def test_apply_is_all_or_nothing(fs) -> None:
    bad_view = {**STATS, "name": "other", "entities": ["nobody"]}
    with pytest.raises(FailedPrecondition, match="entity 'nobody' does not exist") as err:
        fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", bad_view)])
    assert err.value.errors
    assert fs.registry.store.get("p1", "entity", "user") is None


def test_invalid_definitions_are_refused(fs) -> None:
    with pytest.raises(InvalidArgument):
        fs.registry.apply(Caller(), "p1", [("entity", {"name": "Bad Name", "join_keys": []})])
    with pytest.raises(InvalidArgument, match="unknown kind"):
        fs.registry.apply(Caller(), "p1", [("gadget", {"name": "x"})])
    fs.registry.apply(Caller(), "p1", [("entity", USER)])
    with pytest.raises(FailedPrecondition, match="residency region 'mars'"):
        fs.registry.apply(Caller(), "p1", [("feature_view", {**STATS, "residency_region": "mars"})])
    with pytest.raises(FailedPrecondition, match="not registered"):
        fs.registry.apply(Caller(), "p1", [("transformation", {
            "name": "t", "function": "nope", "inputs": ["stats:clicks"],
            "outputs": [{"name": "o", "dtype": "float64"}]})])


def test_tenancy_and_scopes(applied) -> None:
    other = Caller(projects=frozenset({"p2"}))
    with pytest.raises(NotFound):
        applied.registry.get(other, "p1", "feature_view", "stats")
    with pytest.raises(NotFound):
        applied.registry.list_kind(other, "p1", "feature_view")
    reader = Caller(scopes=frozenset({"features:read"}))
    assert applied.registry.list_kind(reader, "p1", "entity")[0].name == "user"
    with pytest.raises(PermissionDenied):
        applied.registry.apply(reader, "p1", [("entity", USER)])
    admin = Caller(scopes=frozenset({"admin"}), projects=frozenset())
    assert applied.registry.get(admin, "p1", "feature_view", "stats").name == "stats"


def test_delete_refused_while_in_use(applied) -> None:
    with pytest.raises(FailedPrecondition, match="used by"):
        applied.registry.delete(Caller(), "p1", "entity", "user")
    applied.registry.delete(Caller(), "p1", "feature_view", "stats")
    applied.registry.delete(Caller(), "p1", "entity", "user")
    with pytest.raises(NotFound):
        applied.registry.get(Caller(), "p1", "entity", "user")
