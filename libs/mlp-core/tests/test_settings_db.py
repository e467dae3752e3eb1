"""Settings guard production mode; the database unit of work is all-or-nothing on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from mlp_core.db import Database
from mlp_core.settings import CoreSettings


def test_env_names_and_sqlite_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLP_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("MLP_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("MLP_STATE_DIR", str(tmp_path))
    s = CoreSettings(service_name="registry")
    assert s.redis_url == "redis://cache:6379/2"
    assert s.kafka_servers == ["k1:9092", "k2:9092"]
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/registry.db"


def test_production_refuses_default_secret_and_plain_http_issuer() -> None:
    with pytest.raises(ValidationError, match="MLP_OIDC_CLIENT_SECRET"):
        CoreSettings(mode="production", oidc_client_id="svc-registry", oidc_issuer="https://idp.example")
    with pytest.raises(ValidationError, match="https"):
        CoreSettings(mode="production", oidc_client_id="svc", oidc_client_secret="s3cr3t-from-vault",
                     oidc_issuer="http://idp.example")
    ok = CoreSettings(mode="production", oidc_client_id="svc", oidc_client_secret="s3cr3t-from-vault",
                      oidc_issuer="https://idp.example")
    assert ok.mode == "production"


def test_session_commits_all_or_nothing(any_db_url: str) -> None:
    db = Database(any_db_url)
    meta = MetaData()
    things = Table("things", meta, Column("id", Integer, primary_key=True), Column("name", String(20), unique=True))
    meta.create_all(db.engine)
    with db.session() as s:
        s.execute(things.insert().values(id=1, name="a"))
    with pytest.raises(Exception), db.session() as s:
        s.execute(things.insert().values(id=2, name="b"))
        s.execute(things.insert().values(id=3, name="a"))  # unique violation: the whole unit rolls back
    with db.session() as s:
        assert s.execute(select(things.c.name)).scalars().all() == ["a"]
    db.ping()
    db.dispose()
