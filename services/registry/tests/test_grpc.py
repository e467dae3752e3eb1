"""gRPC registration, resumable upload, verified download and lineage over a real grpc.aio server.

The server is the real ``ServiceHost`` (auth and error interceptors) on a free port; tokens come
from the test OIDC issuer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from registry_support import ALICE
from sqlalchemy import func, select

from mlp_core.broker import free_port
from mlp_core.db import Database, migrate
from mlp_core.host import ServiceHost, ServiceParts
from mlp_protos.mlp.common.v1 import common_pb2
from mlp_protos.mlp.registry.v1 import registry_pb2 as pb
from mlp_protos.mlp.registry.v1 import registry_pb2_grpc as pb_grpc
from mlp_registry.api.grpc import registry_registrar
from mlp_registry.domain.service import RegistryService
from mlp_registry.main import MIGRATIONS_DIR, build_service
from mlp_registry.settings import RegistrySettings
from mlp_registry.store import tables as t

SEG = 65536
DATA = os.urandom(5 * SEG + 1234)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
RW = "registry:read registry:write"


class Server:
    """A running registry host, a stub, and token helpers."""

    def __init__(self, stub: pb_grpc.RegistryServiceStub, issuer: Any, service: RegistryService,
                 artifact_dir: Path, target: str) -> None:
        self.stub, self.issuer, self.service, self.artifact_dir = stub, issuer, service, artifact_dir
        self.target = target

    def md(self, sub: str = "alice", scope: str = RW, projects: Iterable[str] = ("fraud",)) -> tuple[tuple[str, str]]:
        """Call metadata with a fresh bearer token."""
        token = self.issuer.mint(sub=sub, scope=scope, projects=list(projects))
        return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def server(any_db_url: str, tmp_path: Path, test_issuer: Any) -> AsyncIterator[Server]:
    """The registry's gRPC server on PostgreSQL and SQLite, with a 'fraud/scorer' model."""
    settings = RegistrySettings(state_dir=tmp_path, database_url=any_db_url, oidc_issuer=test_issuer.issuer,
                                kafka_bootstrap_servers="", registry_segment_size=SEG, grpc_port=free_port())
    migrate(any_db_url, MIGRATIONS_DIR, version_table="alembic_version_registry")
    db = Database(any_db_url)
    service = build_service(settings, db)
    service.catalog.create_model(ALICE, "fraud", "scorer")
    host = ServiceHost(settings, ServiceParts(title="registry", grpc_registrars=[registry_registrar(service)]),
                       verifier=test_issuer.verifier())
    await host.start_background()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            yield Server(pb_grpc.RegistryServiceStub(channel), test_issuer, service, settings.artifact_dir,
                         f"127.0.0.1:{settings.grpc_port}")
    finally:
        await host.stop_background()
        db.dispose()


def _register_request(digest: str = DIGEST) -> pb.RegisterVersionRequest:
    lineage = pb.VersionLineage(training_run_id="run-7", code_version="git:abc", inputs=[
        common_pb2.ObjectRef(kind="feature_view", name="fraud.txn_stats"),
        common_pb2.ObjectRef(kind="dataset", digest="sha256:" + "b" * 64)])
    return pb.RegisterVersionRequest(
        version=pb.ModelVersion(project="fraud", model="scorer", format="onnx", metrics={"auc": 0.93},
                                lineage=lineage),
        files=[pb.ArtifactFile(path="model.onnx", size_bytes=len(DATA), digest=digest)])


def _upload_messages(upload_id: str, offset: int, data: bytes, piece: int = 40_000) -> list[pb.UploadArtifactRequest]:
    return [pb.UploadArtifactRequest(start=pb.UploadStart(upload_id=upload_id, offset=offset))] + [
        pb.UploadArtifactRequest(data=data[i:i + piece]) for i in range(0, len(data), piece)]


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):  # a server stream: the error comes with the first read
            [m async for m in call]
        else:
            await call
    return err.value.code()


