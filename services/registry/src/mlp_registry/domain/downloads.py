"""Reading versions back: every download verifies signature, records and bytes; key rotation re-wraps keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlp_core.errors import NotFound
from mlp_registry.crypto.aead import TAG_SIZE, SegmentCipher, binding_for, decrypt_segments
from mlp_registry.crypto.keys import WrappedKey
from mlp_registry.domain.caller import ADMIN_SCOPE, READ, Caller, require
from mlp_registry.domain.context import RegistryContext, load_model, load_version
from mlp_registry.domain.errors import IntegrityCheckFailed
from mlp_registry.domain.manifest import check_version
from mlp_registry.domain.models import ArtifactFile, AuditRecord, Model, ModelVersion
from mlp_registry.domain.upload_pipeline import BackgroundHasher


@dataclass
class FileDownload:
    """A verified file: its record, and its plaintext as a stream that checks every segment and the digest."""

    file: ArtifactFile
    chunks: Iterator[bytes]


@dataclass
class SignedManifest:
    """The DSSE envelope of a version and the manifest it carries."""

    envelope: dict[str, Any]
    manifest: dict[str, Any]
    manifest_digest: str


class VersionDownloads:
    """Downloads, manifest and key publication, full verification, key rotation."""

    def __init__(self, ctx: RegistryContext) -> None:
        self.ctx = ctx

    def public_keys(self) -> dict[str, str]:
        """Every public key the registry has signed with: key id → PEM."""
        with self.ctx.store.transaction() as tx:
            tx.upsert_signing_key(self.ctx.signer.key_id, self.ctx.signer.public_pem, self.ctx.clock())
            return tx.signing_keys()

    def _checked(self, caller: Caller, project: str, model_name: str, number: int,
                 ) -> tuple[Model, ModelVersion, list[ArtifactFile], dict[str, Any]]:
        require(caller, READ)
        with self.ctx.store.transaction() as tx:
            model = load_model(tx, caller, project, model_name)
            version = load_version(tx, model, number)
            files = tx.list_files(version.id)
            manifest = check_version(model, version, files, tx.signing_keys())
        return model, version, files, manifest

    def manifest(self, caller: Caller, project: str, model_name: str, number: int) -> SignedManifest:
        """The verified signed manifest, for clients that check files themselves."""
        _, version, _, manifest = self._checked(caller, project, model_name, number)
        assert version.signature is not None and version.manifest_digest is not None
        return SignedManifest(version.signature, manifest, version.manifest_digest)

    def open_file(self, caller: Caller, project: str, model_name: str, number: int, path: str) -> FileDownload:
        """Check the signature and records now, then stream the decrypted file.

        Each segment is authenticated before its bytes are released and the SHA-256 is compared at
        the end, so a stream over tampered bytes stops with ``IntegrityCheckFailed``.
        """
        model, version, files, _ = self._checked(caller, project, model_name, number)
        file = next((f for f in files if f.path == path), None)
        if file is None:
            raise NotFound(f"version {number} of '{project}/{model_name}' has no file {path!r}")
        if not self.ctx.artifacts.exists(file.object_key):
            raise IntegrityCheckFailed(f"the stored object of {path!r} is missing")
        cipher = self._cipher(model, version, file)
        return FileDownload(file, self._plaintext(cipher, file))

    def _cipher(self, model: Model, version: ModelVersion, file: ArtifactFile) -> SegmentCipher:
        binding = binding_for(model.id, version.id, file.path)
        key = self.ctx.keys.unwrap(WrappedKey(file.key_id, file.key_version, file.wrapped_key), binding)
        return SegmentCipher(key, file.nonce_prefix, binding, file.segment_size)

    def _plaintext(self, cipher: SegmentCipher, file: ArtifactFile) -> Iterator[bytes]:
        digest = BackgroundHasher()  # SHA-256 on a second core while this thread decrypts the next segment
        try:
            stored = self.ctx.artifacts.read(file.object_key, file.segment_size + TAG_SIZE)
            for piece in decrypt_segments(cipher, stored, file.size):
                digest.update(piece)
                yield piece
        finally:
            digest.finish()
        if digest.hexdigest() != file.sha256:
            raise IntegrityCheckFailed(f"file {file.path!r} does not match its signed SHA-256 digest")

    def verify(self, caller: Caller, project: str, model_name: str, number: int) -> dict[str, Any]:
        """Read every file of a version end to end and report; raises on the first problem."""
        model, version, files, _manifest = self._checked(caller, project, model_name, number)
        for file in files:
            for _ in self._plaintext(self._cipher(model, version, file), file):
                pass
        return {"version": number, "files": len(files), "manifest_digest": version.manifest_digest,
                "signature_key_ids": [s.get("keyid") for s in (version.signature or {}).get("signatures", [])]}

    def rotate_keys(self, caller: Caller) -> dict[str, Any]:
        """Make a new key-encryption key current and re-wrap every data key with it (artifacts untouched)."""
        require(caller, ADMIN_SCOPE)
        key_id, key_version = self.ctx.keys.rotate()
        rewrapped = 0
        with self.ctx.store.transaction() as tx:
            for file in list(tx.iter_files()):
                if (file.key_id, file.key_version) == (key_id, key_version):
                    continue
                version = tx.get_version_by_id(file.version_id)
                if version is None:
                    continue
                binding = binding_for(version.model_id, version.id, file.path)
                data_key = self.ctx.keys.unwrap(WrappedKey(file.key_id, file.key_version, file.wrapped_key),
                                                binding)
                wrapped = self.ctx.keys.wrap(data_key, binding)
                file.key_id, file.key_version, file.wrapped_key = wrapped.key_id, wrapped.key_version, wrapped.ciphertext
                tx.update_file_key(file)
                rewrapped += 1
            tx.insert_audit(AuditRecord(id=None, at=self.ctx.clock(), actor=caller.subject, action="keys.rotated",
                                        project="*", subject=key_id,
                                        detail={"key_version": key_version, "rewrapped": rewrapped}))
        return {"key_id": key_id, "key_version": key_version, "rewrapped": rewrapped}


