"""Key-encryption keys: the provider interface and the local key-file provider.

A data key is wrapped (AES-256-GCM) by the provider's current key-encryption key (KEK); the key id
and KEK version are stored next to the wrapped key, so rotation adds a KEK version and re-wraps
data keys without touching the encrypted artifacts. A KMS backend (AWS KMS, Vault transit, GCP KMS)
implements the same three calls.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mlp_registry.domain.errors import IntegrityCheckFailed


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under one version of a key-encryption key."""

    key_id: str
    key_version: int
    ciphertext: bytes


class KeyProvider(ABC):
    """Wraps and unwraps data keys with a key-encryption key that never leaves the provider."""

    @abstractmethod
    def current_version(self) -> tuple[str, int]:
        """The key id and version that ``wrap`` uses now."""

    @abstractmethod
    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current KEK, bound to ``context`` (associated data)."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Decrypt a wrapped data key; ``IntegrityCheckFailed`` if it or its context was altered."""

    @abstractmethod
    def rotate(self) -> tuple[str, int]:
        """Create a new KEK version and make it current; older versions still unwrap."""


def _aad(key_id: str, version: int, context: bytes) -> bytes:
    return f"mlp-registry/dek/v1\x00{key_id}\x00{version}\x00".encode() + context


class LocalKeyFileProvider(KeyProvider):
    """KEK versions kept in a JSON file readable only by its owner (mode 0600).

    Created with one random key on first use. For a laptop and CI; use a KMS in production.
    """

    def __init__(self, path: Path, key_id: str = "local-kek") -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if not self.path.exists():
            self._write({"key_id": key_id, "current": 1,
                         "versions": {"1": base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}})
        self._load()

    def _load(self) -> None:
        data = json.loads(self.path.read_text())
        self._key_id: str = data["key_id"]
        self._current: int = int(data["current"])
        self._keys = {int(v): base64.b64decode(k) for v, k in data["versions"].items()}
        if self._current not in self._keys or any(len(k) != 32 for k in self._keys.values()):
            raise ValueError(f"key file {self.path} is malformed: every KEK must be 32 bytes")

    def _write(self, data: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def current_version(self) -> tuple[str, int]:
        """The key id and version that ``wrap`` uses now."""
        return self._key_id, self._current

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current KEK, bound to ``context``."""
        nonce = os.urandom(12)
        aad = _aad(self._key_id, self._current, context)
        sealed = AESGCM(self._keys[self._current]).encrypt(nonce, data_key, aad)
        return WrappedKey(self._key_id, self._current, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Decrypt a wrapped data key with the KEK version it names."""
        if wrapped.key_id != self._key_id or wrapped.key_version not in self._keys:
            raise IntegrityCheckFailed(
                f"data key was wrapped with unknown key {wrapped.key_id} v{wrapped.key_version}")
        kek = self._keys[wrapped.key_version]
        try:
            return AESGCM(kek).decrypt(wrapped.ciphertext[:12], wrapped.ciphertext[12:],
                                       _aad(wrapped.key_id, wrapped.key_version, context))
        except InvalidTag:
            raise IntegrityCheckFailed(
                "the wrapped data key does not open for this file: it was altered or moved") from None

    def rotate(self) -> tuple[str, int]:
        """Add a new random KEK version and make it current."""
        with self._lock:
            self._load()
            new = max(self._keys) + 1
            versions = {str(v): base64.b64encode(k).decode() for v, k in self._keys.items()}
            versions[str(new)] = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
            self._write({"key_id": self._key_id, "current": new, "versions": versions})
            self._load()
            return self._key_id, new
