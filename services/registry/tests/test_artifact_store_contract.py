"""One contract for every artifact backend: the local folder and S3 (a real S3-protocol HTTP server, moto).

The same tests run against both, then a whole registration, download and tamper check on S3.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_support import ALICE, Registry, build_registry

from mlp_core.broker import free_port
from mlp_registry.domain.errors import IntegrityCheckFailed
from mlp_registry.store.base import ArtifactStore
from mlp_registry.store.local import LocalArtifactStore
from mlp_registry.store.s3 import S3ArtifactStore, S3Config

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
MIB = 1 << 20


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server speaking the S3 HTTP API on a local port, for this module."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_store(endpoint: str) -> S3ArtifactStore:
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=bucket)
    return S3ArtifactStore(S3Config(bucket=bucket, prefix="registry/", endpoint_url=endpoint), client=client)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """Each backend in turn."""
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return _s3_store(endpoint)


def _all(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


def test_objects_write_read_list_delete(store: ArtifactStore) -> None:
    data = os.urandom(300_000)
    assert not store.exists("sha256/ab/abc")
    with pytest.raises(KeyError):
        _all(store.read("sha256/ab/abc", 4096))
    store.write("sha256/ab/abc", [data[:1000], data[1000:]])
    assert store.exists("sha256/ab/abc")
    assert _all(store.read("sha256/ab/abc", 65536)) == data
    assert list(store.list_keys()) == ["sha256/ab/abc"]
    store.delete("sha256/ab/abc")
    store.delete("sha256/ab/abc")  # deleting twice is fine
    assert not store.exists("sha256/ab/abc") and list(store.list_keys()) == []


def test_staging_append_resume_and_promote(store: ArtifactStore) -> None:
    first, second = os.urandom(9 * MIB), os.urandom(MIB + 17)  # > one 8 MiB S3 part: multipart promote
    assert store.staging_size("up1") == 0
    assert store.append_staging("up1", 0, [first[:MIB], first[MIB:]]) == len(first)
    # a torn retry: the same bytes again at the durable end, then the rest
    assert store.append_staging("up1", len(first), [second]) == len(first) + len(second)
    assert store.append_staging("up1", len(first), [second]) == len(first) + len(second)
    assert store.staging_size("up1") == len(first) + len(second)
    assert _all(store.read_staging("up1", MIB)) == first + second
    assert list(store.list_staging()) == ["up1"]
    store.promote("up1", "sha256/cd/cdef")
    assert _all(store.read("sha256/cd/cdef", MIB)) == first + second
    assert store.staging_size("up1") == 0 and list(store.list_staging()) == []


def test_discard_staging_and_empty_promote(store: ArtifactStore) -> None:
    store.append_staging("gone", 0, [b"x" * 1000])
    store.discard_staging("gone")
    store.discard_staging("never-existed")
    assert store.staging_size("gone") == 0
    store.append_staging("empty", 0, [b""])
    store.promote("empty", "sha256/00/empty")
    assert store.exists("sha256/00/empty") and _all(store.read("sha256/00/empty", 10)) == b""


@pytest.fixture
def s3_registry(s3_endpoint: str, tmp_path: Path) -> Iterator[Registry]:
    """A whole registry (SQLite metadata) whose artifacts live in S3."""
    reg = build_registry(f"sqlite:///{tmp_path}/reg.db", tmp_path)
    s3 = _s3_store(s3_endpoint)
    reg.service.ctx.artifacts = s3
    reg.service.catalog.create_model(ALICE, "fraud", "scorer")
    yield reg
    reg.db.dispose()


def test_registry_on_s3_roundtrip_and_tamper(s3_registry: Registry) -> None:
    data = os.urandom(200_000) + b"PLAINTEXT-MARKER"
    s3_registry.register({"model.onnx": data}, chunk=30_000)
    assert s3_registry.read(1, "model.onnx") == data
    s3: Any = s3_registry.service.ctx.artifacts
    (key,) = list(s3.list_keys())
    stored = _all(s3.read(key, MIB))
    assert b"PLAINTEXT-MARKER" not in stored
    s3.write(key, [stored[:100] + bytes([stored[100] ^ 1]) + stored[101:]])
    with pytest.raises(IntegrityCheckFailed):
        s3_registry.read(1, "model.onnx")
