"""Ed25519 signatures over in-toto statements in DSSE envelopes.

The statement's subject is the version's manifest (named ``<project>/<model>@<version>``, digest =
SHA-256 of the canonical manifest JSON); its predicate lists every file path with its SHA-256 and
size and names the model and version ids. The envelope is signed over the DSSE pre-authentication
encoding (PAE), so the payload type is authenticated too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://mlp.dev/registry/model-manifest/v1"


class SignatureError(Exception):
    """The envelope is malformed or no trusted key verifies it."""


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical manifest."""
    return "sha256:" + hashlib.sha256(canonical_json(manifest)).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A stable id for a public key: the first 16 bytes of SHA-256 of its raw form, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str) -> Ed25519PublicKey:
    """Parse a PEM public key; ``SignatureError`` unless it is Ed25519."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("only Ed25519 public keys are trusted")
    return key


@dataclass(frozen=True)
class ManifestSigner:
    """Signs manifests with one Ed25519 private key."""

    private_key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, path: Path) -> ManifestSigner:
        """Load a PEM (PKCS#8) key, creating one (mode 0600) when the file does not exist."""
        path = Path(path)
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            path.touch(mode=0o600)
            path.write_bytes(pem)
            return cls(key)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(loaded)

    @property
    def key_id(self) -> str:
        """Id of the public half."""
        return key_id_of(self.private_key.public_key())

    @property
    def public_pem(self) -> str:
        """PEM of the public half, for publication."""
        return public_key_pem(self.private_key.public_key())

    def sign(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """A DSSE envelope carrying the in-toto statement for ``manifest``."""
        payload = canonical_json(statement_for(manifest))
        sig = self.private_key.sign(pae(PAYLOAD_TYPE, payload))
        return {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": self.key_id, "sig": base64.b64encode(sig).decode()}],
        }


def statement_for(manifest: dict[str, Any]) -> dict[str, Any]:
    """The in-toto v1 statement whose subject is the manifest."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": f"{manifest['project']}/{manifest['model']}@{manifest['version']}",
            "digest": {"sha256": manifest_digest(manifest).removeprefix("sha256:")},
        }],
        "predicateType": PREDICATE_TYPE,
        "predicate": manifest,
    }


def verify_envelope(envelope: dict[str, Any], trusted_keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Check the envelope's signature with a trusted key and return the manifest it signs.

    Raises ``SignatureError`` when the envelope is malformed, no signature is by a trusted key, a
    signature does not verify, or the statement's subject digest does not match its manifest.
    """
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed DSSE envelope: {exc}") from None
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"unexpected payloadType {payload_type!r}; expected {PAYLOAD_TYPE}")
    message = pae(payload_type, payload)
    verified = False
    for entry in signatures if isinstance(signatures, list) else []:
        key = trusted_keys.get(str(entry.get("keyid", ""))) if isinstance(entry, dict) else None
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(entry["sig"], validate=True), message)
            verified = True
            break
        except (InvalidSignature, KeyError, ValueError):
            raise SignatureError("the manifest signature does not verify: the manifest was altered") from None
    if not verified:
        raise SignatureError("no signature on the manifest is by a trusted registry key")
    try:
        statement = json.loads(payload)
        manifest = statement["predicate"]
        subject_digest = statement["subject"][0]["digest"]["sha256"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise SignatureError(f"malformed in-toto statement: {exc}") from None
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError("the statement is not a registry model manifest")
    if manifest_digest(manifest).removeprefix("sha256:") != subject_digest:
        raise SignatureError("the statement's subject digest does not match its manifest")
    return dict(manifest)
