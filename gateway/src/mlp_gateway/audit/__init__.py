"""Append-only, hash-chained audit log with signed checkpoints (format in gateway/README.md)."""

from mlp_gateway.audit.chain import GENESIS_HASH, AuditEntry, CheckpointSigner, record_hash
from mlp_gateway.audit.writer import AuditLog

__all__ = ["GENESIS_HASH", "AuditEntry", "AuditLog", "CheckpointSigner", "record_hash"]
