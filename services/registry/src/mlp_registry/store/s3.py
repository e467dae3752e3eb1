"""Artifact store on an S3-compatible object store (AWS S3, MinIO, Ceph RGW) via boto3.

S3 has no append, so a staging object is a series of part objects ``<prefix>staging/<id>/<offset>``;
``promote`` streams them into one multipart upload of the final key (parts of at least 8 MiB).
boto3 is an optional dependency (extra ``s3``), imported when the store is built. The artifact-store
contract tests run against it over HTTP on a moto S3 server (``tests/test_artifact_store_contract.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlp_registry.crypto.aead import rechunk
from mlp_registry.store.base import ArtifactStore

_PART = 8 << 20


@dataclass(frozen=True)
class S3Config:
    """Where the bucket is and how to reach it."""

    bucket: str
    prefix: str = "registry/"
    endpoint_url: str | None = None
    region: str | None = None


class S3ArtifactStore(ArtifactStore):
    """Objects in one bucket under a prefix."""

    def __init__(self, config: S3Config, client: Any | None = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise RuntimeError("the S3 artifact store needs boto3: pip install boto3") from exc
            client = boto3.client("s3", endpoint_url=config.endpoint_url, region_name=config.region)
        self._s3 = client
        self._bucket = config.bucket
        self._prefix = config.prefix

    def _obj(self, key: str) -> str:
        return f"{self._prefix}objects/{key}"

    def _parts_prefix(self, upload_id: str) -> str:
        return f"{self._prefix}staging/{upload_id}/"

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _parts(self, upload_id: str) -> list[tuple[int, int, str]]:
        parts = []
        for item in self._list(self._parts_prefix(upload_id)):
            offset = int(item["Key"].rsplit("/", 1)[1])
            parts.append((offset, int(item["Size"]), item["Key"]))
        return sorted(parts)

    def staging_size(self, upload_id: str) -> int:
        """End of the last contiguous staged part."""
        size = 0
        for offset, length, _ in self._parts(upload_id):
            if offset != size:
                break
            size += length
        return size

    def append_staging(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Drop parts at or past ``offset`` and store the chunks as new parts."""
        for part_offset, _, key in self._parts(upload_id):
            if part_offset >= offset:
                self._s3.delete_object(Bucket=self._bucket, Key=key)
        size = offset
        for piece in rechunk(chunks, _PART):
            self._s3.put_object(Bucket=self._bucket, Key=f"{self._parts_prefix(upload_id)}{size:020d}", Body=piece)
            size += len(piece)
        return size

    def read_staging(self, upload_id: str, chunk_size: int) -> Iterator[bytes]:
        """Stream the parts in order."""
        for _, _, key in self._parts(upload_id):
            yield from self._read_key(key, chunk_size)

    def promote(self, upload_id: str, key: str) -> None:
        """Copy the parts into one object with a multipart upload, then drop the parts."""
        target = self._obj(key)
        mpu = self._s3.create_multipart_upload(Bucket=self._bucket, Key=target)
        done = []
        try:
            for number, piece in enumerate(rechunk(self.read_staging(upload_id, _PART), _PART), start=1):
                res = self._s3.upload_part(Bucket=self._bucket, Key=target, UploadId=mpu["UploadId"],
                                           PartNumber=number, Body=piece)
                done.append({"PartNumber": number, "ETag": res["ETag"]})
            if not done:
                self._s3.abort_multipart_upload(Bucket=self._bucket, Key=target, UploadId=mpu["UploadId"])
                self._s3.put_object(Bucket=self._bucket, Key=target, Body=b"")
            else:
                self._s3.complete_multipart_upload(Bucket=self._bucket, Key=target, UploadId=mpu["UploadId"],
                                                   MultipartUpload={"Parts": done})
        except Exception:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=target, UploadId=mpu["UploadId"])
            raise
        self.discard_staging(upload_id)

    def discard_staging(self, upload_id: str) -> None:
        """Delete every part."""
        for _, _, key in self._parts(upload_id):
            self._s3.delete_object(Bucket=self._bucket, Key=key)

    def list_staging(self) -> Iterator[str]:
        """Upload ids with parts."""
        seen: set[str] = set()
        for item in self._list(f"{self._prefix}staging/"):
            upload_id = item["Key"][len(self._prefix) + len("staging/"):].split("/", 1)[0]
            if upload_id not in seen:
                seen.add(upload_id)
                yield upload_id

    def _read_key(self, key: str, chunk_size: int) -> Iterator[bytes]:
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"]
        try:
            while chunk := body.read(chunk_size):
                yield chunk
        finally:
            body.close()

    def read(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """Stream an object; ``KeyError`` when absent."""
        if not self.exists(key):
            raise KeyError(key)
        return self._read_key(self._obj(key), chunk_size)

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write an object (a single PUT; S3 PUTs are atomic)."""
        self._s3.put_object(Bucket=self._bucket, Key=self._obj(key), Body=b"".join(chunks))

    def exists(self, key: str) -> bool:
        """HEAD the object."""
        try:
            self._s3.head_object(Bucket=self._bucket, Key=self._obj(key))
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        """Delete an object."""
        self._s3.delete_object(Bucket=self._bucket, Key=self._obj(key))

    def list_keys(self) -> Iterator[str]:
        """Every object key."""
        base = f"{self._prefix}objects/"
        for item in self._list(base):
            yield item["Key"][len(base):]
