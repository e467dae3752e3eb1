"""Standalone verification of a downloaded model version, for serving to call before it loads one.

It needs only the DSSE envelope (``GET .../versions/{n}/manifest``), the registry's published
public keys (``GET .../signing-keys``) and the downloaded files; no database and no network.

    manifest = verify_model_files(envelope, {"<keyid>": "<PEM>"}, Path("/models/fraud/3"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mlp_registry.crypto.signing import SignatureError, load_public_key, verify_envelope
from mlp_registry.domain.errors import IntegrityCheckFailed

_READ = 1 << 20


def trusted_keys_from_pem(keys: Mapping[str, str | Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Turn ``{key id: PEM or key}`` into verification keys."""
    return {kid: load_public_key(k) if isinstance(k, str) else k for kid, k in keys.items()}


def verify_manifest(envelope: dict[str, Any], keys: Mapping[str, str | Ed25519PublicKey],
                    *, expected_model_id: str | None = None,
                    expected_version_id: str | None = None) -> dict[str, Any]:
    """Verify the signature and (optionally) that the manifest is for the expected model version."""
    try:
        manifest = verify_envelope(envelope, trusted_keys_from_pem(keys))
    except SignatureError as exc:
        raise IntegrityCheckFailed(f"manifest signature check failed: {exc}") from None
    if expected_model_id is not None and manifest.get("model_id") != expected_model_id:
        raise IntegrityCheckFailed("the signed manifest belongs to another model")
    if expected_version_id is not None and manifest.get("version_id") != expected_version_id:
        raise IntegrityCheckFailed("the signed manifest belongs to another version")
    return manifest


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def verify_model_files(envelope: dict[str, Any], keys: Mapping[str, str | Ed25519PublicKey],
                       root: Path, *, expected_model_id: str | None = None,
                       expected_version_id: str | None = None) -> dict[str, Any]:
    """Verify signature, then that ``root`` holds exactly the signed files with the signed digests.

    Returns the manifest; raises ``IntegrityCheckFailed`` naming the first file that differs.
    """
    manifest = verify_manifest(envelope, keys, expected_model_id=expected_model_id,
                               expected_version_id=expected_version_id)
    root = Path(root).resolve()
    signed = {f["path"]: f for f in manifest.get("files", [])}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    missing = sorted(set(signed) - present)
    extra = sorted(present - set(signed))
    if missing or extra:
        raise IntegrityCheckFailed(f"files do not match the signed manifest: missing={missing} extra={extra}")
    for path, entry in sorted(signed.items()):
        target = root / path
        if target.stat().st_size != int(entry["size"]) or file_sha256(target) != entry["sha256"]:
            raise IntegrityCheckFailed(f"file {path!r} does not match its signed SHA-256 digest")
    return manifest
