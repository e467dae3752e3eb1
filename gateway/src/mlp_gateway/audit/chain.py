"""The chain format: what one record holds, how it is hashed, and how checkpoints are signed.

``hash = sha256(canonical JSON of every field below, prev_hash included)`` where canonical JSON has
sorted keys, no spaces and UTF-8. ``mlp audit verify`` recomputes exactly this.
A checkpoint signs ``"mlp-audit-checkpoint:v1:<seq>:<hash>"`` with the gateway's Ed25519 key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

GENESIS_HASH = "0" * 64
KEY_FILE = "gateway-audit-ed25519.pem"
PUBLIC_KEY_FILE = "gateway-audit-ed25519.pub.pem"


@dataclass(frozen=True)
class AuditEntry:
    """One thing that happened at the gateway; never holds a token or a request body."""

    occurred_at: str
    actor: str
    client_id: str
    action: str
    object: str
    outcome: str
    status: int
    transport: str
    trace_id: str
    detail: str = ""


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, compact separators, UTF-8."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(seq: int, prev_hash: str, entry: AuditEntry) -> str:
    """SHA-256 hex of the record at position ``seq`` chained to ``prev_hash``."""
    return hashlib.sha256(canonical({**asdict(entry), "seq": seq, "prev_hash": prev_hash})).hexdigest()


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    """What a checkpoint signature covers."""
    return f"mlp-audit-checkpoint:v1:{seq}:{head_hash}".encode()


class CheckpointSigner:
    """The Ed25519 key that signs checkpoints, kept in the state folder (created on first use)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> CheckpointSigner:
        """Load ``<state_dir>/gateway-audit-ed25519.pem``, creating it (mode 0600) if absent."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / KEY_FILE
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            signer = cls(loaded)
        else:
            signer = cls(Ed25519PrivateKey.generate())
            pem = signer._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        (state_dir / PUBLIC_KEY_FILE).write_bytes(signer.public_pem())
        return signer

    def public_pem(self) -> bytes:
        """The public half, for verifiers that must not hold the private key."""
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, seq: int, head_hash: str) -> bytes:
        """Signature over the checkpoint message."""
        return self._key.sign(checkpoint_message(seq, head_hash))
