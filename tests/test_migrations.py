"""Opening a ledger written by an older rollout migrates it in one transaction; a newer one is refused.

The v1 ledger comes from tests/fixtures/ledger-v1.sql (dumped from schema version 1, before
lock heartbeats), so the test migrates what an older rollout really wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils

from rollout import ledger as L
from rollout import lock
from rollout.errors import LedgerError
from rollout.ledger import Ledger

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1.sql"
ROLLOUT = str(Path(sys.executable).parent / "rollout")


@pytest.fixture
def v1_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "ledger.db"
    path.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(path)
    conn.executescript(FIXTURE.read_text())
    conn.close()
    os.chmod(path, 0o600)
    return path


def snapshot(path: Path) -> dict[str, object]:
    """Everything a migration must keep: the schema version, every row of entries, targets, events."""
    conn = sqlite3.connect(path)
    try:
        return {
            "version": conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0],
            "lock_columns": [row[1] for row in conn.execute("PRAGMA table_info(locks)")],
            **{table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
               for table in ("entries", "targets", "events")},
        }
    finally:
        conn.close()


def run_cli(ledger: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUT_CONFIG",)}
    env["ROLLOUT_LEDGER"] = str(ledger)
    return subprocess.run([ROLLOUT, *args], capture_output=True, text=True, env=env, cwd=ledger.parent,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_a_v1_ledger_is_migrated_to_the_current_schema_with_its_data_intact(v1_ledger: Path) -> None:
    before = snapshot(v1_ledger)
    assert before["version"] == "1" and "heartbeat_at" not in before["lock_columns"]

    Ledger(v1_ledger).close()

    after = snapshot(v1_ledger)
    assert after["version"] == str(L.SCHEMA_VERSION) == "2"
    assert after["lock_columns"][-1] == "heartbeat_at"
    assert {k: after[k] for k in ("entries", "targets", "events")} == {k: before[k] for k in ("entries", "targets", "events")}
    with sqlite3.connect(v1_ledger) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_migrated_ledger_works_for_history_and_leases(v1_ledger: Path) -> None:
    result = run_cli(v1_ledger, "history", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [(e["id"], e["tag"], e["kind"], e["status"]) for e in entries] == [
        (3, "1.0.0", "revert", "healthy"), (2, "1.0.1", "deploy", "failed"), (1, "1.0.0", "deploy", "healthy")]
    ledger = Ledger(v1_ledger)
    # The v1 lease expired long ago: it is taken over, and the new one carries a heartbeat.
    lease = lock.acquire(ledger, "web")
    assert lock.renew(ledger, lease)
    [held] = lock.read(ledger, "web")
    assert held.pid == os.getpid() and held.heartbeat_at is not None
    lock.release(ledger, lease)
    # Immutability survives the migration.
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        ledger.db.execute("UPDATE entries SET digest = 'sha256:' || hex(randomblob(32)) WHERE id = 1")
    assert ledger.current("web").id == 3  # type: ignore[union-attr]
    ledger.close()


def test_a_migration_failing_half_way_leaves_the_v1_ledger_as_it_was(v1_ledger: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(v1_ledger)
    # The first statement succeeds, the second fails: the first must be rolled back too.
    real_step = L.MIGRATIONS[2]

    def half_way(db: sqlite_utils.Database) -> None:
        real_step(db)
        db.execute("ALTER TABLE no_such_table ADD COLUMN x TEXT")

    monkeypatch.setitem(L.MIGRATIONS, 2, half_way)
    with pytest.raises(LedgerError) as raised:
        Ledger(v1_ledger)
    assert str(v1_ledger) in str(raised.value) and "\n" not in str(raised.value)
    assert snapshot(v1_ledger) == before
    monkeypatch.undo()
    Ledger(v1_ledger).close()
    assert snapshot(v1_ledger)["version"] == "2"


def test_a_ledger_from_a_newer_rollout_is_refused_and_left_untouched(v1_ledger: Path) -> None:
    with sqlite3.connect(v1_ledger) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    digest = hashlib.sha256(v1_ledger.read_bytes()).hexdigest()
    result = run_cli(v1_ledger, "history")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("rollout: error: ") and "schema version 99" in line and "upgrade rollout" in line
    assert hashlib.sha256(v1_ledger.read_bytes()).hexdigest() == digest
    assert snapshot(v1_ledger)["version"] == "99"
