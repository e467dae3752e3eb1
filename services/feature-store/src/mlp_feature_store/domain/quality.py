"""Data quality beyond per-value rules: custom SQL expectations and counters for metrics.

A custom SQL expectation is a single read-only ``SELECT`` that returns the ``row_idx`` of the rows that
fail, over a table ``batch`` holding the batch being ingested (columns: ``row_idx``, the join keys,
``event_ts`` in µs, and the features by name). It never runs on the service's databases: each batch is
copied into a private in-memory SQLite database whose authorizer allows reading ``batch`` only, in
``query_only`` mode, with a step budget. So a query can neither see other data nor change anything.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlp_core.errors import InvalidArgument

_FORBIDDEN = re.compile(
    r"\b(insert|update|delete|replace|drop|alter|create|attach|detach|pragma|vacuum|reindex|analyze|"
    r"begin|commit|rollback|savepoint|release|copy|grant|revoke|truncate|load_extension)\b", re.I)
_STRINGS = re.compile(r"'(?:[^']|'')*'")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
MAX_QUERY_CHARS = 4_000
_STEP_BUDGET = 1_000  # progress-handler calls of 1,000 VM steps each: about 10^6 steps


def validate_select(query: str) -> str:
    """Return ``query`` if it is one read-only SELECT (or WITH ... SELECT); raise ``ValueError`` saying why not."""
    if not query or len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"the query must have 1 to {MAX_QUERY_CHARS} characters")
    bare = _STRINGS.sub("''", _COMMENTS.sub(" ", query)).strip().rstrip(";").strip()
    if ";" in bare:
        raise ValueError("the query must be a single statement (no ';' between statements)")
    if not re.match(r"^(select|with)\b", bare, re.I):
        raise ValueError("the query must be a SELECT (or WITH ... SELECT) statement")
    bad = _FORBIDDEN.search(bare)
    if bad:
        raise ValueError(f"the query may only read: '{bad.group(0)}' is not allowed")
    return query


def _authorize(action: int, arg1: str | None, _arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ and arg1 == "batch":
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_RECURSIVE:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def failing_rows(query: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> set[int]:
    """Run ``query`` over ``rows`` (with ``row_idx`` = position) and return the row indexes it selects."""
    validate_select(query)
    conn = sqlite3.connect(":memory:", check_same_thread=True)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        # Column names are validated identifiers (feature and key names); values go in as parameters.
        conn.execute(f"CREATE TABLE batch (row_idx INTEGER PRIMARY KEY, {cols})")
        marks = ", ".join("?" for _ in range(len(columns) + 1))
        conn.executemany(f"INSERT INTO batch VALUES ({marks})",  # noqa: S608 - only '?' placeholders
                         ((i, *r) for i, r in enumerate(rows)))
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize)
        steps = [0]

        def budget() -> int:
            steps[0] += 1
            return 1 if steps[0] > _STEP_BUDGET else 0

        conn.set_progress_handler(budget, 1_000)
        try:
            result = conn.execute(query).fetchall()
        except sqlite3.DatabaseError as exc:
            reason = f"the SQL expectation failed ({exc}); it must return row_idx values of the batch table"
            raise InvalidArgument(reason) from None
    finally:
        conn.close()
    try:
        return {int(r[0]) for r in result}
    except (TypeError, ValueError, IndexError):
        raise InvalidArgument("the SQL expectation must return row_idx values (integers)") from None


@dataclass
class QualityMetrics:
    """Rows ingested, written and quarantined, and failures per rule, per (project, view); thread-safe."""

    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, project: str, view: str, result: Any) -> None:
        """Count one ingest's outcome (an ``IngestResult``)."""
        with self._lock:
            for outcome, n in (("in", result.rows_in), ("written", result.rows_written),
                               ("quarantined", result.rows_quarantined)):
                key = (project, view, outcome)
                self.rows[key] = self.rows.get(key, 0) + n
            for rule, n in result.failures.items():
                key = (project, view, rule)
                self.failures[key] = self.failures.get(key, 0) + n

    def snapshot(self) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str, str], int]]:
        """Copies of the counters, for a scrape."""
        with self._lock:
            return dict(self.rows), dict(self.failures)