async def _resume(s: Server, upload_id: str) -> pb.UploadSession:
    """What a client does after a broken stream: ask for the offset, send the rest, retry on ABORTED."""
    for _ in range(100):
        session = await s.stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id), metadata=s.md())
        try:
            return await s.stub.UploadArtifact(
                iter(_upload_messages(upload_id, session.offset, DATA[session.offset:])), metadata=s.md())
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:  # a writer that was cut off may still be finishing
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the upload session never became free")


async def test_register_upload_resume_commit_download(server: Server) -> None:
    s = server
    draft = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    assert draft.version.state == pb.VERSION_STATE_PENDING_UPLOAD and draft.version.version == 1
    (upload,) = draft.uploads
    assert (upload.path, upload.size_bytes, upload.offset, upload.digest) == ("model.onnx", len(DATA), 0, DIGEST)

    # 1. a stream that half-closes early: only whole 64 KiB segments are durable
    cut = await s.stub.UploadArtifact(iter(_upload_messages(upload.id, 0, DATA[:100_000])), metadata=s.md())
    assert cut.offset == SEG and cut.state == pb.UPLOAD_STATE_OPEN
    assert await _code(s.stub.UploadArtifact(iter(_upload_messages(upload.id, 0, DATA)),
                                             metadata=s.md())) == grpc.StatusCode.ABORTED
    assert await _code(s.stub.CommitVersion(pb.CommitVersionRequest(project="fraud", model="scorer", version=1),
                                            metadata=s.md())) == grpc.StatusCode.FAILED_PRECONDITION
    # 2. a second cut, resumed from the server-reported offset: again only whole segments count
    session = await s.stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload.id), metadata=s.md())
    assert session.offset == SEG
    cut = await s.stub.UploadArtifact(iter(_upload_messages(upload.id, SEG, DATA[SEG:SEG + 150_000])),
                                      metadata=s.md())
    assert cut.offset == 3 * SEG
    # 3. resume from the server-reported offset
    done = await _resume(s, upload.id)
    assert done.state == pb.UPLOAD_STATE_COMPLETE and done.offset == len(DATA)

    version = await s.stub.CommitVersion(pb.CommitVersionRequest(project="fraud", model="scorer", version=1),
                                         metadata=s.md())
    assert version.state == pb.VERSION_STATE_READY and version.manifest.digest.startswith("sha256:")
    assert [f.digest for f in version.manifest.files] == [DIGEST]
    keys = await s.stub.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=s.md())
    assert version.signature.key_id in {k.key_id for k in keys.keys}

    reader = s.md("rita", "registry:read")
    parts = [m async for m in s.stub.DownloadArtifact(
        pb.DownloadArtifactRequest(project="fraud", model="scorer", version=1, chunk_size=70_000), metadata=reader)]
    assert parts[0].header.manifest.digest == version.manifest.digest
    body = b"".join(p.chunk.data for p in parts[1:])
    assert body == DATA and "sha256:" + hashlib.sha256(body).hexdigest() == parts[0].header.manifest.files[0].digest


async def _registered(s: Server) -> None:
    draft = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    await s.stub.UploadArtifact(iter(_upload_messages(draft.uploads[0].id, 0, DATA)), metadata=s.md())
    await s.stub.CommitVersion(pb.CommitVersionRequest(project="fraud", model="scorer", version=1), metadata=s.md())


