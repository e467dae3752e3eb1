"""Streaming AES-256-GCM in fixed-size segments (a STREAM-style construction).

Each file has its own 256-bit data key and a random 7-byte nonce prefix. Segment ``i`` is sealed
with the nonce ``prefix || i (4 bytes, big endian) || final flag (1 byte)`` and the associated data
``binding || i (8 bytes) || final flag``, where ``binding`` names the model, version and file path.
So flipping a byte, swapping files between places, reordering segments, truncating at a segment
boundary or appending data all fail authentication, and plaintext of a segment is only released
after its tag checks. Neither direction ever holds more than one segment in memory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mlp_registry.domain.errors import IntegrityCheckFailed

TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
DEFAULT_SEGMENT_SIZE = 1 << 20
MAX_SEGMENTS = 1 << 32


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def new_nonce_prefix() -> bytes:
    """A fresh random per-file nonce prefix."""
    return os.urandom(NONCE_PREFIX_SIZE)


def binding_for(model_id: str, version_id: str, path: str) -> bytes:
    """The associated data that ties a ciphertext to its model, version and file path."""
    return b"mlp-registry/artifact/v1\x00" + b"\x00".join(s.encode() for s in (model_id, version_id, path))


def segment_count(plaintext_size: int, segment_size: int) -> int:
    """How many segments a file of ``plaintext_size`` bytes has (an empty file has one, empty)."""
    return max(1, -(-plaintext_size // segment_size))


def ciphertext_size(plaintext_size: int, segment_size: int) -> int:
    """Bytes on disk for a plaintext of ``plaintext_size`` bytes."""
    return plaintext_size + segment_count(plaintext_size, segment_size) * TAG_SIZE


class SegmentCipher:
    """Seals and opens the segments of one file."""

    def __init__(self, data_key: bytes, nonce_prefix: bytes, binding: bytes,
                 segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        if len(data_key) != 32:
            raise ValueError("data key must be 32 bytes (AES-256)")
        if len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        self._aead = AESGCM(data_key)
        self._prefix = nonce_prefix
        self._binding = binding
        self.segment_size = segment_size

    def _nonce_and_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError("segment index out of range")
        flag = b"\x01" if final else b"\x00"
        nonce = self._prefix + struct.pack(">I", index) + flag
        return nonce, self._binding + struct.pack(">Q", index) + flag

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview, final: bool) -> bytes:
        """Encrypt and authenticate segment ``index``."""
        nonce, aad = self._nonce_and_aad(index, final)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        """Decrypt segment ``index``; ``IntegrityCheckFailed`` if it was altered, moved or cut."""
        nonce, aad = self._nonce_and_aad(index, final)
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise IntegrityCheckFailed(
                f"segment {index} of the stored artifact failed authentication: the file was altered, "
                "truncated, reordered or belongs to another model, version or path") from None


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup a byte stream into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buf = bytearray()
    for chunk in chunks:
        if not chunk:
            continue
        if not buf and len(chunk) == size:
            yield bytes(chunk)
            continue
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def encrypt_segments(cipher: SegmentCipher, plaintext: Iterable[bytes], total_size: int,
                     first_index: int = 0) -> Iterator[bytes]:
    """Seal a plaintext stream that starts at segment ``first_index`` of a file of ``total_size`` bytes.

    Yields one ciphertext segment per plaintext segment. The caller guarantees the stream does not
    run past ``total_size``; a short stream simply stops (resumable uploads continue later).
    """
    last = segment_count(total_size, cipher.segment_size) - 1
    index = first_index
    emitted = False
    for piece in rechunk(plaintext, cipher.segment_size):
        yield cipher.seal(index, piece, index == last)
        index += 1
        emitted = True
    if not emitted and total_size == 0 and first_index == 0:
        yield cipher.seal(0, b"", True)


def decrypt_segments(cipher: SegmentCipher, ciphertext: Iterable[bytes], plaintext_size: int) -> Iterator[bytes]:
    """Open a whole stored file segment by segment, refusing truncation and trailing data."""
    last = segment_count(plaintext_size, cipher.segment_size) - 1
    index = 0
    for piece in rechunk(ciphertext, cipher.segment_size + TAG_SIZE):
        if index > last:
            raise IntegrityCheckFailed("the stored artifact is longer than registered: data was appended")
        yield cipher.open(index, piece, index == last)
        index += 1
    if index <= last:
        raise IntegrityCheckFailed(
            f"the stored artifact ends after {index} of {last + 1} segments: it was truncated")
