"""The single writer of the audit chain: requests enqueue entries, one task appends them in batches."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from mlp_core.db import Database
from mlp_core.events import Outbox
from mlp_gateway.audit.chain import GENESIS_HASH, AuditEntry, CheckpointSigner, record_hash
from mlp_gateway.audit.tables import audit_chain_head, audit_checkpoints, audit_records

log = logging.getLogger(__name__)

EVENT_TYPE = "mlp.gateway.audit-recorded"
_MAX_BATCH = 500
_MAX_RETRY_DELAY_S = 5.0


def now_iso() -> str:
    """UTC timestamp with microseconds, as stored in records."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class AuditLog:
    """Appends entries to the hash chain from one background task (``run``), in batches.

    ``record()`` only enqueues (it waits when the queue is full: back-pressure, never a dropped
    entry). Each batch is one transaction that locks the chain head, so chain order is the
    commit order even with several gateway replicas on one database. Every ``checkpoint_every``
    records, and every ``checkpoint_interval_s`` when new records exist, the head is signed.
    """

    def __init__(self, db: Database, signer: CheckpointSigner, *, checkpoint_every: int = 100,
                 checkpoint_interval_s: float = 60.0, queue_size: int = 10_000,
                 outbox: Outbox | None = None) -> None:
        self.db = db
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.outbox = outbox or Outbox("/mlp/gateway")
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=queue_size)
        self._last_checkpoint_at = time.monotonic()
        self.written = 0
        self.failures = 0

    @property
    def queue_depth(self) -> int:
        """Entries waiting for the writer (grows while the database is unavailable)."""
        return self._queue.qsize()

    async def record(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the chain."""
        await self._queue.put(entry)

    async def flush(self) -> None:
        """Wait until every queued entry is committed (tests, shutdown)."""
        await self._queue.join()

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: write batches until ``stop`` is set, then drain and checkpoint."""
        while not stop.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, timeout=self.checkpoint_interval_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter not in done:
                getter.cancel()
                await self._write_batch([], force_checkpoint=True)
                continue
            await self._write_batch([getter.result(), *self._drain()])
        await self._write_batch(self._drain(), force_checkpoint=True)

    def _drain(self) -> list[AuditEntry]:
        batch: list[AuditEntry] = []
        while len(batch) < _MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _write_batch(self, batch: list[AuditEntry], *, force_checkpoint: bool = False) -> None:
        due = force_checkpoint or time.monotonic() - self._last_checkpoint_at >= self.checkpoint_interval_s
        delay = 0.2
        try:
            while True:
                try:
                    await asyncio.to_thread(self._append, batch, due)
                    break
                except Exception:
                    # The entries stay in this batch until they are committed: an audit record is never
                    # dropped. Meanwhile the queue fills and ``record()`` waits, so mutating calls slow
                    # down instead of going unaudited (fail closed). Readiness shows the database state.
                    self.failures += 1
                    log.exception("audit batch of %d entries failed; retrying in %.1fs", len(batch), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY_DELAY_S)
            if due:
                self._last_checkpoint_at = time.monotonic()
        finally:
            for _ in batch:
                self._queue.task_done()
        self.written += len(batch)

    def _append(self, batch: list[AuditEntry], checkpoint_due: bool) -> None:
        with self.db.session() as session:
            head = session.execute(
                select(audit_chain_head.c.seq, audit_chain_head.c.hash)
                .where(audit_chain_head.c.id == 1).with_for_update()).one_or_none()
            if head is None:
                session.execute(insert(audit_chain_head).values(id=1, seq=0, hash=GENESIS_HASH))
                seq, prev = 0, GENESIS_HASH
            else:
                seq, prev = int(head.seq), str(head.hash)
            rows, checkpoints = [], []
            for entry in batch:
                seq += 1
                digest = record_hash(seq, prev, entry)
                rows.append({**asdict(entry), "seq": seq, "prev_hash": prev, "hash": digest})
                self._publish(session, seq, digest, entry)
                if seq % self.checkpoint_every == 0:
                    checkpoints.append(self._checkpoint(seq, digest))
                prev = digest
            if rows:
                session.execute(insert(audit_records), rows)
                session.execute(update(audit_chain_head).where(audit_chain_head.c.id == 1)
                                .values(seq=seq, hash=prev))
            if checkpoint_due and seq and not (checkpoints and checkpoints[-1]["seq"] == seq):
                last = session.execute(select(func.max(audit_checkpoints.c.seq))).scalar() or 0
                if last != seq:
                    checkpoints.append(self._checkpoint(seq, prev))
            if checkpoints:
                session.execute(insert(audit_checkpoints), checkpoints)

    def _publish(self, session: Session, seq: int, digest: str, entry: AuditEntry) -> None:
        data = {"seq": seq, "hash": digest, **asdict(entry)}
        self.outbox.add(session, type=EVENT_TYPE, subject=f"audit/{seq}", data=data)

    def _checkpoint(self, seq: int, head_hash: str) -> dict[str, object]:
        signature = base64.b64encode(self.signer.sign(seq, head_hash)).decode()
        return {"seq": seq, "hash": head_hash, "key_id": self.signer.key_id, "signature": signature,
                "signed_at": now_iso()}
