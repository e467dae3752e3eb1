"""Fixtures: a real registry (SQLite or PostgreSQL, a local artifact folder, real keys) per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import registry_support (importlib import mode)

from registry_support import ALICE, Registry, build_registry


@pytest.fixture
def registry(any_db_url: str, tmp_path: Path) -> Iterator[Registry]:
    """A registry on SQLite and on PostgreSQL, with a 'fraud/scorer' model."""
    reg = build_registry(any_db_url, tmp_path)
    reg.service.catalog.create_model(ALICE, "fraud", "scorer", "scores transactions",
                                     thresholds={"auc": {"min": 0.9}})
    yield reg
    reg.db.dispose()


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[Registry]:
    """The same on SQLite only, for tests about bytes on disk."""
    reg = build_registry(f"sqlite:///{tmp_path}/reg.db", tmp_path)
    reg.service.catalog.create_model(ALICE, "fraud", "scorer", "scores transactions",
                                     thresholds={"auc": {"min": 0.9}})
    yield reg
    reg.db.dispose()
