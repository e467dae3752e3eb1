"""REST and gRPC through the real host: tokens from a test issuer, streaming upload/download, problem+json."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mlp_core.auth import AuthInterceptor
from mlp_core.db import Database, migrate
from mlp_core.grpc import ErrorInterceptor
from mlp_core.host import ServiceHost
from mlp_protos.mlp.registry.v1 import registry_pb2 as pb
from mlp_protos.mlp.registry.v1 import registry_pb2_grpc as pb_grpc
from mlp_registry.api.grpc import RegistryServicer
from mlp_registry.main import MIGRATIONS_DIR, build, build_service
from mlp_registry.settings import RegistrySettings
from mlp_registry.store import tables as t

API = "/api/v1/registry"
DATA = os.urandom(300_000) + b"MARKER"


@pytest.fixture
def settings(tmp_path: Path, test_issuer) -> RegistrySettings:  # type: ignore[no-untyped-def]
    return RegistrySettings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/r.db",
                            oidc_issuer=test_issuer.issuer, kafka_bootstrap_servers="",
                            registry_segment_size=65536)


@pytest.fixture
def client(settings: RegistrySettings, test_issuer) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    migrate(settings.resolved_database_url, MIGRATIONS_DIR, version_table="alembic_version_registry")
    db = Database(settings.resolved_database_url)
    host = ServiceHost(settings, build(settings, db), verifier=test_issuer.verifier())
    yield TestClient(host.app, raise_server_exceptions=False)
    db.dispose()


def _auth(issuer, sub: str, scope: str = "registry:read registry:write", projects=("fraud",)) -> dict:  # type: ignore[no-untyped-def]
    return {"Authorization": "Bearer " + issuer.mint(sub=sub, scope=scope, projects=list(projects))}


def test_rest_end_to_end(client: TestClient, test_issuer) -> None:  # type: ignore[no-untyped-def]
    alice = _auth(test_issuer, "alice")
    bob = _auth(test_issuer, "bob", "registry:read registry:write registry:approve")
    assert client.get(f"{API}/models").status_code == 401
    r = client.post(f"{API}/projects/fraud/models", headers=alice,
                    json={"name": "scorer", "thresholds": {"auc": {"min": 0.8}}})
    assert r.status_code == 201, r.text
    bad = client.post(f"{API}/projects/fraud/models/scorer/versions", headers=alice,
                      json={"files": [{"path": "../x", "size": 1, "sha256": "0" * 64}]})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    body = {"files": [{"path": "model.onnx", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}],
            "metrics": {"auc": 0.9}, "attributes": {"onnx_parity": {"passed": True}},
            "lineage": {"training_run": "r1", "data_quality_passed": True, "feature_views": ["fv1"]}}
    draft = client.post(f"{API}/projects/fraud/models/scorer/versions", headers=alice, json=body)
    assert draft.status_code == 201, draft.text
    upload = draft.json()["uploads"][0]
    # first request is cut after 100 000 bytes: only one 64 KiB segment is durable
    r = client.put(f"{API}/uploads/{upload['id']}", headers={**alice, "Upload-Offset": "0"}, content=DATA[:100_000])
    assert r.json()["offset"] == 65536
    r = client.put(f"{API}/uploads/{upload['id']}", headers={**alice, "Upload-Offset": "0"}, content=DATA)
    assert r.status_code == 409 and "65536" in r.json()["detail"]
    assert client.get(f"{API}/uploads/{upload['id']}", headers=alice).headers["Upload-Offset"] == "65536"
    rest = (DATA[i:i + 10_000] for i in range(65536, len(DATA), 10_000))
    r = client.put(f"{API}/uploads/{upload['id']}", headers={**alice, "Upload-Offset": "65536"}, content=rest)
    assert r.json()["state"] == "complete", r.text
    r = client.post(f"{API}/projects/fraud/models/scorer/versions/1/commit", headers=alice)
    assert r.status_code == 200 and r.json()["manifest_digest"].startswith("sha256:")
    dl = client.get(f"{API}/projects/fraud/models/scorer/versions/1/files/model.onnx", headers=alice)
    assert dl.status_code == 200 and dl.content == DATA
    keys = client.get(f"{API}/signing-keys", headers=alice).json()
    assert keys[0]["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    manifest = client.get(f"{API}/projects/fraud/models/scorer/versions/1/manifest", headers=alice).json()
    assert manifest["envelope"]["payloadType"] == "application/vnd.in-toto+json"
    # tenancy: another project's token sees nothing
    eve = _auth(test_issuer, "eve", projects=("other",))
    assert client.get(f"{API}/projects/fraud/models/scorer", headers=eve).status_code == 404
    # protected alias through a change request, four eyes enforced
    assert client.put(f"{API}/projects/fraud/models/scorer/aliases/production", headers=alice,
                      json={"version": 1}).status_code == 409
    cr = client.post(f"{API}/projects/fraud/models/scorer/change-requests", headers=alice,
                     json={"alias": "production", "version": 1, "reason": "first"}).json()
    assert cr["state"] == "open" and all(c["passed"] for c in cr["checks"])
    assert client.post(f"{API}/change-requests/{cr['id']}/approve", headers=alice, json={}).status_code == 403
    assert client.post(f"{API}/change-requests/{cr['id']}/approve", headers=bob, json={}).json()["state"] == "approved"
    assert client.post(f"{API}/change-requests/{cr['id']}/apply", headers=alice).json()["state"] == "applied"
    aliases = client.get(f"{API}/projects/fraud/models/scorer/aliases", headers=alice).json()
    assert [(a["name"], a["version"]) for a in aliases] == [("production", 1)]
    used = client.get(f"{API}/lineage/versions", params={"feature_view": "fv1"}, headers=alice).json()
    assert [v["version"] for v in used] == [1]


async def test_grpc_download_and_change_request(settings: RegistrySettings, test_issuer) -> None:  # type: ignore[no-untyped-def]
    from mlp_registry.domain.caller import Actor
    from mlp_registry.domain.models import FileSpec
    from mlp_registry.domain.uploads import VersionDraft

    migrate(settings.resolved_database_url, MIGRATIONS_DIR, version_table="alembic_version_registry")
    db = Database(settings.resolved_database_url)
    service = build_service(settings, db)
    alice = Actor("alice", frozenset({"registry:read", "registry:write"}), frozenset({"fraud"}))
    service.catalog.create_model(alice, "fraud", "scorer")
    version, (upload,) = service.uploads.create_draft(alice, "fraud", "scorer", VersionDraft(
        files=[FileSpec("m.onnx", len(DATA), hashlib.sha256(DATA).hexdigest())]))
    service.uploads.write(alice, upload.id, 0, [DATA])
    service.uploads.commit(alice, "fraud", "scorer", version.number)
    server = grpc.aio.server(interceptors=[AuthInterceptor(test_issuer.verifier()), ErrorInterceptor("registry")])
    pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RegistryServiceStub(channel)
            md = (("authorization", "Bearer " + test_issuer.mint(sub="alice", scope="registry:read registry:write",
                                                                 projects=["fraud"])),)
            parts = [m async for m in stub.DownloadArtifact(
                pb.DownloadArtifactRequest(project="fraud", model="scorer", version=1), metadata=md)]
            assert parts[0].header.manifest.files[0].path == "m.onnx"
            assert b"".join(p.chunk.data for p in parts[1:]) == DATA
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetModel(pb.GetModelRequest(project="fraud", name="nope"), metadata=md)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            cr = await stub.CreateChangeRequest(pb.CreateChangeRequestRequest(
                project="fraud", model="scorer", alias="production", version=1, reason="go"), metadata=md)
            assert cr.state == pb.CHANGE_REQUEST_STATE_OPEN
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ApproveChangeRequest(pb.ApproveChangeRequestRequest(project="fraud", id=cr.id), metadata=md)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            keys = await stub.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=md)
            assert len(keys.keys) == 1
    finally:
        await server.stop(None)
        db.dispose()


def test_rest_register_version_idempotency_key(client: TestClient, test_issuer) -> None:  # type: ignore[no-untyped-def]
    alice = _auth(test_issuer, "alice")
    assert client.post(f"{API}/projects/fraud/models", headers=alice, json={"name": "scorer"}).status_code == 201
    url = f"{API}/projects/fraud/models/scorer/versions"
    body = {"files": [{"path": "model.onnx", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}],
            "metrics": {"auc": 0.9}}
    keyed = {**alice, "Idempotency-Key": "9b2f0c6e-retry"}
    first = client.post(url, headers=keyed, json=body)
    retry = client.post(url, headers=keyed, json=body)
    assert first.status_code == retry.status_code == 201, retry.text
    assert retry.json()["version"]["version"] == first.json()["version"]["version"] == 1
    assert retry.json()["uploads"] == first.json()["uploads"]

    clash = client.post(url, headers=keyed, json={**body, "metrics": {"auc": 0.95}})
    assert clash.status_code == 409 and clash.headers["content-type"] == "application/problem+json"
    assert "9b2f0c6e-retry" in clash.json()["detail"]
    too_long = client.post(url, headers={**alice, "Idempotency-Key": "k" * 129}, json=body)
    assert too_long.status_code == 422
    fresh = client.post(url, headers={**alice, "Idempotency-Key": "another"}, json=body)
    assert fresh.json()["version"]["version"] == 2
    assert client.post(url, headers=alice, json=body).json()["version"]["version"] == 3


def test_rest_change_request_idempotency_key(client: TestClient, test_issuer,  # type: ignore[no-untyped-def]
                                             settings: RegistrySettings) -> None:
    alice, bob = _auth(test_issuer, "alice"), _auth(test_issuer, "bob")
    assert client.post(f"{API}/projects/fraud/models", headers=alice, json={"name": "scorer"}).status_code == 201
    model = f"{API}/projects/fraud/models/scorer"
    draft = client.post(f"{model}/versions", headers=alice, json={"files": [
        {"path": "model.onnx", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}]}).json()
    client.put(f"{API}/uploads/{draft['uploads'][0]['id']}", headers={**alice, "Upload-Offset": "0"}, content=DATA)
    assert client.post(f"{model}/versions/1/commit", headers=alice).status_code == 200

    url, body = f"{model}/change-requests", {"alias": "production", "version": 1, "reason": "first release"}
    keyed = {**alice, "Idempotency-Key": "deploy-42"}
    first = client.post(url, headers=keyed, json=body)
    events = _outbox_count(settings)
    retry = client.post(url, headers=keyed, json=body)
    assert first.status_code == retry.status_code == 201, retry.text
    assert retry.json() == first.json()
    assert _outbox_count(settings) == events, "the retry emits no second event"

    clash = client.post(url, headers=keyed, json={**body, "reason": "second thoughts"})
    assert clash.status_code == 409 and clash.headers["content-type"] == "application/problem+json"
    assert "deploy-42" in clash.json()["detail"]
    assert client.post(url, headers={**alice, "Idempotency-Key": "k" * 129}, json=body).status_code == 422
    bobs = client.post(url, headers={**bob, "Idempotency-Key": "deploy-42"}, json=body)
    no_key = client.post(url, headers=alice, json=body)
    assert len({first.json()["id"], bobs.json()["id"], no_key.json()["id"]}) == 3
    listed = client.get(url, headers=alice).json()
    assert sorted(cr["id"] for cr in listed) == sorted([first.json()["id"], bobs.json()["id"], no_key.json()["id"]])


def _outbox_count(settings: RegistrySettings) -> int:
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            return int(session.execute(select(func.count()).select_from(t.events.outbox)).scalar_one())
    finally:
        db.dispose()
