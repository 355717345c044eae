"""The ledger on both backends (the `ledger_location` fixture: a SQLite file, then a fresh
PostgreSQL database): schema, round-trips, and immutability enforced by triggers stored in the
database itself, so raw SQL cannot rewrite history.

What only one backend has is tested apart: SQLite's file modes, WAL and busy handling below
(each names its PostgreSQL counterpart), PostgreSQL's server clock, TRUNCATE, isolation and
libpq conventions in tests/test_ledger_postgres.py.
"""

from __future__ import annotations

import ast
import inspect
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from rollout import ledger as L
from rollout.errors import EXIT_LOCKED, EXIT_USAGE, LeaseLost, LedgerBusy, LedgerError
from rollout.ledger import Ledger, LedgerBackend, NewEntry, open_ledger
from rollout.ledger_url import redact
from support import pg
from support.fakes import IMAGE, fake_digest
from support.ledger_interface import InterfaceOnly, interface_names
from support.raw_ledger import is_postgres, raw, run_sql


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a SQLite-only test keeps its ledger file."""
    return tmp_path / "state" / "ledger.db"


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[LedgerBackend]:
    opened = open_ledger(ledger_location)
    yield opened
    opened.close()


def record(ledger: LedgerBackend, tag: str | None, label: str, *, status: str | None = None, app: str = "web",
           **extra: object) -> L.Entry:
    entry = ledger.record(NewEntry(app=app, repository=IMAGE, tag=tag, digest=fake_digest(label), **extra))  # type: ignore[arg-type]
    if status is not None:
        for step in (L.APPLYING, L.VERIFYING, status):
            ledger.set_status(entry.id, step, error="broken" if status == L.FAILED and step == status else None)
    return ledger.get(entry.id)


@contextmanager
def raw_file(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, for the SQLite-only tests (PRAGMAs, journal modes, its write lock)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def one_line_naming(message: str, location: str) -> bool:
    """The message is one line and names the ledger (a URL with its password masked), never the password."""
    return "\n" not in message and redact(location) in message and pg.PASSWORD not in message


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- opening and the schema -------------------------------------------------------------------

def test_new_sqlite_ledger_is_private_to_its_owner(path: Path) -> None:
    # SQLite only: file modes. PostgreSQL counterpart (test_ledger_postgres): another role cannot read the tables.
    ledger = Ledger(path)
    record(ledger, "v1", "v1")
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    wal = path.with_name(path.name + "-wal")
    assert wal.exists(), "WAL mode keeps a -wal file while the ledger is open"
    assert mode(wal) == 0o600
    ledger.close()


def test_ledger_stores_its_schema_version(ledger: LedgerBackend, ledger_location: str) -> None:
    with raw(ledger_location) as conn:
        assert conn.execute("SELECT key, value FROM meta") == [("schema_version", str(L.SCHEMA_VERSION))]


def test_sqlite_ledger_uses_wal(path: Path) -> None:
    # SQLite only: journal modes (a PostgreSQL server always writes ahead).
    Ledger(path).close()
    with raw_file(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ten_rollouts_opening_a_brand_new_ledger_at_once_all_succeed(ledger_location: str) -> None:
    # Ten rollouts started together on a new ledger: one creates the schema (SQLite: under its
    # write lock, then each switches to WAL; PostgreSQL: under a transaction-scoped advisory
    # lock), the others wait for it and find it done; none fails or creates it twice.
    start, errors, opened = threading.Barrier(10), [], []

    def open_one() -> None:
        try:
            start.wait(timeout=30)
            ledger = open_ledger(ledger_location)
            opened.append(ledger)
            ledger.event(None, "opened")
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    for ledger in opened:
        ledger.close()
    assert errors == [] and len(opened) == 10
    with raw(ledger_location) as conn:
        assert conn.one("SELECT count(*) FROM events WHERE event = 'opened'") == 10
        assert conn.execute("SELECT key, value FROM meta") == [("schema_version", str(L.SCHEMA_VERSION))]


def test_a_new_ledger_opens_while_another_rollout_writes_it_before_switching_to_wal(path: Path) -> None:
    # SQLite only: the switch to WAL. PostgreSQL counterpart: the ten openers above.
    # The moment ten rollouts started together on a new ledger hit: one has created the schema and
    # is writing, the file is not in WAL yet, and SQLite refuses the switch at once, not after waiting.
    Ledger(path).close()
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    with closing(writer):
        writer.execute("PRAGMA journal_mode = DELETE")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO meta (key, value) VALUES ('written', 'by another rollout')")
        finished = threading.Timer(0.3, writer.execute, ["COMMIT"])
        finished.start()
        try:
            opened = Ledger(path)
        finally:
            finished.join()
    with raw_file(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'written'").fetchone()[0] == "by another rollout"
    opened.close()


def test_a_ledger_held_past_the_busy_timeout_is_a_one_line_lock_error(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite only: its busy timeout. A PostgreSQL write waits for the one row it needs, not for
    # the whole database; its counterpart is the write-guard isolation test in test_ledger_postgres.
    monkeypatch.setattr(L, "_BUSY_TIMEOUT", 0.2)
    path.parent.mkdir()
    with raw_file(path) as writer:
        writer.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerBusy) as caught:
            Ledger(path)
        writer.execute("ROLLBACK")
        assert writer.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0, "nothing was created"
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_LOCKED
    assert "\n" not in message and str(path) in message and "busy" in message and "retry" in message


def test_reopening_keeps_entries(ledger_location: str) -> None:
    first = open_ledger(ledger_location)
    entry = record(first, "v1", "v1", status=L.HEALTHY)
    first.close()
    again = open_ledger(ledger_location)
    assert again.get(entry.id) == entry
    again.close()


# -- round trips --------------------------------------------------------------------------------

def test_record_and_outcome_round_trip(ledger: LedgerBackend) -> None:
    entry = ledger.record(NewEntry(app="web", repository=IMAGE, tag="v1", digest=fake_digest("v1"), reason="launch",
                                   actor="alice@ci", build_key="k1", base_digests={"busybox": fake_digest("base")}))
    assert (entry.status, entry.kind, entry.actor, entry.reason) == (L.PENDING, L.DEPLOY, "alice@ci", "launch")
    assert entry.image == f"{IMAGE}@{fake_digest('v1')}"
    assert entry.base_digests == {"busybox": fake_digest("base")}
    assert entry.finished_at is None

    ledger.set_status(entry.id, L.APPLYING)
    ledger.set_target(entry.id, "local", outcome="applied", image_before="old@sha256:x", image_after=entry.image)
    ledger.set_status(entry.id, L.VERIFYING)
    ledger.set_target(entry.id, "local", outcome="healthy", detail="ready after 2.0s")
    ledger.set_status(entry.id, L.FAILED, error="http 500")

    done = ledger.get(entry.id)
    assert (done.status, done.error) == (L.FAILED, "http 500")
    assert done.finished_at is not None
    [target] = ledger.targets(entry.id)
    # A later update keeps the images recorded when the target was moved.
    assert (target.target, target.outcome, target.image_before, target.image_after, target.detail) == (
        "local", "healthy", "old@sha256:x", entry.image, "ready after 2.0s")
    events = [e["event"] for e in ledger.events(entry.id)]
    assert events == ["recorded", "status:applying", "target:applied", "status:verifying", "target:healthy",
                      "status:failed"]
    assert ledger.events(entry.id)[-1]["detail"] == {"error": "http 500"}


def test_unknown_entry_is_a_one_line_ledger_error(ledger: LedgerBackend) -> None:
    with pytest.raises(LedgerError, match="no ledger entry #42"):
        ledger.get(42)
    assert ledger.find(42) is None


def test_history_is_newest_first_limited_and_per_app(ledger: LedgerBackend) -> None:
    ids = [record(ledger, f"v{i}", f"v{i}").id for i in range(1, 6)]
    other = record(ledger, "v1", "other", app="api").id
    assert [e.id for e in ledger.history()] == [other, *reversed(ids)]
    assert [e.id for e in ledger.history("web", limit=2)] == [ids[4], ids[3]]
    assert [e.id for e in ledger.history("api")] == [other]
    assert ledger.history("nobody") == []


def test_current_and_last_healthy(ledger: LedgerBackend) -> None:
    a1 = record(ledger, "v1", "a", status=L.HEALTHY)
    b = record(ledger, "v2", "b", status=L.HEALTHY)
    record(ledger, "v3", "c", status=L.FAILED)
    a2 = record(ledger, "v1b", "a", status=L.HEALTHY)
    record(ledger, "x", "x", status=L.HEALTHY, app="api")

    assert ledger.current("web") == a2
    assert ledger.last_healthy("web") == a2
    # Skipping entries that run the same digest as the one being left behind.
    assert ledger.last_healthy("web", not_digest=fake_digest("a")) == b
    assert ledger.last_healthy("web", not_digest=fake_digest("b")) == a2
    assert ledger.last_healthy("web", not_digest=fake_digest("a"), before_id=b.id) is None
    assert ledger.last_healthy("web", before_id=b.id) == a1
    assert ledger.current("nobody") is None


def test_digests_for_tag_counts_every_attempt(ledger: LedgerBackend) -> None:
    record(ledger, "v1", "first", status=L.HEALTHY)
    record(ledger, "v1", "repushed", status=L.FAILED)
    record(ledger, "v2", "other")
    record(ledger, "v1", "api", app="api")
    assert ledger.digests_for_tag("web", "v1") == {fake_digest("first"), fake_digest("repushed")}
    assert ledger.digests_for_tag("web", "v9") == set()
    assert [(e.digest, e.status) for e in ledger.with_tag("web", "v1")] == [(fake_digest("repushed"), L.FAILED),
                                                                            (fake_digest("first"), L.HEALTHY)]


def test_unfinished_lists_in_progress_entries(ledger: LedgerBackend) -> None:
    record(ledger, "v1", "a", status=L.HEALTHY)
    stuck = record(ledger, "v2", "b")
    ledger.set_status(stuck.id, L.APPLYING)
    assert [e.id for e in ledger.unfinished("web")] == [stuck.id]


# -- immutability: enforced by the database, whoever sends the SQL ------------------------------

REWRITES = [
    ("UPDATE entries SET digest = 'sha256:' || upper(digest) WHERE id = ?", "digest"),
    ("UPDATE entries SET app = 'api' WHERE id = ?", "app"),
    ("UPDATE entries SET repository = 'evil.example/web' WHERE id = ?", "repository"),
    ("UPDATE entries SET tag = 'v9' WHERE id = ?", "tag"),
    ("UPDATE entries SET actor = 'nobody' WHERE id = ?", "actor"),
    ("UPDATE entries SET status = 'failed' WHERE id = ?", "status"),
    ("UPDATE entries SET error = 'never happened' WHERE id = ?", "error"),
    ("DELETE FROM entries WHERE id = ?", "delete entry"),
    ("DELETE FROM events WHERE entry_id = ?", "delete events"),
    ("UPDATE events SET event = 'status:failed' WHERE entry_id = ?", "update events"),
    ("DELETE FROM targets WHERE entry_id = ?", "delete targets"),
]


def snapshot(location: str, entry_id: int) -> tuple[object, ...]:
    with raw(location) as conn:
        return (
            conn.execute("SELECT * FROM entries WHERE id = ?", [entry_id]),
            conn.execute("SELECT * FROM events WHERE entry_id = ? ORDER BY id", [entry_id]),
            conn.execute("SELECT * FROM targets WHERE entry_id = ? ORDER BY id", [entry_id]),
        )


@pytest.mark.parametrize("sql", [sql for sql, _ in REWRITES], ids=[name for _, name in REWRITES])
@pytest.mark.parametrize("through", ["ledger connection", "plain connection"])
def test_finished_entries_cannot_be_rewritten(ledger: LedgerBackend, ledger_location: str, sql: str,
                                              through: str) -> None:
    entry = record(ledger, "v1", "v1", status=L.HEALTHY)
    ledger.set_target(entry.id, "local", outcome="healthy", image_after=entry.image)
    before = snapshot(ledger_location, entry.id)
    assert before[0] and before[1] and before[2], "there is something to rewrite"
    if through == "ledger connection":
        with pytest.raises(ledger.database_errors, match="ledger"):
            run_sql(ledger, sql, [entry.id])
    else:
        with raw(ledger_location) as conn, pytest.raises(conn.error, match="ledger"):
            conn.execute(sql, [entry.id])
    assert snapshot(ledger_location, entry.id) == before


def test_finished_entry_keeps_its_status_through_the_api(ledger: LedgerBackend) -> None:
    entry = record(ledger, "v1", "v1", status=L.HEALTHY)
    with pytest.raises(ledger.database_errors, match="finished entry keeps its outcome"):
        ledger.set_status(entry.id, L.FAILED, error="rewritten")
    assert ledger.get(entry.id) == entry
    assert [e["event"] for e in ledger.events(entry.id)][-1] == "status:healthy"


def test_what_was_deployed_is_immutable_even_while_in_progress(ledger: LedgerBackend, ledger_location: str) -> None:
    entry = record(ledger, "v1", "v1")
    with raw(ledger_location) as conn, pytest.raises(conn.error, match="immutable"):
        conn.execute("UPDATE entries SET digest = ? WHERE id = ?", [fake_digest("other"), entry.id])
    assert ledger.get(entry.id).digest == fake_digest("v1")


# Each backend's way of overwriting a row by inserting one with its id. SQLite's REPLACE deletes
# the old row without firing delete triggers (SQLite runs them for REPLACE only with
# recursive_triggers on); PostgreSQL's upsert becomes an UPDATE of the recorded row.
OVERWRITES = {
    "sqlite": ("INSERT OR REPLACE INTO entries (id, app, repository, tag, digest, kind, status, actor, created_at)"
               " VALUES (?, 'web', ?, 'v1', ?, 'deploy', 'healthy', 'forger', 'now')",
               "REPLACE INTO events (id, entry_id, at, event) VALUES (?, ?, 'now', 'forged')"),
    "postgres": ("INSERT INTO entries (id, app, repository, tag, digest, kind, status, actor, created_at)"
                 " VALUES (?, 'web', ?, 'v1', ?, 'deploy', 'healthy', 'forger', 'now')"
                 " ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, actor = excluded.actor",
                 "INSERT INTO events (id, entry_id, at, event) VALUES (?, ?, 'now', 'forged')"
                 " ON CONFLICT (id) DO UPDATE SET event = excluded.event"),
}


def test_an_insert_with_a_recorded_id_cannot_overwrite_an_entry_or_event(ledger: LedgerBackend,
                                                                         ledger_location: str) -> None:
    entry = record(ledger, "v1", "v1", status=L.HEALTHY)
    before = snapshot(ledger_location, entry.id)
    overwrite_entry, overwrite_event = OVERWRITES["postgres" if is_postgres(ledger_location) else "sqlite"]
    with raw(ledger_location) as conn:
        with pytest.raises(conn.error, match="ledger"):
            conn.execute(overwrite_entry, [entry.id, IMAGE, fake_digest("forged")])
        first_event = conn.one("SELECT min(id) FROM events WHERE entry_id = ?", [entry.id])
        with pytest.raises(conn.error, match="ledger"):
            conn.execute(overwrite_event, [first_event, entry.id])
    assert snapshot(ledger_location, entry.id) == before


def test_recorded_reason_cannot_be_rewritten(ledger: LedgerBackend, ledger_location: str) -> None:
    """The reason is part of what was recorded (`--reason`, 'automatic revert: ...')."""
    entry = record(ledger, "v1", "v1", status=L.HEALTHY, reason="hotfix for incident 12")
    with raw(ledger_location) as conn, pytest.raises(conn.error, match="immutable"):
        conn.execute("UPDATE entries SET reason = 'routine' WHERE id = ?", [entry.id])
    assert ledger.get(entry.id).reason == "hotfix for incident 12"


def test_in_progress_entry_moves_forward(ledger: LedgerBackend) -> None:
    entry = record(ledger, "v1", "v1")
    ledger.set_status(entry.id, L.APPLYING)
    ledger.set_status(entry.id, L.INTERRUPTED, error="killed")
    done = ledger.get(entry.id)
    assert (done.status, done.error) == (L.INTERRUPTED, "killed") and done.finished_at is not None


# -- ledgers rollout must not use -----------------------------------------------------------------

def test_newer_schema_is_refused_with_one_line(ledger: LedgerBackend, ledger_location: str) -> None:
    record(ledger, "v1", "v1")
    ledger.close()
    with raw(ledger_location) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError) as caught:
        open_ledger(ledger_location)
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    assert one_line_naming(message, ledger_location)
    assert f"schema version 99, newer than this rollout understands ({L.SCHEMA_VERSION})" in message
    assert "upgrade rollout" in message
    with raw(ledger_location) as conn:
        assert conn.one("SELECT value FROM meta WHERE key = 'schema_version'") == "99", "left as it was"


def test_a_schema_version_that_is_not_a_number_is_a_one_line_ledger_error(ledger: LedgerBackend,
                                                                         ledger_location: str) -> None:
    # A damaged ledger is named with what to do, never a traceback (PostgreSQL's counterpart of
    # the corrupted SQLite file below).
    ledger.close()
    with raw(ledger_location) as conn:
        conn.execute("UPDATE meta SET value = 'two' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError) as caught:
        open_ledger(ledger_location)
    assert caught.value.exit_code == EXIT_USAGE
    assert one_line_naming(str(caught.value), ledger_location)
    assert "'two'" in str(caught.value) and "restore it from a backup" in str(caught.value)


def test_a_database_with_tables_but_no_rollout_schema_is_refused_and_left_alone(ledger_location: str) -> None:
    # Pointed at someone else's database (with an `entries` table of its own), rollout refuses
    # rather than adding its tables and triggers next to theirs.
    if not is_postgres(ledger_location):
        Path(ledger_location).parent.mkdir(mode=0o700)
    with raw(ledger_location) as conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, what TEXT)")
        conn.execute("INSERT INTO entries (id, what) VALUES (1, 'theirs')")
    with pytest.raises(LedgerError) as caught:
        open_ledger(ledger_location)
    assert caught.value.exit_code == EXIT_USAGE
    assert one_line_naming(str(caught.value), ledger_location)
    assert "schema version" in str(caught.value)
    with raw(ledger_location) as conn:
        assert not conn.has_table("meta") and not conn.has_table("events") and not conn.has_table("locks")
        assert conn.execute("SELECT id, what FROM entries") == [(1, "theirs")]


def test_corrupted_file_is_a_ledger_error(tmp_path: Path) -> None:
    # SQLite only: a damaged file (PostgreSQL counterpart: the garbled schema version above).
    path = tmp_path / "ledger.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert caught.value.exit_code == EXIT_USAGE
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unwritable_directory_is_a_ledger_error(tmp_path: Path) -> None:
    # SQLite only: paths. PostgreSQL counterpart (test_ledger_postgres): a role without CREATE.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(blocker / "ledger.db")


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY, sqlite3.SQLITE_BUSY_SNAPSHOT,
                                  sqlite3.SQLITE_BUSY_TIMEOUT, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_LOCKED_SHAREDCACHE])
def test_every_kind_of_busy_is_busy_not_damage(code: int) -> None:
    # SQLite only: its result codes (PostgreSQL has no busy answer: a write waits for its row).
    # Another process recovering the WAL after a crash answers BUSY_RECOVERY: a healthy ledger
    # must not be reported as unreadable ("restore it from a backup").
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code
    assert L._is_busy(error)
    error.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    assert not L._is_busy(error)


# -- one interface: every caller goes through LedgerBackend ------------------------------------

ROLLOUT = Path(L.__file__).parent


def test_each_backend_implements_every_operation_of_the_interface(ledger: LedgerBackend,
                                                                  ledger_location: str) -> None:
    # open_ledger picks the backend by the location's form; every operation the interface
    # declares is that class's own (not the Protocol's empty stub), takes the same parameters,
    # and is documented (shapes, units, errors).
    backend = type(ledger)
    if is_postgres(ledger_location):
        import psycopg

        from rollout.ledger_postgres import PostgresLedger

        assert backend is PostgresLedger and ledger.database_errors == (psycopg.Error,)
    else:
        assert backend is L.SqliteLedger and ledger.database_errors == (sqlite3.Error,)
    for name in interface_names() - {"database_errors"}:
        # The backend's own, or shared by both SQL backends (rollout.ledger.SqlReads).
        declared = getattr(L.LedgerBackend, name)
        implemented = next((cls.__dict__[name] for cls in backend.__mro__
                            if cls is not L.LedgerBackend and name in cls.__dict__), None)
        assert implemented is not None, f"{backend.__name__} does not implement {name}"
        assert list(inspect.signature(implemented).parameters) == list(inspect.signature(declared).parameters), name
        assert inspect.getdoc(declared), f"LedgerBackend.{name} has no docstring"
    assert L.Ledger is L.SqliteLedger, "callers construct Ledger(path)"
    for public in (L.LedgerBackend, L.SqliteLedger, L.Entry, L.NewEntry, L.TargetRow, L.Lease, L.PushedBuild,
                   L.open_ledger, L.now_iso, L.default_actor, backend):
        assert inspect.getdoc(public), f"{public.__name__} has no docstring"
    assert "wall-clock" in (inspect.getdoc(L.Lease) or "") and "monotonic" in (inspect.getdoc(L.Lease) or "")


def _reaches_under_the_ledger(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in ("sqlite3", "sqlite_utils")]
        elif isinstance(node, ast.Attribute):
            owner = ast.unparse(node.value)
            if node.attr in ("db", "execute", "executemany", "executescript") or (
                    node.attr.startswith("_") and not node.attr.startswith("__") and "ledger" in owner.lower()):
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


def test_no_module_outside_the_ledger_runs_sql_or_calls_its_private_methods() -> None:
    offenders = {}
    for module in sorted(ROLLOUT.rglob("*.py")):
        if module.name.startswith("ledger"):
            continue  # the ledger module and its backends
        found = _reaches_under_the_ledger(ast.parse(module.read_text(encoding="utf-8")))
        if found:
            offenders[str(module.relative_to(ROLLOUT))] = found
    assert offenders == {}


def test_build_records_round_trip_through_the_interface(ledger: LedgerBackend) -> None:
    from rollout import rebuild

    only = InterfaceOnly(ledger)
    first = L.PushedBuild("web", "reg.lan/web", "20240101.1", fake_digest("b1"), "key-1", {"busybox": fake_digest("base")},
                          at="", deploy=True)
    second = L.PushedBuild("web", "reg.lan/web", "20240101.2", fake_digest("b2"), "key-2", {}, at="", deploy=False)
    rebuild.record_push(only, first)  # type: ignore[arg-type]
    only.record_build(L.PushedBuild("api", "reg.lan/api", "1", fake_digest("api"), "key-1", {}, at="", deploy=True))
    only.record_build(second)
    builds = rebuild.pushed_builds(only, "web")  # type: ignore[arg-type]
    assert [(b.tag, b.base_digests, b.deploy) for b in builds] == [
        ("20240101.1", {"busybox": fake_digest("base")}, True), ("20240101.2", {}, False)]
    assert all(b.at.endswith("+00:00") for b in builds), "at is the recorded event's ISO 8601 UTC time"
    assert builds[1].image == f"reg.lan/web:20240101.2@{fake_digest('b2')}"
    assert rebuild.last_build_key(only, "web") == ("key-2", {})  # type: ignore[arg-type]

    older = record(ledger, "20240101.1", "b1", status=L.FAILED, kind=L.REBUILD, build_key="key-1",
                   base_digests={"busybox": fake_digest("base")})
    newer = record(ledger, "20240101.3", "b3", status=L.HEALTHY, kind=L.REBUILD, build_key="key-1")
    record(ledger, "20240101.4", "b4", kind=L.REBUILD, build_key="key-3")
    record(ledger, "v9", "deploy", status=L.HEALTHY)
    assert [e.id for e in only.rebuilds("web", "key-1")] == [newer.id, older.id]
    assert rebuild.rebuild_entries(only, "web", "key-1") == [newer, older]  # type: ignore[arg-type]
    assert [e.tag for e in only.rebuilds("web", limit=1)] == ["20240101.4"]
    assert only.build_key_count("web") == 2 and only.build_key_count("api") == 0
    # Without a pushed build, the last rebuild entry names the key (base digests {} when none recorded).
    assert rebuild.last_build_key(only, "nobody") == (None, {})  # type: ignore[arg-type]
    decision = rebuild.decide(only, "web", "key-1")  # type: ignore[arg-type]
    assert (decision.action, decision.entry, decision.build) == (rebuild.DEPLOY_EXISTING, newer, builds[0])


def test_leases_are_taken_renewed_and_released_through_the_interface(ledger: LedgerBackend,
                                                                     ledger_location: str) -> None:
    only = InterfaceOnly(ledger)
    # The test server runs on this machine: its clock and ours agree to well within a second.
    assert abs(only.now() - time.time()) < 1, "now() is wall-clock epoch seconds"
    before = only.now()
    lease = only.take_lease("web", 30.0)
    assert lease is not None and (lease.app, lease.holder, lease.pid) == ("web", L.default_actor(), os.getpid())
    assert before + 30.0 <= lease.expires_at <= only.now() + 30.0, "expires_at is the ledger's clock + lease_seconds"
    assert only.take_lease("web", 30.0) is None, "a live holder keeps its lease"
    assert only.leases() == [lease] and only.leases("api") == []
    assert only.renew_lease(lease, 60.0)
    assert only.leases("web")[0].expires_at >= before + 60.0
    only.release_lease(lease)
    assert only.leases() == [] and not only.renew_lease(lease, 60.0)

    mine = only.take_lease("web", 30.0)
    assert mine is not None
    only.guard_writes(mine)
    only.event(None, "guarded write")  # still ours: allowed
    other = only.reopen()  # `rollout lock release web` from another process
    try:
        assert other.force_release("web") == mine and other.force_release("web") is None
    finally:
        other.close()
    with pytest.raises(LeaseLost, match="another rollout took over the lock on web"):
        only.event(None, "too late")
    with pytest.raises(LeaseLost):
        only.check_guard()
    only.guard_writes(None)
    only.event(None, "unguarded write")
    with raw(ledger_location) as conn:
        events = [e for (e,) in conn.execute("SELECT event FROM events WHERE entry_id IS NULL ORDER BY id")]
    assert events == ["guarded write", "lock:released-by-hand", "unguarded write"]


KILLED_AT_A_LEDGER_STEP = """
import sys
from rollout import faults
from rollout.ledger import open_ledger
ledger = open_ledger(sys.argv[1])
for n in (1, 2, 3):
    ledger.event(None, "step")
    print(n, flush=True)
faults.kill_point("docker:created")
print("survived", flush=True)
"""


@pytest.mark.parametrize("kill_at, printed, recorded", [
    ("step#2", ["1"], 2),  # killed right after the 2nd step was written
    ("docker:created#1", ["1", "2", "3"], 3),
    ("", ["1", "2", "3", "survived"], 3),  # unset: the hooks do nothing
])
def test_a_fault_hook_kills_the_process_right_after_the_named_step(ledger_location: str, kill_at: str,
                                                                   printed: list[str], recorded: int) -> None:
    env = {**os.environ, "ROLLOUT_TEST_KILL_AT": kill_at}
    done = subprocess.run([sys.executable, "-c", KILLED_AT_A_LEDGER_STEP, ledger_location], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == (-signal.SIGKILL if kill_at else 0), done.stderr
    assert done.stdout.split() == printed
    with raw(ledger_location) as conn:
        assert conn.one("SELECT count(*) FROM events WHERE event = 'step'") == recorded
    assert not hasattr(L, "kill_point"), "the test hook lives in rollout.faults, not in the ledger"
