"""Models, search and paging, metadata revisions, lineage queries, archive/delete and garbage collection."""

from __future__ import annotations

import pytest
from registry_support import ADMIN, ALICE, BOB, GOOD, MALLORY, READER, Registry

from mlp_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlp_registry.domain.catalog import MetadataUpdate
from mlp_registry.domain.models import FileSpec, Lineage
from mlp_registry.domain.uploads import VersionDraft


def test_models_search_paging_and_tenancy(registry: Registry) -> None:
    for i in range(5):
        registry.service.catalog.create_model(ALICE, "fraud", f"m{i}", "credit model" if i % 2 else "churn",
                                              tags={"team": "risk" if i < 2 else "growth"})
    with pytest.raises(AlreadyExists):
        registry.service.catalog.create_model(ALICE, "fraud", "m1")
    with pytest.raises(InvalidArgument):
        registry.service.catalog.create_model(ALICE, "fraud", "Bad Name")
    with pytest.raises(InvalidArgument):
        registry.service.catalog.create_model(ALICE, "other", "x")
    page1 = registry.service.catalog.search_models(READER, page_size=4)
    page2 = registry.service.catalog.search_models(READER, page_size=4, page_token=page1.next_page_token)
    names = [m.name for m in page1.items + page2.items]
    assert names == ["m0", "m1", "m2", "m3", "m4", "scorer"] and page2.next_page_token is None
    assert [m.name for m in registry.service.catalog.search_models(READER, text="CREDIT").items] == ["m1", "m3"]
    assert [m.name for m in registry.service.catalog.search_models(READER, tag=("team", "risk")).items] == ["m0", "m1"]
    assert registry.service.catalog.search_models(MALLORY).items == []
    assert len(registry.service.catalog.search_models(ADMIN).items) == 6
    with pytest.raises(InvalidArgument):
        registry.service.catalog.search_models(READER, page_token="abc")


def test_versions_are_immutable_metadata_is_versioned(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.register({"a.bin": b"2"}, **GOOD)
    page = registry.service.catalog.list_versions(READER, "fraud", "scorer", page_size=1)
    assert [v.number for v in page.items] == [2] and page.next_page_token
    v = registry.service.catalog.update_version(ALICE, "fraud", "scorer", 1,
                                                MetadataUpdate(description="first", tags={"k": "v"}))
    assert v.metadata_revision == 2
    history = registry.service.catalog.metadata_history(READER, "fraud", "scorer", 1)
    assert [(r.revision, r.description) for r in history] == [(2, "first")]
    model = registry.service.catalog.update_model(ALICE, "fraud", "scorer", MetadataUpdate(description="new"))
    assert [r.description for r in registry.service.catalog.metadata_history(READER, "fraud", "scorer")] == [
        "scores transactions", "new"] and model.metadata_revision == 2
    # Changing the mutable metadata does not break the signature (it is not part of the manifest).
    assert registry.read(1, "a.bin") == b"1"
    _, version = registry.service.catalog.get_version(READER, "fraud", "scorer", 1)
    assert version.metrics == {"auc": 0.93} and version.framework == "onnx"


def test_lineage_queries_both_ways(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.service.catalog.create_model(ALICE, "fraud", "other")
    registry.register({"a.bin": b"2"}, model="other",
                      lineage=Lineage(training_run="run-2", training_set_digest="sha256:" + "b" * 64,
                                      feature_views=["fraud.txn_stats", "fraud.devices"], code_version="git:def"))
    lineage = registry.service.catalog.lineage(READER, "fraud", "scorer", 1)
    assert lineage.training_run == "run-1" and lineage.feature_service == "fraud_svc"
    users = registry.service.catalog.versions_using(READER, feature_view="fraud.txn_stats")
    assert [(m.name, v.number) for m, v in users] == [("other", 1), ("scorer", 1)]
    by_set = registry.service.catalog.versions_using(READER, training_set_digest="sha256:" + "b" * 64)
    assert [m.name for m, _ in by_set] == ["other"]
    assert registry.service.catalog.versions_using(MALLORY, feature_view="fraud.txn_stats") == []
    with pytest.raises(InvalidArgument):
        registry.service.catalog.versions_using(READER)


def test_archive_delete_and_garbage_collection(registry: Registry) -> None:
    registry.register({"a.bin": b"1", "b.bin": b"11"})
    registry.register({"a.bin": b"2"})
    registry.service.releases.set_alias(ALICE, "fraud", "scorer", "champion", 1)
    with pytest.raises(FailedPrecondition, match="champion"):
        registry.service.housekeeping.archive(ALICE, "fraud", "scorer", 1)
    with pytest.raises(FailedPrecondition, match="champion"):
        registry.service.housekeeping.delete(ALICE, "fraud", "scorer", 1)
    registry.service.housekeeping.archive(ALICE, "fraud", "scorer", 2)
    assert [v.number for v in registry.service.catalog.list_versions(
        READER, "fraud", "scorer", include_archived=False).items] == [1]
    assert registry.read(2, "a.bin") == b"2"  # archived stays readable
    with pytest.raises(NotFound):  # but cannot take an alias
        registry.service.releases.set_alias(ALICE, "fraud", "scorer", "champion", 2)
    registry.service.housekeeping.restore(ALICE, "fraud", "scorer", 2)
    # an abandoned draft with one uploaded file
    version, uploads = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[FileSpec("x.bin", 3, _sha(b"xyz")),
                                                      FileSpec("y.bin", 1000, "0" * 64)]))
    registry.service.uploads.write(ALICE, uploads[0].id, 0, [b"xyz"])
    registry.service.uploads.abort(ALICE, "fraud", "scorer", version.number)
    registry.service.housekeeping.delete(ALICE, "fraud", "scorer", 2)
    before = set(registry.artifacts.list_keys())
    assert len(before) == 4
    report = registry.service.housekeeping.collect_garbage(ADMIN)
    assert report.objects_deleted == 2
    assert len(set(registry.artifacts.list_keys())) == 2
    assert registry.read(1, "b.bin") == b"11"
    with pytest.raises(NotFound):
        registry.read(2, "a.bin")
    # version numbers are never reused
    assert registry.register({"a.bin": b"4"}).number == 4
    assert registry.service.housekeeping.collect_garbage(ADMIN).objects_deleted == 0
    with pytest.raises(Exception, match="admin"):
        registry.service.housekeeping.collect_garbage(BOB)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
