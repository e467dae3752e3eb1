"""Unit tests of the crypto module: segmented AEAD, key wrapping and rotation, DSSE signing."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from mlp_registry.crypto.aead import (
    SegmentCipher,
    binding_for,
    ciphertext_size,
    decrypt_segments,
    encrypt_segments,
    new_data_key,
    new_nonce_prefix,
)
from mlp_registry.crypto.keys import LocalKeyFileProvider
from mlp_registry.crypto.signing import PAYLOAD_TYPE, ManifestSigner, SignatureError, pae, verify_envelope
from mlp_registry.domain.errors import IntegrityCheckFailed

SEG = 1024


def _cipher(path: str = "model.onnx") -> SegmentCipher:
    return SegmentCipher(new_data_key(), new_nonce_prefix(), binding_for("m", "v", path), SEG)


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 5 * SEG, 5 * SEG + 7])
def test_roundtrip_any_size(size: int) -> None:
    cipher = _cipher()
    data = os.urandom(size)
    sealed = list(encrypt_segments(cipher, [data[i:i + 100] for i in range(0, size, 100)], size))
    assert sum(len(s) for s in sealed) == ciphertext_size(size, SEG)
    assert b"".join(decrypt_segments(cipher, sealed, size)) == data


def _sealed(cipher: SegmentCipher, data: bytes) -> list[bytes]:
    return list(encrypt_segments(cipher, [data], len(data)))


def test_flipped_byte_reordered_truncated_and_appended_are_refused() -> None:
    cipher = _cipher()
    data = os.urandom(3 * SEG)
    sealed = _sealed(cipher, data)
    flipped = bytearray(b"".join(sealed))
    flipped[SEG + 20] ^= 1
    with pytest.raises(IntegrityCheckFailed, match="segment 1"):
        list(decrypt_segments(cipher, [bytes(flipped)], len(data)))
    with pytest.raises(IntegrityCheckFailed):
        list(decrypt_segments(cipher, [sealed[1], sealed[0], sealed[2]], len(data)))
    with pytest.raises(IntegrityCheckFailed, match="truncated"):
        list(decrypt_segments(cipher, sealed[:2], len(data)))
    with pytest.raises(IntegrityCheckFailed):  # cut at a segment boundary but claimed shorter: final flag differs
        list(decrypt_segments(cipher, sealed[:2], 2 * SEG))
    with pytest.raises(IntegrityCheckFailed, match="appended"):
        list(decrypt_segments(cipher, [*sealed, sealed[2]], len(data)))


def test_ciphertext_bound_to_its_path() -> None:
    key, prefix = new_data_key(), new_nonce_prefix()
    a = SegmentCipher(key, prefix, binding_for("m", "v", "a.bin"), SEG)
    b = SegmentCipher(key, prefix, binding_for("m", "v", "b.bin"), SEG)
    with pytest.raises(IntegrityCheckFailed):
        list(decrypt_segments(b, _sealed(a, b"hello"), 5))


def test_key_file_wraps_rotates_and_is_private(tmp_path: Path) -> None:
    provider = LocalKeyFileProvider(tmp_path / "kek.json")
    assert (tmp_path / "kek.json").stat().st_mode & 0o077 == 0
    dek = new_data_key()
    wrapped = provider.wrap(dek, b"ctx")
    assert dek not in wrapped.ciphertext
    assert provider.rotate() == ("local-kek", 2)
    again = LocalKeyFileProvider(tmp_path / "kek.json")
    assert again.current_version() == ("local-kek", 2)
    assert again.unwrap(wrapped, b"ctx") == dek
    with pytest.raises(IntegrityCheckFailed):
        again.unwrap(wrapped, b"other ctx")


MANIFEST = {"model_id": "m1", "version_id": "v1", "project": "p", "model": "m", "version": 1,
            "metadata_digest": "sha256:00", "files": [{"path": "a", "sha256": "0" * 64, "size": 1}]}


def test_dsse_envelope_verifies_and_detects_changes(tmp_path: Path) -> None:
    signer = ManifestSigner.from_file(tmp_path / "k.pem")
    envelope = signer.sign(MANIFEST)
    keys = {signer.key_id: signer.private_key.public_key()}
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert verify_envelope(envelope, keys) == MANIFEST
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    # The signature is over PAE, not over the raw payload.
    signer.private_key.public_key().verify(base64.b64decode(envelope["signatures"][0]["sig"]),
                                           pae(PAYLOAD_TYPE, base64.b64decode(envelope["payload"])))
    statement["predicate"]["files"][0]["sha256"] = "1" * 64
    forged = {**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(forged, keys)
    other = ManifestSigner.from_file(tmp_path / "other.pem")
    with pytest.raises(SignatureError, match="trusted"):
        verify_envelope(other.sign(MANIFEST), keys)
    with pytest.raises(SignatureError, match="malformed"):
        verify_envelope({"payloadType": PAYLOAD_TYPE}, keys)
    assert ManifestSigner.from_file(tmp_path / "k.pem").key_id == signer.key_id
