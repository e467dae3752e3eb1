"""The audit chain: what the gateway records, integrity under concurrency, and tamper detection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gateway_support import RunningGateway, bearer, md
from sqlalchemy import text
from typer.testing import CliRunner

from mlp_cli.__main__ import app as cli
from mlp_cli.audit import load_public_key, verify_chain
from mlp_core.db import Database, migrate
from mlp_core.testing.tokens import TestIssuer
from mlp_gateway.audit import AuditEntry, AuditLog, CheckpointSigner
from mlp_gateway.audit.chain import PUBLIC_KEY_FILE
from mlp_gateway.main import MIGRATIONS_DIR


def entry(i: int, actor: str = "alice") -> AuditEntry:
    return AuditEntry(occurred_at=f"2026-01-01T00:00:{i % 60:02d}.000000+00:00", actor=actor, client_id="c",
                      action=f"POST /api/v1/x/{i}", object=f"/api/v1/x/{i}", outcome="ok", status=201,
                      transport="rest", trace_id=f"{i:032x}")


@pytest.fixture
def audit_db(pg_url: str) -> Database:
    migrate(pg_url, MIGRATIONS_DIR, version_table="alembic_version_gateway")
    db = Database(pg_url)
    yield db
    db.dispose()


async def write(log: AuditLog, entries: list[AuditEntry]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    await asyncio.gather(*(log.record(e) for e in entries))
    await log.flush()
    stop.set()
    await task


def report(db: Database, state: Path):
    return verify_chain(db.url, load_public_key(state / PUBLIC_KEY_FILE))


async def test_gateway_audits_mutations_and_refusals_without_tokens(gateway: RunningGateway,
                                                                   test_issuer: TestIssuer) -> None:
    writer = test_issuer.mint(sub="alice", scope="features:write", projects=["p1"])
    reader = test_issuer.mint(sub="bob", scope="features:read", projects=["p1"])
    assert (await gateway.client.post("/api/v1/feature-store/things", headers=bearer(writer),
                                      json={"name": "a", "project": "p1"})).status_code == 201
    assert (await gateway.client.post("/api/v1/feature-store/things", headers=bearer(reader),
                                      json={"name": "a", "project": "p1"})).status_code == 403
    assert (await gateway.client.get("/api/v1/feature-store/whoami",
                                     headers=bearer(test_issuer.mint(aud="x")))).status_code == 401
    assert (await gateway.client.get("/api/v1/feature-store/whoami", headers=bearer(reader))).status_code == 200
    try:
        await gateway.stub("/mlp.featurestore.v1.FeatureStoreService/WriteSlow")(b"x", metadata=md(reader), timeout=5)
    except Exception:
        pass
    # refused by the edge while reading (declared body over the limit): audited too
    port = int(str(gateway.client.base_url).rsplit(":", 1)[1].rstrip("/"))
    reader_stream, writer_stream = await asyncio.open_connection("127.0.0.1", port)
    writer_stream.write(b"POST /api/v1/feature-store/things HTTP/1.1\r\nHost: gw\r\n"
                        b"Content-Length: 999999999\r\n\r\n")
    assert (await reader_stream.readuntil(b"\r\n")).startswith(b"HTTP/1.1 413 ")
    writer_stream.close()
    await gateway.gw.audit.flush()
    db = gateway.gw.audit.db
    with db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))]
        events = conn.execute(text("SELECT count(*) FROM mlp_outbox WHERE event_type = 'mlp.gateway.audit-recorded'")
                              ).scalar() if _has_table(conn, "mlp_outbox") else None
    summary = [(r["actor"], r["action"], r["status"], r["outcome"], r["transport"]) for r in rows]
    assert ("alice", "POST /api/v1/feature-store/things", 201, "ok", "rest") in summary
    assert ("bob", "POST /api/v1/feature-store/things", 403, "refused", "rest") in summary
    assert ("anonymous", "GET /api/v1/feature-store/whoami", 401, "refused", "rest") in summary
    assert ("anonymous", "POST /api/v1/feature-store/things", 413, "refused", "rest") in summary
    assert ("bob", "RPC /mlp.featurestore.v1.FeatureStoreService/WriteSlow", 7, "refused", "grpc") in summary
    assert not any(r["action"] == "GET /api/v1/feature-store/whoami" and r["status"] == 200 for r in rows)
    flat = repr(rows)
    for token in (writer, reader):
        assert token not in flat and token.split(".")[2] not in flat
    assert all(len(r["trace_id"]) >= 16 or r["transport"] == "grpc" for r in rows)
    if events is not None:
        assert events == len(rows)
    assert report(db, gateway.settings.state_dir).ok


def _has_table(conn, name: str) -> bool:
    from sqlalchemy import inspect

    return name in inspect(conn).get_table_names()


async def test_outbox_carries_audit_events(audit_db: Database, tmp_path: Path) -> None:
    log = AuditLog(audit_db, CheckpointSigner.from_state_dir(tmp_path), checkpoint_every=5)
    await write(log, [entry(i) for i in range(3)])
    with audit_db.engine.connect() as conn:
        tables = [t for t in ("mlp_outbox", "outbox", "event_outbox") if _has_table(conn, t)]
        assert tables, "outbox table missing"
        payloads = [r[0] for r in conn.execute(text(f"SELECT payload FROM {tables[0]}"))]
    assert len(payloads) == 3
    assert all("mlp.gateway.audit-recorded" in p for p in payloads)


async def test_chain_holds_under_concurrency_and_two_writers(audit_db: Database, tmp_path: Path) -> None:
    signer = CheckpointSigner.from_state_dir(tmp_path)
    first = AuditLog(audit_db, signer, checkpoint_every=25)
    second = AuditLog(Database(audit_db.url), signer, checkpoint_every=25)  # a second gateway replica
    await asyncio.gather(write(first, [entry(i, "one") for i in range(150)]),
                         write(second, [entry(i, "two") for i in range(150)]))
    result = report(audit_db, tmp_path)
    assert result.ok, result.problems
    assert result.records == 300
    assert result.checkpoints >= 10
    second.db.dispose()


async def test_a_database_outage_delays_audit_records_and_loses_none(audit_db: Database, tmp_path: Path) -> None:
    log = AuditLog(audit_db, CheckpointSigner.from_state_dir(tmp_path), checkpoint_every=10)
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    await write_some(log, range(5))
    tamper(audit_db, "ALTER TABLE audit_records RENAME TO audit_records_away")  # every append now fails
    await asyncio.gather(*(log.record(entry(i)) for i in range(5, 12)))
    for _ in range(100):
        if log.failures >= 2:
            break
        await asyncio.sleep(0.05)
    assert log.failures >= 2, "the writer should be retrying"
    tamper(audit_db, "ALTER TABLE audit_records_away RENAME TO audit_records")
    await asyncio.wait_for(log.flush(), timeout=20)
    stop.set()
    await task
    result = report(audit_db, tmp_path)
    assert result.ok, result.problems
    assert result.records == 12


async def write_some(log: AuditLog, numbers: range) -> None:
    await asyncio.gather(*(log.record(entry(i)) for i in numbers))
    await log.flush()


@pytest.fixture
async def written(audit_db: Database, tmp_path: Path) -> Database:
    await write(AuditLog(audit_db, CheckpointSigner.from_state_dir(tmp_path), checkpoint_every=10),
                [entry(i) for i in range(30)])
    assert report(audit_db, tmp_path).ok
    return audit_db


def tamper(db: Database, *statements: str) -> None:
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


async def test_editing_a_record_is_detected(written: Database, tmp_path: Path) -> None:
    tamper(written, "UPDATE audit_records SET actor = 'mallory' WHERE seq = 12")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken == 12


async def test_editing_and_rehashing_a_record_is_detected(written: Database, tmp_path: Path) -> None:
    """An attacker who recomputes the edited record's hash still breaks the next link."""
    from mlp_cli.audit import record_hash

    with written.engine.connect() as conn:
        row = dict(conn.execute(text("SELECT * FROM audit_records WHERE seq = 12")).one()._mapping)
    row["outcome"] = "failed"
    tamper(written, f"UPDATE audit_records SET outcome = 'failed', hash = '{record_hash(row)}' WHERE seq = 12")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken is not None and result.first_broken <= 13


