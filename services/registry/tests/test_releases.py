"""Aliases, change requests, policy checks, four eyes, rollback fast-track, expiry, events and audit."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from registry_support import ALICE, BOB, CAROL, GOOD, MALLORY, READER, Registry
from sqlalchemy import select, update

from mlp_core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mlp_registry.domain.errors import PolicyCheckFailed
from mlp_registry.domain.models import ChangeKind, ChangeState
from mlp_registry.store import tables as t


def _events(reg: Registry) -> list[tuple[str, dict]]:
    with reg.db.session() as s:
        rows = s.execute(select(t.events.outbox.c.event_type, t.events.outbox.c.payload)
                         .order_by(t.events.outbox.c.id)).all()
    return [(r[0], json.loads(r[1])) for r in rows]


def _promote(reg: Registry, number: int, requester=ALICE, approver=BOB):  # type: ignore[no-untyped-def]
    cr = reg.service.releases.create_change_request(requester, "fraud", "scorer", "production", number, "better auc")
    reg.service.releases.approve(approver, cr.id, "lgtm")
    return reg.service.releases.apply(requester, cr.id)


def test_unprotected_alias_moves_directly_protected_one_needs_change_request(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    alias = registry.service.releases.set_alias(ALICE, "fraud", "scorer", "champion", 1)
    assert alias.name == "champion"
    with pytest.raises(FailedPrecondition, match="protected"):
        registry.service.releases.set_alias(ALICE, "fraud", "scorer", "production", 1)
    with pytest.raises(InvalidArgument):
        registry.service.releases.set_alias(ALICE, "fraud", "scorer", "Bad Alias!", 1)
    with pytest.raises(NotFound):
        registry.service.releases.set_alias(ALICE, "fraud", "scorer", "champion", 9)
    with pytest.raises(PermissionDenied):
        registry.service.releases.set_alias(READER, "fraud", "scorer", "champion", 1)
    assert [(a.name, n) for a, n in registry.service.releases.list_aliases(READER, "fraud", "scorer")] == [
        ("champion", 1)]
    assert ("mlp.registry.alias-changed", ) == (_events(registry)[-1][0],)


def test_promotion_flow_with_four_eyes_events_and_audit(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    cr = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "first release")
    assert cr.kind is ChangeKind.PROMOTION and cr.state is ChangeState.OPEN
    assert all(c.passed for c in cr.checks), cr.checks
    with pytest.raises(PermissionDenied):  # no registry:approve
        registry.service.releases.approve(ALICE, cr.id)
    with pytest.raises(FailedPrecondition, match="must be approved"):
        registry.service.releases.apply(ALICE, cr.id)
    with pytest.raises(NotFound):  # another tenant cannot even see it
        registry.service.releases.approve(MALLORY, cr.id)
    approved = registry.service.releases.approve(BOB, cr.id, "ok")
    assert approved.state is ChangeState.APPROVED and approved.approvals[0].actor == "bob"
    applied = registry.service.releases.apply(ALICE, cr.id)
    assert applied.state is ChangeState.APPLIED
    aliases = registry.service.releases.list_aliases(ALICE, "fraud", "scorer")
    assert [(a.name, n) for a, n in aliases] == [("production", 1)]
    types = [e for e, _ in _events(registry)]
    assert types[-5:] == ["mlp.registry.version-registered", "mlp.registry.change-request-created",
                          "mlp.registry.change-request-approved", "mlp.registry.alias-changed",
                          "mlp.registry.change-request-applied"]
    envelope = _events(registry)[-2][1]
    assert envelope["data"]["alias"] == "production" and envelope["data"]["version"] == 1
    assert envelope.get("tenant") == "fraud"
    actions = [r.action for r in registry.service.catalog.audit_trail(READER, "fraud", "scorer")]
    assert actions[:4] == ["change-request.applied", "alias.changed", "change-request.approved",
                           "change-request.created"]


def test_requester_cannot_approve_own_promotion(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    cr = registry.service.releases.create_change_request(BOB, "fraud", "scorer", "production", 1, "ship it")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        registry.service.releases.approve(BOB, cr.id)
    assert registry.service.releases.get_change_request(BOB, cr.id)[0].state is ChangeState.OPEN
    assert registry.service.releases.approve(CAROL, cr.id).state is ChangeState.APPROVED


@pytest.mark.parametrize(("fields", "failing"), [
    ({**GOOD, "metrics": {"auc": 0.5}}, "metrics"),
    ({**GOOD, "attributes": {"onnx_parity": {"passed": False}}}, "onnx_parity"),
    ({**GOOD, "attributes": {}}, "onnx_parity"),
    ({"metrics": {"auc": 0.95}, "attributes": GOOD["attributes"]}, "data_quality"),
])
def test_failing_policy_check_blocks_approval_and_apply(registry: Registry, fields: dict, failing: str) -> None:
    registry.register({"a.bin": b"1"}, **fields)
    cr = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "try")
    assert [c.name for c in cr.checks if not c.passed] == [failing]
    with pytest.raises(PolicyCheckFailed, match=failing):
        registry.service.releases.approve(BOB, cr.id)
    with pytest.raises(FailedPrecondition):
        registry.service.releases.apply(ALICE, cr.id)
    assert registry.service.releases.list_aliases(ALICE, "fraud", "scorer") == []


def test_check_rerun_at_apply_catches_tampering_after_approval(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    cr = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "go")
    registry.service.releases.approve(BOB, cr.id)
    with registry.db.session() as s:
        s.execute(update(t.versions).values(metrics={"auc": 0.99, "extra": 1.0}))
    with pytest.raises(PolicyCheckFailed, match="signature"):
        registry.service.releases.apply(ALICE, cr.id)
    assert registry.service.releases.list_aliases(ALICE, "fraud", "scorer") == []


def test_rollback_is_fast_tracked_and_may_be_self_approved(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.register({"a.bin": b"2"}, **GOOD)
    _promote(registry, 1)
    _promote(registry, 2)
    registry.service.catalog.update_model(ALICE, "fraud", "scorer", _no_update(), thresholds={"auc": {"min": 0.99}})
    cr = registry.service.releases.create_change_request(BOB, "fraud", "scorer", "production", 1, "v2 broke")
    assert cr.kind is ChangeKind.ROLLBACK and cr.previous_version_id is not None
    metrics = next(c for c in cr.checks if c.name == "metrics")
    assert not metrics.passed and not metrics.blocking  # informational for rollbacks
    registry.service.releases.approve(BOB, cr.id, "on-call rollback")
    registry.service.releases.apply(BOB, cr.id)
    assert [n for _, n in registry.service.releases.list_aliases(ALICE, "fraud", "scorer")] == [1]
    # A promotion of a version that never held the alias still needs thresholds and four eyes.
    registry.register({"a.bin": b"3"}, **GOOD)
    cr3 = registry.service.releases.create_change_request(BOB, "fraud", "scorer", "production", 3, "v3")
    assert cr3.kind is ChangeKind.PROMOTION
    with pytest.raises(PermissionDenied):
        registry.service.releases.approve(BOB, cr3.id)


def _no_update():  # type: ignore[no-untyped-def]
    from mlp_registry.domain.catalog import MetadataUpdate

    return MetadataUpdate()


def test_reject_expire_and_stale_alias(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    registry.register({"a.bin": b"2"}, **GOOD)
    cr = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "a")
    with pytest.raises(PermissionDenied):  # neither approver nor requester
        registry.service.releases.reject(READER, cr.id, "no")
    rejected = registry.service.releases.reject(BOB, cr.id, "not now")
    assert rejected.state is ChangeState.REJECTED
    with pytest.raises(FailedPrecondition):
        registry.service.releases.approve(CAROL, cr.id)
    assert _events(registry)[-1][0] == "mlp.registry.change-request-rejected"

    late = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "b")
    registry.clock.now += timedelta(hours=2)
    with pytest.raises(FailedPrecondition, match="expired"):
        registry.service.releases.approve(BOB, late.id)
    assert registry.service.releases.get_change_request(ALICE, late.id)[0].state is ChangeState.EXPIRED

    stale = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 2, "c")
    registry.service.releases.approve(BOB, stale.id)
    _promote(registry, 1)
    with pytest.raises(Conflict, match="moved"):
        registry.service.releases.apply(ALICE, stale.id)

    sweep = registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 2, "d")
    registry.clock.now += timedelta(hours=2)
    assert registry.service.releases.expire_stale(BOB) >= 1
    assert registry.service.releases.get_change_request(ALICE, sweep.id)[0].state is ChangeState.EXPIRED


def test_change_request_bad_inputs(registry: Registry) -> None:
    registry.register({"a.bin": b"1"}, **GOOD)
    with pytest.raises(InvalidArgument, match="reason"):
        registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 1, "  ")
    with pytest.raises(NotFound):
        registry.service.releases.create_change_request(ALICE, "fraud", "scorer", "production", 7, "x")
    with pytest.raises(NotFound):
        registry.service.releases.create_change_request(MALLORY, "fraud", "scorer", "production", 1, "x")
    with pytest.raises(NotFound):
        registry.service.releases.approve(BOB, "no-such-id")
