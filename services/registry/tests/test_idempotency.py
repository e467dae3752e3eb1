"""Idempotency keys of RegisterVersion and CreateChangeRequest: retries return the same object, misuse is
refused, races create one object.

Domain calls on SQLite and PostgreSQL; the gRPC and REST edges are covered in test_grpc / test_api.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from registry_support import ALICE, BOB, GOOD, READER, Registry
from sqlalchemy import func, select

from mlp_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from mlp_registry.domain.models import ChangeRequest, ChangeState, FileSpec, ModelVersion, UploadSession
from mlp_registry.domain.releases import Releases
from mlp_registry.domain.uploads import VersionDraft, VersionUploads
from mlp_registry.store import tables as t

DATA = b"weights" * 40_000
SPEC = FileSpec("model.onnx", len(DATA), hashlib.sha256(DATA).hexdigest())
CARD = FileSpec("card.md", 5, hashlib.sha256(b"hello").hexdigest())


def _draft(**fields: Any) -> VersionDraft:
    fields.setdefault("files", [SPEC])
    fields.setdefault("metrics", {"auc": 0.93})
    return VersionDraft(**fields)


def _count(reg: Registry, query: Any) -> int:
    with reg.db.session() as session:
        return int(session.execute(query).scalar_one())


def _versions(reg: Registry) -> int:
    return _count(reg, select(func.count()).select_from(t.versions))


def _side_effects(reg: Registry) -> tuple[int, int, int, int]:
    """Versions, upload sessions, audit records and outbox events: a replay must add none."""
    return (_versions(reg), _count(reg, select(func.count()).select_from(t.uploads)),
            _count(reg, select(func.count()).select_from(t.audit)),
            _count(reg, select(func.count()).select_from(t.events.outbox)))


def _ids(result: tuple[ModelVersion, list[UploadSession]]) -> tuple[str, int, list[str]]:
    version, uploads = result
    return version.id, version.number, [u.id for u in uploads]


def test_retry_with_the_same_key_returns_the_same_draft(registry: Registry) -> None:
    uploads = registry.service.uploads
    first = uploads.create_draft(ALICE, "fraud", "scorer", _draft(files=[SPEC, CARD]), idempotency_key="k-1")
    before = _side_effects(registry)
    again = uploads.create_draft(ALICE, "fraud", "scorer", _draft(files=[SPEC, CARD]), idempotency_key="k-1")
    assert _ids(again) == _ids(first) and again[0].number == 1
    assert _side_effects(registry) == before, "a replay creates no version, session, audit record or event"

    # the declared files in another order are the same request; sessions come back in the retry's order
    swapped = uploads.create_draft(ALICE, "fraud", "scorer", _draft(files=[CARD, SPEC]), idempotency_key="k-1")
    assert [u.path for u in swapped[1]] == ["card.md", "model.onnx"]
    assert sorted(u.id for u in swapped[1]) == sorted(_ids(first)[2])

    # a retry after part of the upload went through reports where to resume
    (session,) = [u for u in first[1] if u.path == "model.onnx"]
    chunk = registry.service.ctx.segment_size
    uploads.write(ALICE, session.id, 0, iter([DATA[:chunk + 10]]))
    resumed = uploads.create_draft(ALICE, "fraud", "scorer", _draft(files=[SPEC, CARD]), idempotency_key="k-1")
    assert {u.path: u.offset for u in resumed[1]} == {"model.onnx": chunk, "card.md": 0}

    # the key reserved nothing else: the next version, with or without a key, is number 2
    assert uploads.create_draft(ALICE, "fraud", "scorer", _draft())[0].number == 2


def test_same_key_with_a_different_request_is_refused(registry: Registry) -> None:
    uploads = registry.service.uploads
    uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="k-2")
    before = _side_effects(registry)
    other_file = FileSpec("model.onnx", len(DATA), hashlib.sha256(b"other").hexdigest())
    for changed in (_draft(files=[other_file]), _draft(files=[SPEC, CARD]), _draft(metrics={"auc": 0.94}),
                    _draft(description="another model"), _draft(framework="pytorch")):
        with pytest.raises(AlreadyExists, match=r"k-2.*different version") as err:
            uploads.create_draft(ALICE, "fraud", "scorer", changed, idempotency_key="k-2")
        assert err.value.status == 409
    assert _side_effects(registry) == before


def test_keys_are_scoped_per_caller_and_model(registry: Registry) -> None:
    uploads = registry.service.uploads
    registry.service.catalog.create_model(ALICE, "fraud", "ranker")
    mine = uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="shared")
    bobs = uploads.create_draft(BOB, "fraud", "scorer", _draft(), idempotency_key="shared")
    other_model = uploads.create_draft(ALICE, "fraud", "ranker", _draft(), idempotency_key="shared")
    assert len({mine[0].id, bobs[0].id, other_model[0].id}) == 3
    assert (mine[0].number, bobs[0].number, other_model[0].number) == (1, 2, 1)
    # each scope replays its own version
    assert _ids(uploads.create_draft(BOB, "fraud", "scorer", _draft(), idempotency_key="shared")) == _ids(bobs)
    # even a differing request by another caller does not collide with alice's key
    uploads.create_draft(BOB, "fraud", "ranker", _draft(metrics={"auc": 0.5}), idempotency_key="shared")


def test_unknown_keys_and_no_key_create_new_drafts(registry: Registry) -> None:
    uploads = registry.service.uploads
    a = uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="never-seen-1")
    b = uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="never-seen-2")
    c = uploads.create_draft(ALICE, "fraud", "scorer", _draft())
    d = uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="")
    assert [r[0].number for r in (a, b, c, d)] == [1, 2, 3, 4]


def test_bad_keys_and_callers_are_refused_before_anything_is_recorded(registry: Registry) -> None:
    uploads = registry.service.uploads
    for bad in ("x" * 129, "tab\there", " padded", "nön-ascii"):
        with pytest.raises(InvalidArgument, match="idempotency key"):
            uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key=bad)
    uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="x" * 128)
    with pytest.raises(PermissionDenied):  # a replay still needs registry:write
        uploads.create_draft(READER, "fraud", "scorer", _draft(), idempotency_key="x" * 128)
    assert _versions(registry) == 1


def test_a_lost_race_on_the_key_replays_the_winner(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests pass the look-up before either commits: the unique key row decides (IntegrityError path)."""
    uploads = registry.service.uploads
    first = uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="race")
    real_replay = VersionUploads._replay
    calls: list[int] = []

    def replay_misses_first(self: VersionUploads, *args: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real_replay(self, *args)

    monkeypatch.setattr(VersionUploads, "_replay", replay_misses_first)
    assert _ids(uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="race")) == _ids(first)
    assert len(calls) == 2 and _versions(registry) == 1
    calls.clear()
    with pytest.raises(AlreadyExists):  # the loser's request differs: refused the same way
        uploads.create_draft(ALICE, "fraud", "scorer", _draft(metrics={"auc": 0.5}), idempotency_key="race")
    assert _versions(registry) == 1