async def test_deleting_a_record_is_detected(written: Database, tmp_path: Path) -> None:
    tamper(written, "DELETE FROM audit_records WHERE seq = 7")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken == 7


async def test_reordering_records_is_detected(written: Database, tmp_path: Path) -> None:
    tamper(written, "UPDATE audit_records SET seq = -1 WHERE seq = 15",
           "UPDATE audit_records SET seq = 15 WHERE seq = 16",
           "UPDATE audit_records SET seq = 16 WHERE seq = -1")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken == 15


async def test_truncating_the_tail_is_detected(written: Database, tmp_path: Path) -> None:
    tamper(written, "DELETE FROM audit_records WHERE seq > 25")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken == 26


async def test_forged_checkpoint_is_detected(written: Database, tmp_path: Path) -> None:
    tamper(written, "UPDATE audit_checkpoints SET signature = 'AAAA' WHERE seq = 20")
    result = report(written, tmp_path)
    assert not result.ok and result.first_broken == 20


async def test_cli_verify_names_the_first_broken_record(written: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", "--database-url", written.url, "--state-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "audit chain OK: 30 records" in ok.output
    tamper(written, "UPDATE audit_records SET detail = 'x' WHERE seq = 4")
    broken = runner.invoke(cli, ["audit", "verify", "--database-url", written.url, "--state-dir", str(tmp_path)])
    assert broken.exit_code == 1
    assert "first broken record is 4" in broken.output
