"""Composition root of the registry: builds stores, keys and the domain service, wires REST, gRPC, tasks."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import anyio.to_thread

from mlp_core import bootstrap
from mlp_core.db import Database
from mlp_core.events.outbox import Outbox
from mlp_core.host import BackgroundTask, ServiceParts
from mlp_registry.api.grpc import registry_registrar
from mlp_registry.api.rest import build_router
from mlp_registry.crypto.keys import LocalKeyFileProvider
from mlp_registry.crypto.signing import ManifestSigner
from mlp_registry.domain.caller import Actor
from mlp_registry.domain.context import RegistryContext
from mlp_registry.domain.policies import ReleasePolicy
from mlp_registry.domain.service import RegistryService
from mlp_registry.settings import RegistrySettings
from mlp_registry.store.base import ArtifactStore
from mlp_registry.store.local import LocalArtifactStore
from mlp_registry.store.s3 import S3ArtifactStore, S3Config
from mlp_registry.store.sql import SqlMetadataStore

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SYSTEM = Actor("system:registry-housekeeping", frozenset({"registry:read", "registry:write"}), admin=True)
log = logging.getLogger(__name__)


def build_artifact_store(settings: RegistrySettings) -> ArtifactStore:
    """The configured artifact backend."""
    if settings.registry_artifact_backend == "s3":
        return S3ArtifactStore(S3Config(bucket=settings.registry_s3_bucket, prefix=settings.registry_s3_prefix,
                                        endpoint_url=settings.registry_s3_endpoint_url,
                                        region=settings.registry_s3_region))
    return LocalArtifactStore(settings.artifact_dir)


def build_service(settings: RegistrySettings, db: Database) -> RegistryService:
    """The domain service with its stores, keys and policy."""
    ctx = RegistryContext(
        store=SqlMetadataStore(db, Outbox(f"/mlp/{settings.service_name}")),
        artifacts=build_artifact_store(settings),
        keys=LocalKeyFileProvider(settings.key_file),
        signer=ManifestSigner.from_file(settings.signing_key_path),
        policy=ReleasePolicy(protected_aliases=frozenset(settings.registry_protected_aliases),
                             change_request_ttl=timedelta(seconds=settings.registry_change_request_ttl_s)),
        segment_size=settings.registry_segment_size,
    )
    service = RegistryService(ctx)
    service.housekeeping.upload_ttl = timedelta(seconds=settings.registry_upload_ttl_s)
    service.uploads.stream_idle_timeout = timedelta(seconds=settings.registry_upload_idle_timeout_s)
    service.downloads.public_keys()  # publish the current signing key at start-up
    return service


def housekeeping_task(service: RegistryService, interval_s: float) -> BackgroundTask:
    """Expire overdue change requests every ``interval_s`` seconds."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            expired = await anyio.to_thread.run_sync(service.releases.expire_stale, SYSTEM)
            if expired:
                log.info("expired change requests", extra={"count": expired})
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass

    return run


def build(settings: RegistrySettings, db: Database) -> ServiceParts:
    """Wire the registry for ``mlp_core.host.ServiceHost``."""
    service = build_service(settings, db)
    return ServiceParts(
        title="MLP model registry",
        description="Immutable, signed and encrypted model versions; aliases and change requests; lineage.",
        routers=[build_router(service)],
        grpc_registrars=[registry_registrar(service)],
        background=[housekeeping_task(service, settings.registry_housekeeping_interval_s)],
    )


def main() -> None:
    """Console entry point ``mlp-registry``."""
    bootstrap.run(RegistrySettings(), MIGRATIONS_DIR, build)


if __name__ == "__main__":
    main()
