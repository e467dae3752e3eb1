"""``mlp audit verify``: check the gateway's hash-chained audit log and its signed checkpoints.

This is an independent reader of the format documented in gateway/README.md ("Audit log"): it
recomputes every record hash from the stored columns, follows ``prev_hash`` links, checks that
sequence numbers have no gaps, and verifies each Ed25519 checkpoint with the gateway's public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import create_engine, text

GENESIS = "0" * 64
HASHED_FIELDS = ("occurred_at", "actor", "client_id", "action", "object", "outcome", "status", "transport",
                 "trace_id", "detail")
PUBLIC_KEY_FILE = "gateway-audit-ed25519.pub.pem"

audit_app = typer.Typer(help="The gateway's audit log.", no_args_is_help=True)


@dataclass
class ChainReport:
    """Outcome of a verification; ``first_broken`` names the first bad record (seq) if any."""

    records: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    first_broken: int | None = None
    unsigned_tail: int = 0

    @property
    def ok(self) -> bool:
        """Whether the chain and every checkpoint verified."""
        return not self.problems

    def fail(self, seq: int | None, message: str) -> None:
        """Record a problem; the smallest seq becomes ``first_broken``."""
        self.problems.append(message)
        if seq is not None and (self.first_broken is None or seq < self.first_broken):
            self.first_broken = seq


def record_hash(row: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record's hashed fields plus ``seq`` and ``prev_hash``."""
    fields = {name: row[name] for name in HASHED_FIELDS}
    fields["status"] = int(fields["status"])
    fields["seq"] = int(row["seq"])
    fields["prev_hash"] = row["prev_hash"]
    data = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The checkpoint key (PEM, SubjectPublicKeyInfo)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def verify_chain(database_url: str, public_key: Ed25519PublicKey | None) -> ChainReport:
    """Check every record and checkpoint in ``database_url``."""
    report = ChainReport()
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))]
            checkpoints = [dict(r._mapping) for r in conn.execute(
                text("SELECT seq, hash, key_id, signature FROM audit_checkpoints ORDER BY seq"))]
            head = conn.execute(text("SELECT seq, hash FROM audit_chain_head WHERE id = 1")).first()
    finally:
        engine.dispose()
    report.records, report.checkpoints = len(rows), len(checkpoints)
    hashes = _check_records(rows, report)
    last_seq = int(rows[-1]["seq"]) if rows else 0
    if head is not None and (int(head.seq) != last_seq or (rows and head.hash != rows[-1]["hash"])):
        report.fail(min(int(head.seq), last_seq) + 1 if int(head.seq) != last_seq else last_seq,
                    f"chain head says seq {head.seq} but the last record is {last_seq} (records removed at the end?)")
    _check_checkpoints(checkpoints, hashes, last_seq, public_key, report)
    signed = max((int(c["seq"]) for c in checkpoints), default=0)
    report.unsigned_tail = max(0, last_seq - signed)
    return report


def _check_records(rows: list[dict[str, Any]], report: ChainReport) -> dict[int, str]:
    hashes: dict[int, str] = {}
    expected_seq, prev = 1, GENESIS
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            report.fail(expected_seq, f"record {expected_seq} is missing (next stored record is {seq})")
        elif row["prev_hash"] != prev:
            report.fail(seq, f"record {seq} does not link to record {seq - 1} (deleted, reordered or edited)")
        if record_hash(row) != row["hash"]:
            report.fail(seq, f"record {seq} was altered: its content does not match its hash")
        hashes[seq] = row["hash"]
        prev, expected_seq = row["hash"], seq + 1
    return hashes


def _check_checkpoints(checkpoints: list[dict[str, Any]], hashes: dict[int, str], last_seq: int,
                       public_key: Ed25519PublicKey | None, report: ChainReport) -> None:
    for cp in checkpoints:
        seq = int(cp["seq"])
        if public_key is not None:
            message = f"mlp-audit-checkpoint:v1:{seq}:{cp['hash']}".encode()
            try:
                public_key.verify(base64.b64decode(cp["signature"]), message)
            except (InvalidSignature, ValueError):
                report.fail(seq, f"checkpoint at record {seq} has an invalid signature")
                continue
        if seq > last_seq:
            report.fail(last_seq + 1, f"a signed checkpoint covers record {seq} but the log ends at {last_seq}")
        elif hashes.get(seq) != cp["hash"]:
            report.fail(seq, f"record {seq} differs from the signed checkpoint")


def default_database_url(state_dir: Path) -> str:
    """The gateway database holding the audit log: MLP_DATABASE_URL, else the SQLite file in the state folder."""
    return os.environ.get("MLP_DATABASE_URL") or f"sqlite:///{(state_dir / 'gateway.db').resolve()}"


@audit_app.command("verify")
def verify_command(
    database_url: str = typer.Option(None, help="gateway DB URL (default: MLP_DATABASE_URL or <state>/gateway.db)"),
    state_dir: Path = typer.Option(None, help="state folder holding the checkpoint public key (MLP_STATE_DIR)"),
    public_key: Path = typer.Option(None, help="Ed25519 public key PEM (default: <state>/" + PUBLIC_KEY_FILE + ")"),
) -> None:
    """Verify the audit chain and checkpoint signatures; exit 1 and name the first broken record."""
    state = state_dir or Path(os.environ.get("MLP_STATE_DIR", ".mlp"))
    key_path = public_key or state / PUBLIC_KEY_FILE
    if not key_path.exists():
        typer.echo(f"no checkpoint public key at {key_path}; pass --public-key", err=True)
        raise typer.Exit(2)
    report = verify_chain(database_url or default_database_url(state), load_public_key(key_path))
    if report.ok:
        tail = f"; {report.unsigned_tail} newest record(s) not yet under a checkpoint" if report.unsigned_tail else ""
        typer.echo(f"audit chain OK: {report.records} records, {report.checkpoints} signed checkpoints{tail}")
        return
    typer.echo(f"audit chain BROKEN: first broken record is {report.first_broken}", err=True)
    for problem in report.problems[:20]:
        typer.echo(f"  - {problem}", err=True)
    raise typer.Exit(1)