async def test_tampered_artifact_is_refused_with_data_loss(server: Server) -> None:
    s = server
    await _registered(s)
    (stored,) = [p for p in (s.artifact_dir / "objects").rglob("*") if p.is_file()]
    raw = bytearray(stored.read_bytes())
    raw[10] ^= 0x01
    stored.write_bytes(bytes(raw))
    request = pb.DownloadArtifactRequest(project="fraud", model="scorer", version=1)
    received: list[pb.DownloadArtifactResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for part in s.stub.DownloadArtifact(request, metadata=s.md()):
            received.append(part)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS and "segment 0" in (err.value.details() or "")
    assert all(not p.chunk.data for p in received), "no byte of a failed segment is released"


async def test_tenancy_scopes_and_bad_requests(server: Server) -> None:
    s = server
    await _registered(s)
    eve = s.md("eve", projects=("other",))
    assert await _code(s.stub.GetModel(pb.GetModelRequest(project="fraud", name="scorer"),
                                       metadata=eve)) == grpc.StatusCode.NOT_FOUND
    assert await _code(s.stub.RegisterVersion(_register_request(), metadata=eve)) == grpc.StatusCode.NOT_FOUND
    assert await _code(s.stub.DownloadArtifact(pb.DownloadArtifactRequest(project="fraud", model="scorer", version=1),
                                               metadata=eve)) == grpc.StatusCode.NOT_FOUND
    subject = common_pb2.ObjectRef(kind="model_version", name="scorer", version="1")
    assert await _code(s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=subject),
                                         metadata=eve)) == grpc.StatusCode.NOT_FOUND
    draft = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    upload_id = draft.uploads[0].id
    assert await _code(s.stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id),
                                               metadata=eve)) == grpc.StatusCode.NOT_FOUND
    assert await _code(s.stub.UploadArtifact(iter(_upload_messages(upload_id, 0, DATA)),
                                             metadata=eve)) == grpc.StatusCode.NOT_FOUND

    reader = s.md("rita", "registry:read")
    assert await _code(s.stub.RegisterVersion(_register_request(), metadata=reader)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert await _code(s.stub.UploadArtifact(iter(_upload_messages(upload_id, 0, DATA)), metadata=reader)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert await _code(s.stub.CommitVersion(pb.CommitVersionRequest(project="fraud", model="scorer", version=2),
                                            metadata=reader)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code(s.stub.GetModel(pb.GetModelRequest(project="fraud", name="scorer"))) == \
        grpc.StatusCode.UNAUTHENTICATED

    no_start = [pb.UploadArtifactRequest(data=b"x")]
    assert await _code(s.stub.UploadArtifact(iter(no_start), metadata=s.md())) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(s.stub.RegisterVersion(_register_request("md5:abc"), metadata=s.md())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    wrong = await s.stub.RegisterVersion(_register_request("sha256:" + "0" * 64), metadata=s.md())
    assert await _code(s.stub.UploadArtifact(iter(_upload_messages(wrong.uploads[0].id, 0, DATA)),
                                             metadata=s.md())) == grpc.StatusCode.INVALID_ARGUMENT
    odd = common_pb2.ObjectRef(kind="prediction", name="p1")
    assert await _code(s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=odd), metadata=s.md())) == \
        grpc.StatusCode.INVALID_ARGUMENT


async def test_lineage_both_directions(server: Server) -> None:
    s = server
    await _registered(s)
    await asyncio.to_thread(s.service.releases.set_alias, ALICE, "fraud", "scorer", "staging", 1)
    version = common_pb2.ObjectRef(kind="model_version", name="scorer", version="1")
    up = await s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=version,
                                                      direction=pb.LINEAGE_DIRECTION_UPSTREAM), metadata=s.md())
    sources = {(e.source.kind, e.source.name or e.source.digest, e.relation) for e in up.edges}
    assert sources == {("training_run", "run-7", "produced"), ("feature_view", "fraud.txn_stats", "trained_on"),
                       ("dataset", "sha256:" + "b" * 64, "trained_on"), ("source", "git:abc", "built_from")}
    assert all(e.target.kind == "model_version" and e.target.version == "1" for e in up.edges)

    both = await s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=version,
                                                        direction=pb.LINEAGE_DIRECTION_BOTH), metadata=s.md())
    assert ("alias", "scorer:staging") in {(n.kind, n.name) for n in both.nodes} and len(both.edges) == 5

    view = common_pb2.ObjectRef(kind="feature_view", name="fraud.txn_stats")
    down = await s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=view,
                                                        direction=pb.LINEAGE_DIRECTION_DOWNSTREAM), metadata=s.md())
    assert [(e.target.kind, e.target.name, e.target.version) for e in down.edges] == [
        ("model_version", "scorer", "1"), ("alias", "scorer:staging", "")]
    one_hop = await s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=view, depth=1,
                                                           direction=pb.LINEAGE_DIRECTION_DOWNSTREAM),
                                      metadata=s.md())
    assert len(one_hop.edges) == 1
    other = await s.stub.GetLineage(pb.GetLineageRequest(project="fraud", subject=view,
                                                         direction=pb.LINEAGE_DIRECTION_DOWNSTREAM),
                                    metadata=s.md("eve", projects=("other",)))
    assert list(other.edges) == []


