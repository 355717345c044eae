"""Opening a ledger written by an older rollout migrates it in one transaction; a newer one is refused.

On both backends (the `ledger_location` fixture). The SQLite v1 ledger comes from
tests/fixtures/ledger-v1.sql (dumped from schema version 1, before lock heartbeats), so the test
migrates what an older rollout really wrote. The PostgreSQL backend started at version 2, so no
older PostgreSQL ledger exists: its v1 is the same rows in a current database taken back to
version 1's shape (no `locks.heartbeat_at`, version "1"), and the step to version 2 (the column,
as SQLite's step adds it) is supplied by the fixture in this process. What is tested there is the
migration machinery every future PostgreSQL step will go through: the steps, the tables and
triggers, and the version bump in one transaction under the schema lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from rollout import ledger as L
from rollout import lock
from rollout.errors import EXIT_USAGE, LedgerError
from rollout.ledger import open_ledger
from rollout.ledger_url import redact
from support import pg
from support.cli import run_rollout
from support.raw_ledger import is_postgres, raw, run_sql

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1.sql"
COPIED = ("entries", "targets", "events", "locks")


def heartbeat_column(conn: Any) -> None:
    """Version 2's step on PostgreSQL, as rollout.ledger.MIGRATIONS[2] is on SQLite."""
    conn.execute("ALTER TABLE locks ADD COLUMN heartbeat_at TEXT")


def migrations(location: str) -> dict[int, Callable[[Any], object]]:
    """The migration steps of the location's backend."""
    if is_postgres(location):
        from rollout import ledger_postgres

        return ledger_postgres.MIGRATIONS
    return L.MIGRATIONS


