"""Test support: actors, a settable clock, and a real registry (database, artifact folder, keys)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlp_core.db import Database, migrate
from mlp_core.events.outbox import Outbox
from mlp_registry.crypto.keys import LocalKeyFileProvider
from mlp_registry.crypto.signing import ManifestSigner
from mlp_registry.domain.caller import Actor
from mlp_registry.domain.context import RegistryContext
from mlp_registry.domain.models import FileSpec, Lineage, ModelVersion
from mlp_registry.domain.policies import ReleasePolicy
from mlp_registry.domain.service import RegistryService
from mlp_registry.domain.uploads import VersionDraft
from mlp_registry.store.local import LocalArtifactStore
from mlp_registry.store.sql import SqlMetadataStore

MIGRATIONS = Path(__file__).parents[1] / "src" / "mlp_registry" / "migrations"
ALL = frozenset({"registry:read", "registry:write"})

ALICE = Actor("alice", ALL, frozenset({"fraud"}))
BOB = Actor("bob", ALL | {"registry:approve"}, frozenset({"fraud"}))
CAROL = Actor("carol", ALL | {"registry:approve"}, frozenset({"fraud"}))
MALLORY = Actor("mallory", ALL | {"registry:approve"}, frozenset({"other"}))
ADMIN = Actor("root", frozenset({"admin"}), frozenset(), admin=True)
READER = Actor("reader", frozenset({"registry:read"}), frozenset({"fraud"}))


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Registry:
    """Everything a test needs to drive and inspect the registry."""

    service: RegistryService
    db: Database
    artifacts: LocalArtifactStore
    keys: LocalKeyFileProvider
    clock: Clock
    root: Path

    def register(self, files: dict[str, bytes], *, model: str = "scorer", caller: Actor = ALICE,
                 chunk: int = 64 * 1024, **fields: object) -> ModelVersion:
        """Draft, upload every file in chunks, commit."""
        specs = [FileSpec(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]
        version, uploads = self.service.uploads.create_draft(caller, "fraud", model,
                                                             VersionDraft(files=specs, **fields))  # type: ignore[arg-type]
        for upload in uploads:
            data = files[upload.path]
            stream = (data[i:i + chunk] for i in range(0, len(data), chunk))
            self.service.uploads.write(caller, upload.id, 0, stream)
        return self.service.uploads.commit(caller, "fraud", model, version.number)

    def read(self, number: int, path: str, *, model: str = "scorer", caller: Actor = ALICE) -> bytes:
        """Download one file whole (tests only)."""
        out = io.BytesIO()
        for chunk in self.service.downloads.open_file(caller, "fraud", model, number, path).chunks:
            out.write(chunk)
        return out.getvalue()


GOOD = dict(metrics={"auc": 0.93}, attributes={"onnx_parity": {"passed": True, "max_abs_diff": 1e-6}},
            lineage=Lineage(training_run="run-1", training_set_digest="sha256:" + "a" * 64,
                            data_quality_passed=True, feature_views=["fraud.txn_stats"],
                            feature_service="fraud_svc", code_version="git:abc123"))


def build_registry(url: str, root: Path, segment_size: int = 64 * 1024) -> Registry:
    """A registry on ``url`` with its files under ``root``."""
    migrate(url, MIGRATIONS, version_table="alembic_version_registry")
    db = Database(url)
    artifacts = LocalArtifactStore(root / "artifacts")
    keys = LocalKeyFileProvider(root / "kek.json")
    clock = Clock()
    ctx = RegistryContext(store=SqlMetadataStore(db, Outbox("/mlp/registry")), artifacts=artifacts, keys=keys,
                          signer=ManifestSigner.from_file(root / "signing.pem"),
                          policy=ReleasePolicy(protected_aliases=frozenset({"production"}),
                                               change_request_ttl=timedelta(hours=1)),
                          segment_size=segment_size, clock=clock)
    return Registry(RegistryService(ctx), db, artifacts, keys, clock, root)