def test_concurrent_requests_with_one_key_create_one_version(registry: Registry) -> None:
    uploads = registry.service.uploads
    n = 6
    barrier = threading.Barrier(n)
    results: list[tuple[str, int, list[str]]] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            barrier.wait()
            results.append(_ids(uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="burst")))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert len(results) == n and len(set(map(str, results))) == 1
    assert _versions(registry) == 1


# change requests ------------------------------------------------------------------------------

def _cr_side_effects(reg: Registry) -> tuple[int, int, int]:
    """Change requests, audit records and outbox events: a replay must add none."""
    return (_count(reg, select(func.count()).select_from(t.change_requests)),
            _count(reg, select(func.count()).select_from(t.audit)),
            _count(reg, select(func.count()).select_from(t.events.outbox)))


def _open(reg: Registry, caller: Any = ALICE, key: str | None = "cr-1", *, model: str = "scorer",
          alias: str = "production", number: int = 1, reason: str = "better auc", **extra: Any) -> ChangeRequest:
    return reg.service.releases.create_change_request(caller, "fraud", model, alias, number, reason, key, **extra)


def test_retried_change_request_with_the_same_key_returns_the_same_request(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    first = _open(registry)
    before = _cr_side_effects(registry)
    again = _open(registry, reason="  better auc ")  # blanks around the reason do not make another request
    assert again.id == first.id and again.state is ChangeState.OPEN
    assert _cr_side_effects(registry) == before, "a replay opens no request and writes no audit record or event"

    # later on, the retry still answers with that request as it is now, not 'alias already points at 1'
    registry.service.releases.approve(BOB, first.id, "ok")
    registry.service.releases.apply(ALICE, first.id)
    applied = _open(registry)
    assert (applied.id, applied.state) == (first.id, ChangeState.APPLIED)
    # without a key the same request is a new one (refused here: the alias already points at version 1)
    with pytest.raises(FailedPrecondition, match="already points"):
        _open(registry, key=None)


def test_same_change_request_key_with_a_different_request_is_refused(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.register({"a.bin": b"2"}, **GOOD)
    _open(registry, key="cr-2")
    before = _cr_side_effects(registry)
    for changed in (dict(alias="staging"), dict(number=2), dict(reason="another reason"),
                    dict(requested_kind="remove_alias"), dict(origin={"kind": "training_run", "name": "run-9"})):
        with pytest.raises(AlreadyExists, match=r"cr-2.*different change request") as err:
            _open(registry, key="cr-2", **changed)
        assert err.value.status == 409
    assert _cr_side_effects(registry) == before
    # an empty origin is no origin, and the default kind is setting the alias: the same request
    assert _open(registry, key="cr-2", origin={"kind": "", "name": ""}, requested_kind="set_alias").state \
        is ChangeState.OPEN


def test_change_request_keys_are_scoped_per_caller_model_and_operation(registry: Registry) -> None:
    registry.service.catalog.create_model(ALICE, "fraud", "ranker")
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.register({"a.bin": b"1"}, model="ranker", **GOOD)
    # the same key already used to register a version does not collide with change requests
    registry.service.uploads.create_draft(ALICE, "fraud", "scorer", _draft(), idempotency_key="shared")
    mine = _open(registry, key="shared")
    bobs = _open(registry, BOB, key="shared", reason="bob's reason")
    other_model = _open(registry, key="shared", model="ranker")
    assert len({mine.id, bobs.id, other_model.id}) == 3
    assert (mine.requested_by, bobs.requested_by) == ("alice", "bob")
    # each scope replays its own request
    assert _open(registry, BOB, key="shared", reason="bob's reason").id == bobs.id
    assert _open(registry, key="shared", model="ranker").id == other_model.id
    assert _open(registry, key="shared").id == mine.id


def test_bad_change_request_keys_and_callers_are_refused(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    for bad in ("x" * 129, "tab\there", " padded", "nön-ascii"):
        with pytest.raises(InvalidArgument, match="idempotency key"):
            _open(registry, key=bad)
    first = _open(registry, key="x" * 128)
    with pytest.raises(PermissionDenied):  # a replay still needs registry:write
        _open(registry, READER, key="x" * 128)
    with pytest.raises(InvalidArgument, match="reason"):  # and a valid request
        _open(registry, key="x" * 128, reason=" ")
    assert _open(registry, key="").id != first.id  # empty key: no key, a new request


def test_a_lost_race_on_a_change_request_key_replays_the_winner(registry: Registry,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    first = _open(registry, key="race")
    before = _cr_side_effects(registry)
    real_replay = Releases._replay
    calls: list[int] = []

    def replay_misses_first(self: Releases, *args: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real_replay(self, *args)

    monkeypatch.setattr(Releases, "_replay", replay_misses_first)
    assert _open(registry, key="race").id == first.id
    assert len(calls) == 2 and _cr_side_effects(registry) == before
    calls.clear()
    with pytest.raises(AlreadyExists):  # the loser's request differs: refused the same way
        _open(registry, key="race", reason="other")
    assert _cr_side_effects(registry) == before


def test_concurrent_change_requests_with_one_key_open_one(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    before = _cr_side_effects(registry)
    n = 6
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            barrier.wait()
            results.append(_open(registry, key="burst").id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert len(results) == n and len(set(results)) == 1
    assert _cr_side_effects(registry) == (before[0] + 1, before[1] + 1, before[2] + 1)
