"""The signed manifest of a version, and checks of a stored version against its signature."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

from mlp_registry.crypto.signing import (
    SignatureError,
    canonical_json,
    load_public_key,
    manifest_digest,
    verify_envelope,
)
from mlp_registry.domain.errors import IntegrityCheckFailed
from mlp_registry.domain.models import ArtifactFile, Model, ModelVersion


def metadata_digest(version: ModelVersion) -> str:
    """``sha256:<hex>`` over the immutable metadata, so the signature also covers metrics and lineage."""
    immutable = {
        "framework": version.framework, "metrics": version.metrics, "params": version.params,
        "input_schema": version.input_schema, "output_schema": version.output_schema,
        "model_card": version.model_card, "attributes": version.attributes, "lineage": asdict(version.lineage),
    }
    return "sha256:" + hashlib.sha256(canonical_json(immutable)).hexdigest()


def build_manifest(model: Model, version: ModelVersion, files: list[ArtifactFile]) -> dict[str, Any]:
    """The manifest that gets signed: ids, names, immutable metadata digest and every file's digest."""
    return {
        "model_id": model.id, "version_id": version.id, "project": model.project, "model": model.name,
        "version": version.number, "metadata_digest": metadata_digest(version),
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in sorted(files, key=lambda f: f.path)],
    }


def check_version(model: Model, version: ModelVersion, files: list[ArtifactFile],
                  trusted_pem: dict[str, str]) -> dict[str, Any]:
    """Verify the stored signature and that the stored records match what was signed.

    Raises ``IntegrityCheckFailed`` naming the first difference; returns the signed manifest.
    """
    if version.signature is None or version.manifest_digest is None:
        raise IntegrityCheckFailed(f"version {version.number} has no signed manifest")
    try:
        keys = {kid: load_public_key(pem) for kid, pem in trusted_pem.items()}
        manifest = verify_envelope(version.signature, keys)
    except SignatureError as exc:
        raise IntegrityCheckFailed(f"manifest of version {version.number} failed verification: {exc}") from None
    if manifest_digest(manifest) != version.manifest_digest:
        raise IntegrityCheckFailed("the signed manifest is not the one recorded at registration")
    if manifest != build_manifest(model, version, files):
        raise IntegrityCheckFailed(
            "the stored version (ids, metadata or file digests) differs from its signed manifest")
    return manifest
