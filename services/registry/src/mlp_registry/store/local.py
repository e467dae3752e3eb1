"""Artifact store on a local folder: ``objects/<key>`` and ``staging/<upload id>``."""

from __future__ import annotations

import os
import queue
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlp_registry.store.base import ArtifactStore

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class LocalArtifactStore(ArtifactStore):
    """Objects as files under a root folder; writes go through a temporary file and ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def _object(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"unsafe object key {key!r}")
        return self.objects / key

    def _staging(self, upload_id: str) -> Path:
        if not _SAFE_ID.match(upload_id):
            raise ValueError(f"unsafe upload id {upload_id!r}")
        return self.staging / upload_id

    def staging_size(self, upload_id: str) -> int:
        """Bytes staged for an upload."""
        path = self._staging(upload_id)
        return path.stat().st_size if path.exists() else 0

    def append_staging(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Truncate to ``offset``, append, fsync, return the size."""
        path = self._staging(upload_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            size = offset + _write_behind(fd, chunks)
            os.fsync(fd)
            return size
        finally:
            os.close(fd)

    def read_staging(self, upload_id: str, chunk_size: int) -> Iterator[bytes]:
        """Stream the staged bytes."""
        return _read_file(self._staging(upload_id), chunk_size)

    def promote(self, upload_id: str, key: str) -> None:
        """Rename the staging file into place."""
        target = self._object(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._staging(upload_id), target)
        _fsync_dir(target.parent)

    def discard_staging(self, upload_id: str) -> None:
        """Delete a staging file."""
        self._staging(upload_id).unlink(missing_ok=True)

    def list_staging(self) -> Iterator[str]:
        """Upload ids with staging files."""
        return (p.name for p in self.staging.iterdir() if p.is_file())

    def read(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """Stream an object; ``KeyError`` when absent."""
        path = self._object(key)
        if not path.is_file():
            raise KeyError(key)
        return _read_file(path, chunk_size)

    def write(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write an object atomically."""
        target = self._object(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def exists(self, key: str) -> bool:
        """Whether the object file exists."""
        return self._object(key).is_file()

    def delete(self, key: str) -> None:
        """Delete an object file."""
        self._object(key).unlink(missing_ok=True)

    def list_keys(self) -> Iterator[str]:
        """Every object key (temporary files excluded)."""
        for path in self.objects.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.objects).as_posix()


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]


def _write_behind(fd: int, chunks: Iterable[bytes], depth: int = 4) -> int:
    """Write ``chunks`` from a helper thread so producing (encrypting) and disk writes overlap.

    At most ``depth`` chunks wait in between, so memory stays bounded.
    """
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def writer() -> None:
        while (chunk := pending.get()) is not None:
            if not failure:
                try:
                    _write_all(fd, chunk)
                except BaseException as exc:
                    failure.append(exc)

    thread = threading.Thread(target=writer, name="artifact-writer", daemon=True)
    thread.start()
    total = 0
    try:
        for chunk in chunks:
            if failure:
                break
            pending.put(chunk)
            total += len(chunk)
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return total


def _read_file(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