async def test_register_version_honours_the_idempotency_key(server: Server) -> None:
    s = server
    request = _register_request()
    request.idempotency_key = "run-7-attempt"
    first = await s.stub.RegisterVersion(request, metadata=s.md())
    retry = await s.stub.RegisterVersion(request, metadata=s.md())
    assert (retry.version.version, [u.id for u in retry.uploads]) == (1, [u.id for u in first.uploads])
    assert retry.version.state == pb.VERSION_STATE_PENDING_UPLOAD

    changed = _register_request("sha256:" + "1" * 64)
    changed.idempotency_key = "run-7-attempt"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.stub.RegisterVersion(changed, metadata=s.md())
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "run-7-attempt" in (err.value.details() or "")

    other_caller = await s.stub.RegisterVersion(request, metadata=s.md("bob"))
    no_key = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    assert (other_caller.version.version, no_key.version.version) == (2, 3)
    request.idempotency_key = "\x00"
    assert await _code(s.stub.RegisterVersion(request, metadata=s.md())) == grpc.StatusCode.INVALID_ARGUMENT


async def test_create_change_request_honours_the_idempotency_key(server: Server) -> None:
    s = server
    await _registered(s)
    outbox_before = await asyncio.to_thread(_outbox_count, s)
    origin = common_pb2.ObjectRef(project="fraud", kind="training_run", name="run-7")
    request = pb.CreateChangeRequestRequest(project="fraud", model="scorer", alias="production", version=1,
                                            reason="better auc", origin=origin, idempotency_key="release-7")
    first = await s.stub.CreateChangeRequest(request, metadata=s.md())
    retry = await s.stub.CreateChangeRequest(request, metadata=s.md())
    assert retry.id == first.id and retry.state == pb.CHANGE_REQUEST_STATE_OPEN
    assert await asyncio.to_thread(_outbox_count, s) == outbox_before + 1, "the retry emits no second event"
    # CHANGE_KIND_SET_ALIAS is what an unspecified kind means: the same request
    retry.CopyFrom(await s.stub.CreateChangeRequest(
        pb.CreateChangeRequestRequest(**{**_fields(request), "kind": pb.CHANGE_KIND_SET_ALIAS}), metadata=s.md()))
    assert retry.id == first.id

    # kinds a change request cannot carry are refused, never turned into set-alias
    for kind in (pb.CHANGE_KIND_REMOVE_ALIAS, 99):
        refused = pb.CreateChangeRequestRequest(**{**_fields(request), "kind": kind, "idempotency_key": ""})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.CreateChangeRequest(refused, metadata=s.md())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "SET_ALIAS" in (err.value.details() or "")

    for changed in ({"reason": "other"}, {"alias": "canary"},
                    {"origin": common_pb2.ObjectRef(project="fraud", kind="training_run", name="run-8")}):
        clash = pb.CreateChangeRequestRequest(**{**_fields(request), **changed})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.CreateChangeRequest(clash, metadata=s.md())
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "release-7" in (err.value.details() or "")

    bobs = await s.stub.CreateChangeRequest(request, metadata=s.md("bob"))
    no_key = await s.stub.CreateChangeRequest(pb.CreateChangeRequestRequest(
        **{**_fields(request), "idempotency_key": ""}), metadata=s.md())
    assert len({first.id, bobs.id, no_key.id}) == 3
    request.idempotency_key = "\x00"
    assert await _code(s.stub.CreateChangeRequest(request, metadata=s.md())) == grpc.StatusCode.INVALID_ARGUMENT


def _fields(message: Any) -> dict[str, Any]:
    return {f.name: v for f, v in message.ListFields()}


def _outbox_count(s: Server) -> int:
    """Events written to the outbox so far (the server's own database)."""
    with s.service.ctx.store.db.session() as session:  # type: ignore[attr-defined]
        return int(session.execute(select(func.count()).select_from(t.events.outbox)).scalar_one())


