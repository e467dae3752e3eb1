"""Custom SQL expectations: only a single read-only SELECT over the batch, enforced twice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlp_core.errors import FailedPrecondition, InvalidArgument
from mlp_feature_store.domain.ingestion import rows_to_batch
from mlp_feature_store.domain.quality import failing_rows, validate_select

from .conftest import STATS, USER, Caller

NOW = datetime.now(UTC).isoformat()


@pytest.mark.parametrize("query", [
    "DELETE FROM batch", "SELECT 1; DROP TABLE batch", "PRAGMA table_info(batch)",
    "SELECT row_idx FROM batch; ATTACH DATABASE 'x' AS y", "with x as (delete from batch) select 1", "",
    "UPDATE batch SET clicks = 0",
])
def test_non_select_statements_are_refused(query: str) -> None:
    with pytest.raises(ValueError):
        validate_select(query)


def test_select_with_keywords_inside_strings_is_allowed() -> None:
    assert validate_select("SELECT row_idx FROM batch WHERE email = 'drop table; delete'")


def test_the_sandbox_allows_reading_the_batch_only() -> None:
    rows = [(1, 2), (5, 3)]
    assert failing_rows("SELECT row_idx FROM batch WHERE a > b", ["a", "b"], rows) == {1}
    with pytest.raises(InvalidArgument, match="not authorized"):
        failing_rows("SELECT row_idx FROM batch WHERE (SELECT count(*) FROM sqlite_master) > 0", ["a", "b"], rows)
    with pytest.raises(InvalidArgument):  # runs past its step budget
        failing_rows("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
                     ["a", "b"], rows)


def test_sql_expectation_quarantines_selected_rows(fs) -> None:  # type: ignore[no-untyped-def]
    view = {**STATS, "expectations": [{"kind": "sql", "query": "SELECT row_idx FROM batch WHERE clicks > views"}]}
    fs.registry.apply(Caller(), "p1", [("entity", USER), ("feature_view", view)])
    rows = [{"user_id": "u1", "clicks": 1, "views": 10, "event_timestamp": NOW},
            {"user_id": "u2", "clicks": 11, "views": 10, "event_timestamp": NOW}]
    result = fs.ingestion.ingest(Caller(), "p1", "stats", [rows_to_batch(rows)])
    assert (result.rows_written, result.rows_quarantined, result.failures) == (1, 1, {"sql": 1})
    bad = {**STATS, "name": "s2", "expectations": [{"kind": "sql", "query": "DELETE FROM batch"}]}
    with pytest.raises(InvalidArgument, match="must be a SELECT"):
        fs.registry.apply(Caller(), "p1", [("feature_view", bad)])
    with pytest.raises((InvalidArgument, FailedPrecondition)):
        fs.registry.apply(Caller(), "p1", [("feature_view", {**bad, "expectations": [
            {"kind": "range", "feature": "clicks", "min": 0, "query": "SELECT 1"}]})])
