"""Uploads, downloads, encryption at rest, tampering, key rotation, and the serving-side verifier."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_support import ADMIN, ALICE, MALLORY, READER, Registry
from sqlalchemy import select, update

from mlp_core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mlp_registry.domain.errors import IntegrityCheckFailed
from mlp_registry.domain.models import FileSpec
from mlp_registry.domain.uploads import VersionDraft
from mlp_registry.store import tables as t
from mlp_registry.verification import verify_model_files

MARKER = b"PLAINTEXT-MARKER-0123456789"
WEIGHTS = MARKER * 20_000 + os.urandom(1234)  # ~540 KiB, several 64 KiB segments
CONFIG = b'{"layers": 3, "marker": "' + MARKER + b'"}'


def _spec(path: str, data: bytes, sha: str | None = None) -> FileSpec:
    return FileSpec(path, len(data), sha or hashlib.sha256(data).hexdigest())


def test_register_and_download_roundtrip(registry: Registry) -> None:
    version = registry.register({"model.onnx": WEIGHTS, "config.json": CONFIG})
    assert version.number == 1 and version.manifest_digest and version.signature
    assert registry.read(1, "model.onnx") == WEIGHTS
    assert registry.read(1, "config.json", caller=READER) == CONFIG
    report = registry.service.downloads.verify(ALICE, "fraud", "scorer", 1)
    assert report["files"] == 2


def test_files_on_disk_are_not_plaintext(sqlite_registry: Registry) -> None:
    sqlite_registry.register({"model.onnx": WEIGHTS, "config.json": CONFIG})
    stored = [p for p in sqlite_registry.root.rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert len(stored) == 2
    for path in stored:
        assert MARKER not in path.read_bytes()
        assert b"layers" not in path.read_bytes()
    assert MARKER not in (sqlite_registry.root / "reg.db").read_bytes()


def test_resumable_upload_after_cut(registry: Registry) -> None:
    seg = registry.service.ctx.segment_size
    version, (upload,) = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[_spec("model.onnx", WEIGHTS)]))
    cut = 2 * seg + 1000  # not on a segment boundary: only two whole segments are kept
    state = registry.service.uploads.write(ALICE, upload.id, 0, [WEIGHTS[:cut]])
    assert state.offset == 2 * seg
    with pytest.raises(FailedPrecondition, match="uploads incomplete"):
        registry.service.uploads.commit(ALICE, "fraud", "scorer", version.number)
    with pytest.raises(Conflict, match=f"offset {2 * seg}"):
        registry.service.uploads.write(ALICE, upload.id, 0, [WEIGHTS])
    # A new service instance (a restarted process) has no hash checkpoint: it recomputes from staging.
    from mlp_registry.domain.service import RegistryService

    fresh = RegistryService(registry.service.ctx)
    assert fresh.uploads.get_upload(ALICE, upload.id).offset == 2 * seg
    done = fresh.uploads.write(ALICE, upload.id, 2 * seg, [WEIGHTS[2 * seg:]])
    assert done.offset == len(WEIGHTS) and done.state.value == "complete"
    fresh.uploads.commit(ALICE, "fraud", "scorer", version.number)
    assert registry.read(version.number, "model.onnx") == WEIGHTS


def test_wrong_digest_resets_upload_and_registers_nothing(registry: Registry) -> None:
    version, (upload,) = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[_spec("model.onnx", WEIGHTS, "0" * 64)]))
    with pytest.raises(InvalidArgument, match="SHA-256"):
        registry.service.uploads.write(ALICE, upload.id, 0, [WEIGHTS])
    assert registry.service.uploads.get_upload(ALICE, upload.id).offset == 0
    with pytest.raises(FailedPrecondition):
        registry.service.uploads.commit(ALICE, "fraud", "scorer", version.number)
    assert registry.service.catalog.list_versions(ALICE, "fraud", "scorer").items == []
    with pytest.raises(NotFound):
        registry.service.downloads.open_file(ALICE, "fraud", "scorer", version.number, "model.onnx")


def test_more_bytes_than_declared_are_refused(registry: Registry) -> None:
    _, (upload,) = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[_spec("a.bin", b"1234")]))
    with pytest.raises(InvalidArgument, match="more bytes"):
        registry.service.uploads.write(ALICE, upload.id, 0, [b"12345"])
    assert registry.service.uploads.get_upload(ALICE, upload.id).offset == 0


@pytest.mark.parametrize("files", [
    [],
    [FileSpec("../etc/passwd", 1, "0" * 64)],
    [FileSpec("/abs", 1, "0" * 64)],
    [FileSpec("a", 1, "0" * 64), FileSpec("a", 1, "0" * 64)],
    [FileSpec("a", 1, "XYZ")],
    [FileSpec("a", -1, "0" * 64)],
    [FileSpec("a", 1, "0" * 64), FileSpec("a/b", 1, "0" * 64)],
])
def test_malformed_manifest_is_refused_and_leaves_nothing(registry: Registry, files: list[FileSpec]) -> None:
    with pytest.raises(InvalidArgument):
        registry.service.uploads.create_draft(ALICE, "fraud", "scorer", VersionDraft(files=files))
    with registry.db.session() as s:
        assert s.execute(select(t.versions)).first() is None


def test_unknown_model_other_tenant_and_scopes(registry: Registry) -> None:
    registry.register({"a.bin": b"x"})
    draft = VersionDraft(files=[_spec("a.bin", b"x")])
    with pytest.raises(NotFound):
        registry.service.uploads.create_draft(ALICE, "fraud", "nope", draft)
    with pytest.raises(NotFound):  # another project's model looks absent
        registry.service.uploads.create_draft(MALLORY, "fraud", "scorer", draft)
    with pytest.raises(NotFound):
        registry.service.downloads.open_file(MALLORY, "fraud", "scorer", 1, "a.bin")
    with pytest.raises(PermissionDenied):
        registry.service.uploads.create_draft(READER, "fraud", "scorer", draft)


def _object_path(reg: Registry, number: int, path: str) -> Path:
    with reg.db.session() as s:
        key = s.execute(select(t.files.c.object_key).join(t.versions, t.versions.c.id == t.files.c.version_id)
                        .where(t.versions.c.number == number, t.files.c.path == path)).scalar_one()
    return reg.artifacts.objects / key


def test_flipped_byte_on_disk_is_refused(sqlite_registry: Registry) -> None:
    sqlite_registry.register({"model.onnx": WEIGHTS})
    target = _object_path(sqlite_registry, 1, "model.onnx")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityCheckFailed, match="failed authentication"):
        sqlite_registry.read(1, "model.onnx")
    with pytest.raises(IntegrityCheckFailed):
        sqlite_registry.service.downloads.verify(ALICE, "fraud", "scorer", 1)


def test_swapped_files_are_refused(sqlite_registry: Registry) -> None:
    sqlite_registry.register({"a.bin": WEIGHTS, "b.bin": WEIGHTS[::-1]})
    a, b = _object_path(sqlite_registry, 1, "a.bin"), _object_path(sqlite_registry, 1, "b.bin")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    for path in ("a.bin", "b.bin"):
        with pytest.raises(IntegrityCheckFailed):
            sqlite_registry.read(1, path)


def test_truncated_object_is_refused(sqlite_registry: Registry) -> None:
    sqlite_registry.register({"model.onnx": WEIGHTS})
    target = _object_path(sqlite_registry, 1, "model.onnx")
    seg = sqlite_registry.service.ctx.segment_size + 16
    target.write_bytes(target.read_bytes()[: 2 * seg])
    with pytest.raises(IntegrityCheckFailed, match="truncated"):
        sqlite_registry.read(1, "model.onnx")


def test_replaced_manifest_or_digest_is_refused(registry: Registry) -> None:
    registry.register({"model.onnx": WEIGHTS})
    registry.register({"model.onnx": WEIGHTS + b"v2"})
    with registry.db.session() as s:
        sig2 = s.execute(select(t.versions.c.signature).where(t.versions.c.number == 2)).scalar_one()
        # 1) put version 2's (validly signed) manifest on version 1
        s.execute(update(t.versions).where(t.versions.c.number == 1).values(signature=sig2))
    with pytest.raises(IntegrityCheckFailed, match="not the one recorded"):
        registry.read(1, "model.onnx")
    with registry.db.session() as s:
        s.execute(update(t.files).values(sha256="0" * 64).where(
            t.files.c.version_id == select(t.versions.c.id).where(t.versions.c.number == 2).scalar_subquery()))
    # 2) a file digest in the database no longer matches the signed manifest
    with pytest.raises(IntegrityCheckFailed, match="differs from its signed manifest"):
        registry.read(2, "model.onnx")


def test_changed_metrics_break_the_signature_check(registry: Registry) -> None:
    registry.register({"a.bin": b"abc"}, metrics={"auc": 0.5})
    with registry.db.session() as s:
        s.execute(update(t.versions).values(metrics={"auc": 0.99}))
    with pytest.raises(IntegrityCheckFailed):
        registry.service.downloads.manifest(ALICE, "fraud", "scorer", 1)


def test_key_rotation_keeps_every_version_readable(registry: Registry) -> None:
    registry.register({"model.onnx": WEIGHTS})
    registry.register({"model.onnx": CONFIG, "extra.bin": b""})
    with pytest.raises(PermissionDenied):
        registry.service.downloads.rotate_keys(ALICE)
    result = registry.service.downloads.rotate_keys(ADMIN)
    assert result == {"key_id": "local-kek", "key_version": 2, "rewrapped": 3}
    registry.register({"model.onnx": b"after rotation"})
    assert registry.service.downloads.rotate_keys(ADMIN)["rewrapped"] == 4
    with registry.db.session() as s:
        assert set(s.execute(select(t.files.c.key_version)).scalars()) == {3}
    assert registry.read(1, "model.onnx") == WEIGHTS
    assert registry.read(2, "extra.bin") == b""
    assert registry.read(3, "model.onnx") == b"after rotation"


def test_wrapped_key_moved_between_files_is_refused(registry: Registry) -> None:
    registry.register({"a.bin": b"aaa", "b.bin": b"bbb"})
    with registry.db.session() as s:
        wrapped = s.execute(select(t.files.c.wrapped_key).where(t.files.c.path == "a.bin")).scalar_one()
        s.execute(update(t.files).where(t.files.c.path == "b.bin").values(wrapped_key=wrapped))
    with pytest.raises(IntegrityCheckFailed, match="wrapped data key"):
        registry.read(1, "b.bin")


def test_serving_side_verifier(registry: Registry, tmp_path: Path) -> None:
    registry.register({"model.onnx": WEIGHTS, "cfg/config.json": CONFIG})
    signed = registry.service.downloads.manifest(ALICE, "fraud", "scorer", 1)
    keys = registry.service.downloads.public_keys()
    out = tmp_path / "dl"
    for path in ("model.onnx", "cfg/config.json"):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(registry.read(1, path))
    manifest = verify_model_files(signed.envelope, keys, out, expected_version_id=signed.manifest["version_id"])
    assert [f["path"] for f in manifest["files"]] == ["cfg/config.json", "model.onnx"]
    (out / "model.onnx").write_bytes(WEIGHTS[:-1] + b"!")
    with pytest.raises(IntegrityCheckFailed, match=r"model\.onnx"):
        verify_model_files(signed.envelope, keys, out)
    (out / "model.onnx").write_bytes(WEIGHTS)
    (out / "evil.py").write_bytes(b"import os")
    with pytest.raises(IntegrityCheckFailed, match="extra"):
        verify_model_files(signed.envelope, keys, out)
    tampered = json.loads(json.dumps(signed.envelope))
    tampered["signatures"][0]["keyid"] = "unknown"
    with pytest.raises(IntegrityCheckFailed, match="trusted"):
        verify_model_files(tampered, keys, out)


def test_concurrent_writers_to_one_session_are_locked_out(registry: Registry) -> None:
    import threading
    from datetime import timedelta

    seg = registry.service.ctx.segment_size
    version, (upload,) = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[_spec("model.onnx", WEIGHTS)]))
    go_on = threading.Event()

    def slow() -> Iterator[bytes]:
        yield WEIGHTS[:seg]
        go_on.wait(10)
        yield WEIGHTS[seg:]

    result: list[object] = []
    first = threading.Thread(target=lambda: result.append(
        registry.service.uploads.write(ALICE, upload.id, 0, slow())))
    first.start()
    for _ in range(200):  # wait until the first writer holds the lease
        if registry.service.uploads.get_upload(ALICE, upload.id).lease_id:
            break
        first.join(0.05)
    with pytest.raises(Conflict, match="another stream is writing"):
        registry.service.uploads.write(ALICE, upload.id, 0, [WEIGHTS])
    go_on.set()
    first.join(10)
    assert getattr(result[0], "offset", None) == len(WEIGHTS)
    assert registry.service.uploads.get_upload(ALICE, upload.id).lease_id is None, "lease released"
    registry.service.uploads.commit(ALICE, "fraud", "scorer", version.number)
    assert registry.read(version.number, "model.onnx") == WEIGHTS
    # a writer that died holding a lease blocks the session only until the lease lapses
    _, (stuck,) = registry.service.uploads.create_draft(
        ALICE, "fraud", "scorer", VersionDraft(files=[_spec("config.json", CONFIG)]))
    now = registry.clock()
    with registry.service.ctx.store.transaction() as tx:
        assert tx.claim_upload(stuck.id, 0, "crashed-writer", now, now + timedelta(seconds=60))
        assert not tx.claim_upload(stuck.id, 0, "second-writer", now, now + timedelta(seconds=60))
    with pytest.raises(Conflict):
        registry.service.uploads.write(ALICE, stuck.id, 0, [CONFIG])
    registry.clock.now += timedelta(seconds=61)
    assert registry.service.uploads.write(ALICE, stuck.id, 0, [CONFIG]).state.value == "complete"


def test_audit_filter_by_model_is_exact(registry: Registry) -> None:
    registry.service.catalog.create_model(ALICE, "fraud", "scorer2")
    registry.register({"m.onnx": CONFIG}, model="scorer2")
    registry.register({"m.onnx": CONFIG}, model="scorer")
    mine = registry.service.catalog.audit_trail(READER, "fraud", "scorer")
    assert mine and all(r.subject in ("fraud/scorer", "fraud/scorer@1") for r in mine)
    theirs = registry.service.catalog.audit_trail(READER, "fraud", "scorer2")
    assert {r.subject for r in theirs} == {"fraud/scorer2", "fraud/scorer2@1"}