def _stalling(upload_id: str, stop: asyncio.Event) -> AsyncIterator[pb.UploadArtifactRequest]:
    """Two whole segments and a part of the third, then nothing (the stream stays open until ``stop``)."""
    async def messages() -> AsyncIterator[pb.UploadArtifactRequest]:
        for m in _upload_messages(upload_id, 0, DATA[:2 * SEG + 5000]):
            yield m
        await stop.wait()
    return messages()


async def _resume_promptly(s: Server, upload_id: str, within_s: float) -> tuple[int, pb.UploadSession, float]:
    """Resume as a client would, retrying ABORTED; fails unless the session is free well within the lease TTL."""
    started = time.monotonic()
    while True:
        session = await s.stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id), metadata=s.md())
        try:
            done = await s.stub.UploadArtifact(
                iter(_upload_messages(upload_id, session.offset, DATA[session.offset:])), metadata=s.md())
            return session.offset, done, time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED or time.monotonic() - started > within_s:
                raise AssertionError(f"resume refused for {time.monotonic() - started:.1f} s: {exc.details()}"
                                     ) from exc
            await asyncio.sleep(0.05)


async def _commit_and_verify(s: Server) -> None:
    await s.stub.CommitVersion(pb.CommitVersionRequest(project="fraud", model="scorer", version=1), metadata=s.md())
    parts = [m async for m in s.stub.DownloadArtifact(
        pb.DownloadArtifactRequest(project="fraud", model="scorer", version=1), metadata=s.md())]
    assert b"".join(p.chunk.data for p in parts[1:]) == DATA
    report = await asyncio.to_thread(s.service.downloads.verify, ALICE, "fraud", "scorer", 1)
    assert report["files"] == 1 and report["manifest_digest"], report


@pytest.mark.parametrize("ending", ["cancel", "deadline", "disconnect"])
async def test_a_stream_that_ends_abnormally_frees_the_session_at_once(server: Server, ending: str) -> None:
    """The lease (60 s TTL) is released as soon as the stream ends, not when it lapses; whole segments stay."""
    s = server
    draft = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    upload_id = draft.uploads[0].id
    stop = asyncio.Event()
    # A channel of its own, with the process-wide trace-context interceptor (mlp_core.grpc), which lets
    # cancel() through (OpenTelemetry's client interceptor did not: opentelemetry-python-contrib#3271).
    channel = grpc.aio.insecure_channel(s.target)
    call = pb_grpc.RegistryServiceStub(channel).UploadArtifact(
        _stalling(upload_id, stop), metadata=s.md(), timeout=1.0 if ending == "deadline" else None)
    try:
        for _ in range(100):  # until the server has taken the lease and is writing
            if (s.artifact_dir / "staging" / upload_id).exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        if ending == "cancel":
            assert call.cancel()
        elif ending == "deadline":
            assert await _code(call) == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            await channel.close()
        offset, done, waited = await _resume_promptly(s, upload_id, within_s=5.0)
    finally:
        stop.set()
        await channel.close()
    assert offset == 2 * SEG, "the whole segments of the cut stream are durable; the partial one is not"
    assert done.state == pb.UPLOAD_STATE_COMPLETE and waited < 5.0
    await _commit_and_verify(s)


async def test_a_silent_stream_is_ended_after_the_idle_timeout(server: Server) -> None:
    """A client that stalls (sends nothing more and never ends the stream, as a client behind a broken
    interceptor or a hung process does): the server ends the stream after the idle timeout, keeps the
    whole segments and frees the session."""
    s = server
    s.service.uploads.stream_idle_timeout = timedelta(seconds=1)
    draft = await s.stub.RegisterVersion(_register_request(), metadata=s.md())
    upload_id = draft.uploads[0].id
    stop = asyncio.Event()
    call = s.stub.UploadArtifact(_stalling(upload_id, stop), metadata=s.md())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call, 10)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert f"{2 * SEG} bytes are durable" in (err.value.details() or "")
        offset, done, waited = await _resume_promptly(s, upload_id, within_s=2.0)
    finally:
        stop.set()
    assert offset == 2 * SEG and done.state == pb.UPLOAD_STATE_COMPLETE and waited < 2.0
    await _commit_and_verify(s)
