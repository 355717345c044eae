"""Reaching under the ledger interface, for tests only: raw SQL on either backend.

Tests write SQL once, in SQLite's form with `?` placeholders; on PostgreSQL (psycopg) the
placeholders become `%s`. Rows come back as tuples from both backends, so a test compares
them the same way whichever backend it runs on. Only SQL both dialects accept belongs here;
a statement only one backend has (PRAGMA, TRUNCATE) belongs in that backend's own test.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from rollout.ledger import LedgerBackend
from rollout.ledger_url import is_url


def is_postgres(location: str) -> bool:
    """True when a ledger location (what the `ledger_location` fixture yields) is a PostgreSQL URL."""
    return is_url(location)


def execute(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement written with `?` placeholders on a sqlite3 or psycopg connection;
    its rows as tuples ([] for a statement that returns none). Raises the driver's error."""
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(sql, list(params)).fetchall()
    # psycopg: `%` is its placeholder character, so a literal one is doubled.
    cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
    if cursor.description is None:
        return []
    return [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in cursor.fetchall()]


def run_sql(ledger: LedgerBackend, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger's own connection, inside `ledger.transaction()`: the
    write guard runs first (LeaseLost), a refused statement rolls the transaction back, and
    inside an outer `transaction()` block it joins that block."""
    with ledger.transaction() as conn:
        return execute(conn, sql, params)


@dataclass
class Raw:
    """A plain autocommit connection that knows nothing of rollout: only what the database
    itself enforces (triggers, constraints) protects the ledger from it."""

    conn: Any
    postgres: bool
    error: type[Exception]  # what the driver raises for a refused statement

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement with `?` placeholders, its rows as tuples (see `execute`)."""
        return execute(self.conn, sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None when there is no row)."""
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None

    def has_table(self, name: str) -> bool:
        """Whether the ledger database has a table of that name."""
        if self.postgres:
            return bool(self.one("SELECT to_regclass(?) IS NOT NULL", [name]))
        return self.one("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", [name]) == 1

    def columns(self, table: str) -> list[str]:
        """The table's column names in their order."""
        if self.postgres:
            return [name for (name,) in self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = current_schema()"
                " ORDER BY ordinal_position", [table])]
        return [row[1] for row in self.execute(f"PRAGMA table_info({table})")]


@contextmanager
def raw(location: str) -> Iterator[Raw]:
    """A Raw connection to the ledger at `location`: sqlite3 on the file, or psycopg as the
    same role rollout connects as (the URL's user), in autocommit mode. Closed after the block."""
    if is_postgres(location):
        import psycopg

        conn: Any = psycopg.connect(location, autocommit=True)
        try:
            yield Raw(conn, True, psycopg.Error)
        finally:
            conn.close()
        return
    conn = sqlite3.connect(location, isolation_level=None)
    try:
        yield Raw(conn, False, sqlite3.DatabaseError)
    finally:
        conn.close()
