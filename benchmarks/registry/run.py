"""Upload and download throughput of one large artifact through the registry, next to plain file copies.

The registry path is the real one: SQLite metadata, local artifact folder, AES-256-GCM segments with a
wrapped data key, SHA-256 while streaming, Ed25519-signed manifest, and on download signature + record
checks, per-segment authentication and the digest check. Baselines in the same run: ``shutil.copyfile``
(kernel copy, no fsync) and a Python read/write loop with 1 MiB buffers and fsync (the same durability
as the store's upload). ``make bench`` runs it with the default 1 GiB.

    .venv/bin/python benchmarks/registry/run.py --size-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mlp_core.db import Database, migrate
from mlp_core.events.outbox import Outbox
from mlp_registry.crypto.keys import LocalKeyFileProvider
from mlp_registry.crypto.signing import ManifestSigner
from mlp_registry.domain.caller import Actor
from mlp_registry.domain.context import RegistryContext
from mlp_registry.domain.models import FileSpec
from mlp_registry.domain.service import RegistryService
from mlp_registry.domain.uploads import VersionDraft
from mlp_registry.main import MIGRATIONS_DIR
from mlp_registry.store.local import LocalArtifactStore
from mlp_registry.store.sql import SqlMetadataStore

MIB = 1 << 20
ACTOR = Actor("bench", frozenset({"registry:read", "registry:write"}), frozenset({"bench"}))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read(path: Path, size: int = MIB) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def _make_source(path: Path, size_mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with open(path, "wb") as fh:
        for i in range(size_mib):
            chunk = block[i % 256:] + block[: i % 256]  # differs per MiB, cheap to make
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def _python_copy(src: Path, dst: Path) -> None:
    with open(dst, "wb") as out:
        for chunk in _read(src):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _timed(label: str, size: int, fn: Callable[[], None]) -> float:
    # Every step starts with no dirty pages left by the step before: otherwise the kernel's writeback
    # of earlier gigabytes throttles whichever step runs later, and the order decides the ratios.
    os.sync()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    rate = size / MIB / seconds
    print(f"{label:<44} {seconds:7.2f} s  {rate:8.1f} MiB/s   peak RSS so far {_rss_mib():6.1f} MiB")
    return rate


def main() -> None:
    """Run the baselines and the registry's upload and download once each; print rates and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        sha = _make_source(src, args.size_mib)
        size = src.stat().st_size
        print(f"artifact: {size / MIB:.0f} MiB, sha256 {sha[:16]}…, rss after setup {_rss_mib():.1f} MiB")

        copy1 = _timed("baseline shutil.copyfile (kernel copy)", size, lambda: shutil.copyfile(src, root / "c1"))
        (root / "c1").unlink()
        copy2 = _timed("baseline python read/write 1 MiB + fsync", size, lambda: _python_copy(src, root / "c2"))
        (root / "c2").unlink()

        url = f"sqlite:///{root}/registry.db"
        migrate(url, MIGRATIONS_DIR, version_table="alembic_version_registry")
        db = Database(url)
        ctx = RegistryContext(store=SqlMetadataStore(db, Outbox("/mlp/registry")),
                              artifacts=LocalArtifactStore(root / "artifacts"),
                              keys=LocalKeyFileProvider(root / "kek.json"),
                              signer=ManifestSigner.from_file(root / "signing.pem"))
        service = RegistryService(ctx)
        service.catalog.create_model(ACTOR, "bench", "big")

        def upload() -> None:
            version, (session,) = service.uploads.create_draft(
                ACTOR, "bench", "big", VersionDraft(files=[FileSpec("model.bin", size, sha)]))
            service.uploads.write(ACTOR, session.id, 0, _read(src, MIB))
            service.uploads.commit(ACTOR, "bench", "big", version.number)

        up = _timed("registry upload (encrypt + sha256 + fsync + sign)", size, upload)
        out = root / "download.bin"

        def download() -> None:
            dl = service.downloads.open_file(ACTOR, "bench", "big", 1, "model.bin")
            with open(out, "wb") as fh:
                for chunk in dl.chunks:
                    fh.write(chunk)

        down = _timed("registry download (verify + decrypt + sha256)", size, download)
        same = _sha_file(out) == sha
        db.dispose()
        print()
        print(f"download identical to source: {same}")
        print(f"upload   / python copy = {up / copy2:5.2f}   upload   / kernel copy = {up / copy1:5.2f}")
        print(f"download / python copy = {down / copy2:5.2f}   download / kernel copy = {down / copy1:5.2f}")
        print(f"peak RSS of the whole run: {_rss_mib():.1f} MiB (goal < 200 MiB)")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")


def _sha_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _read(path):
        digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    main()