def load_fixture(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(FIXTURE.read_text())
    finally:
        conn.close()


def v1_file(path: Path) -> str:
    """The fixture's v1 ledger written to a new SQLite file at `path` (its directory 0700, the file 0600)."""
    path.parent.mkdir(mode=0o700)
    load_fixture(path)
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def v1_sqlite(tmp_path: Path) -> str:
    """A v1 SQLite ledger, for the tests of what only SQLite has."""
    return v1_file(tmp_path / "state" / "ledger.db")


@pytest.fixture
def v1_ledger(ledger_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The location of a schema-version-1 ledger holding the fixture's rows, once per backend (module docstring)."""
    if not is_postgres(ledger_location):
        return v1_file(Path(ledger_location))
    source = tmp_path / "v1-source.db"
    load_fixture(source)
    open_ledger(ledger_location).close()
    with sqlite3.connect(source) as old, raw(ledger_location) as conn:
        conn.execute("ALTER TABLE locks DROP COLUMN heartbeat_at")
        conn.execute("ALTER TABLE locks DROP COLUMN token")
        for table in COPIED:
            cursor = old.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", row)
            if table != "locks":  # explicit ids leave the identity sequence behind: move it past them
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    monkeypatch.setitem(migrations(ledger_location), 2, heartbeat_column)
    return ledger_location


def snapshot(location: str) -> dict[str, object]:
    """Everything a migration must keep: the schema version, every row of entries, targets, events."""
    with raw(location) as conn:
        return {
            "version": conn.one("SELECT value FROM meta WHERE key = 'schema_version'"),
            "lock_columns": conn.columns("locks"),
            **{table: conn.execute(f"SELECT * FROM {table} ORDER BY id") for table in ("entries", "targets", "events")},
        }


def ledger_env(location: str) -> dict[str, str]:
    """What points a `rollout` run at the ledger: $ROLLOUT_LEDGER_URL or $ROLLOUT_LEDGER."""
    return {"ROLLOUT_LEDGER_URL": location} if is_postgres(location) else {"ROLLOUT_LEDGER": location}


def test_a_v1_ledger_is_migrated_to_the_current_schema_with_its_data_intact(v1_ledger: str) -> None:
    before = snapshot(v1_ledger)
    assert before["version"] == "1" and "heartbeat_at" not in before["lock_columns"]
    assert [row[0] for row in before["entries"]] == [1, 2, 3]  # type: ignore[union-attr]

    open_ledger(v1_ledger).close()

    after = snapshot(v1_ledger)
    assert after["version"] == str(L.SCHEMA_VERSION) == "3"
    assert after["lock_columns"][-2:] == ["heartbeat_at", "token"]  # type: ignore[index]
    assert {k: after[k] for k in ("entries", "targets", "events")} == {k: before[k] for k in ("entries", "targets", "events")}


def test_a_migrated_sqlite_file_passes_the_integrity_check(v1_sqlite: str) -> None:
    # SQLite only: the file's own consistency (a PostgreSQL server keeps its pages itself).
    # The PostgreSQL counterpart, every row intact after migrating, is the test above.
    open_ledger(v1_sqlite).close()
    with sqlite3.connect(v1_sqlite) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_migrated_ledger_works_for_history_and_leases(v1_ledger: str, tmp_path: Path) -> None:
    open_ledger(v1_ledger).close()  # migrated here: only this process has the PostgreSQL step (module docstring)
    result = run_rollout("history", "--json", env=ledger_env(v1_ledger), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [(e["id"], e["tag"], e["kind"], e["status"]) for e in entries] == [
        (3, "1.0.0", "revert", "healthy"), (2, "1.0.1", "deploy", "failed"), (1, "1.0.0", "deploy", "healthy")]
    ledger = open_ledger(v1_ledger)
    # The v1 lease expired long ago: it is taken over, and the new one carries a heartbeat.
    lease = lock.acquire(ledger, "web")
    assert lock.renew(ledger, lease)
    [held] = lock.read(ledger, "web")
    assert held.pid == os.getpid() and held.heartbeat_at is not None and held.token == lease.token is not None
    lock.release(ledger, lease)
    # Immutability survives the migration.
    with pytest.raises(ledger.database_errors, match="immutable"):
        run_sql(ledger, "UPDATE entries SET digest = 'sha256:' || upper(digest) WHERE id = 1")
    assert ledger.current("web").id == 3  # type: ignore[union-attr]
    # New entries continue after the migrated ones.
    entry = ledger.record(L.NewEntry(app="web", repository="127.0.0.1:5000/web", tag="1.0.2", digest="sha256:" + "3" * 64))
    assert entry.id == 4
    ledger.close()


def test_rollout_migrates_a_v1_sqlite_ledger_when_it_first_opens_it(v1_sqlite: str, tmp_path: Path) -> None:
    # SQLite only: a real v1 file, migrated by the command a user runs. No PostgreSQL ledger
    # older than the backend exists; the in-process migrations above are its counterpart.
    result = run_rollout("history", "--json", env=ledger_env(v1_sqlite), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3
    assert snapshot(v1_sqlite)["version"] == str(L.SCHEMA_VERSION)


def test_a_migration_failing_half_way_leaves_the_v1_ledger_as_it_was(v1_ledger: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(v1_ledger)
    steps = migrations(v1_ledger)
    # The first statement succeeds, the second fails: the first must be rolled back too.
    real_step = steps[2]

    def half_way(db: Any) -> None:
        real_step(db)
        db.execute("ALTER TABLE no_such_table ADD COLUMN x TEXT")

    monkeypatch.setitem(steps, 2, half_way)
    with pytest.raises(LedgerError) as raised:
        open_ledger(v1_ledger)
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_USAGE
    assert redact(v1_ledger) in message and "\n" not in message and pg.PASSWORD not in message
    assert snapshot(v1_ledger) == before
    monkeypatch.setitem(steps, 2, real_step)
    open_ledger(v1_ledger).close()
    assert snapshot(v1_ledger)["version"] == str(L.SCHEMA_VERSION)


def test_a_ledger_from_a_newer_rollout_is_refused_and_left_untouched(v1_ledger: str, tmp_path: Path) -> None:
    with raw(v1_ledger) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = snapshot(v1_ledger)
    # SQLite: not a byte changes (switching to WAL would rewrite the header of a file we refuse).
    digest = None if is_postgres(v1_ledger) else hashlib.sha256(Path(v1_ledger).read_bytes()).hexdigest()
    result = run_rollout("history", env=ledger_env(v1_ledger), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("rollout: error: ") and "schema version 99" in line and "upgrade rollout" in line
    assert redact(v1_ledger) in line and pg.PASSWORD not in result.stderr + result.stdout
    assert snapshot(v1_ledger) == before
    if digest is not None:
        assert hashlib.sha256(Path(v1_ledger).read_bytes()).hexdigest() == digest
