"""`rollout ledger copy --to DEST` (issue 13, item 5) on real ledgers: SQLite files and
databases on the test bed's PostgreSQL server, in both directions and round trip.

The command runs as a user runs it (support.cli); the source is what the environment selects
($ROLLOUT_LEDGER or $ROLLOUT_LEDGER_URL), as it would be on a CI runner. What a user would
notice is checked: the history reads the same on both ends (`rollout history --json`), the
copy's next entry gets the next id, a finished entry stays immutable, a refused copy writes
nothing, and the password never shows.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout import ledger as L
from rollout.errors import EXIT_INTERNAL, EXIT_LOCKED, EXIT_UNREACHABLE, EXIT_USAGE
from rollout.ledger_copy import CopyNotVerified, Fingerprint, SourceBusy, copy
from support import pg
from support.cli import run_rollout
from support.errors import one_line_error
from support.ports import free_port

DIGEST = "sha256:" + "0" * 63


def digest(n: int) -> str:
    return DIGEST + str(n % 10)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


def location(kind: str, tmp_path: Path, stack: ExitStack, name: str) -> str:
    """A new, empty place for a ledger: a file path under tmp_path, or a fresh PostgreSQL database URL."""
    if kind == "sqlite":
        return str(tmp_path / name / "ledger.db")
    return stack.enter_context(pg.fresh_database())


def env_for(source: str) -> dict[str, str]:
    """The environment that makes `rollout` use the ledger at `source` (no rollout.toml)."""
    if source.startswith("postgresql://"):
        return {"ROLLOUT_LEDGER_URL": source, "ROLLOUT_LEDGER": ""}
    return {"ROLLOUT_LEDGER": source, "ROLLOUT_LEDGER_URL": ""}


def seed(where: str, *, deploys: int = 3) -> None:
    """A history with every kind of row: deploys (healthy and failed, a digest-only one), an
    automatic revert, a rebuild with build key and base digests, target rows, a pushed build
    and a hand-released lock (ledger events without an entry), non-ASCII text."""
    ledger = L.open_ledger(where)
    try:
        with ledger.transaction():
            good = None
            for n in range(deploys):
                entry = ledger.record(L.NewEntry("web", "reg.lan/web", f"1.0.{n}", digest(n), previous_id=good,
                                                 reason="déploiement ✓" if n == 0 else None, actor="ci@runner-a"))
                ledger.set_target(entry.id, "web-1", outcome="applied", image_before="reg.lan/web@old",
                                  image_after=entry.image)
                ledger.set_target(entry.id, "web-1", outcome="healthy")
                ledger.set_status(entry.id, L.HEALTHY)
                good = entry.id
            bad = ledger.record(L.NewEntry("web", "reg.lan/web", None, digest(7), previous_id=good))
            ledger.set_target(bad.id, "web-1", outcome="failed", detail="exited with 1")
            ledger.set_status(bad.id, L.FAILED, error="web-1: exited with 1")
            back = ledger.record(L.NewEntry("web", "reg.lan/web", "1.0.0", digest(0), kind=L.REVERT,
                                            previous_id=bad.id, reverts_to=good))
            ledger.set_status(back.id, L.HEALTHY)
            rebuilt = ledger.record(L.NewEntry("api", "reg.lan/api", "20240101.1", digest(5), kind=L.REBUILD,
                                               build_key="key-1", base_digests={"busybox": digest(4)}))
            ledger.set_status(rebuilt.id, L.INTERRUPTED, error="interrupted by SIGTERM")
            ledger.record_build(L.PushedBuild("api", "reg.lan/api", "20240101.1", digest(5), "key-1",
                                              {"busybox": digest(4)}, at="", deploy=True))
        lease = ledger.take_lease("api", 30)
        assert lease is not None
        ledger.force_release("api")
    finally:
        ledger.close()


def rows_of(where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every row the ledger at `where` holds (its dump), for comparing two ledgers."""
    ledger = L.open_ledger(where)
    try:
        return list(ledger.dump())
    finally:
        ledger.close()


def rollout(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`rollout ARGS` on the ledger at `source`, run where no rollout.toml is (the environment selects it)."""
    with tempfile.TemporaryDirectory() as nowhere:
        return run_rollout(*args, env=env_for(source), cwd=Path(nowhere))


def history_json(where: str) -> Any:
    result = rollout(where, "history", "-n", "2000", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def copy_json(source: str, destination: str) -> dict[str, Any]:
    result = rollout(source, "ledger", "copy", "--to", destination, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert pg.PASSWORD not in result.stdout
    return json.loads(result.stdout)


# -- the happy path -------------------------------------------------------------------------------------


def test_sqlite_to_postgres_to_sqlite_keeps_every_row_and_the_hash(tmp_path: Path, stack: ExitStack) -> None:
    first, server, back = (location("sqlite", tmp_path, stack, "a"), location("postgres", tmp_path, stack, ""),
                           location("sqlite", tmp_path, stack, "b"))
    seed(first, deploys=1200)  # over one load batch (1,000 rows) of entries, targets and events

    there = copy_json(first, server)
    rows = {"entries": 1203, "targets": 1201, "events": 1200 * 4 + 3 + 2 + 2 + 1 + 1}
    assert there["source"]["rows"] == there["destination"]["rows"] == rows
    assert there["source"]["sha256"] == there["destination"]["sha256"]
    assert there["source"]["ledger"] == first and there["leases_copied"] == 0
    assert there["destination"]["ledger"] == server.replace(pg.PASSWORD, "***")

    home = copy_json(server, back)
    assert home["source"]["sha256"] == home["destination"]["sha256"] == there["source"]["sha256"]
    assert rows_of(back) == rows_of(server) == rows_of(first)
    # What a user reads is the same everywhere: same ids, outcomes, timestamps, reasons.
    assert history_json(back) == history_json(server) == history_json(first)


@pytest.mark.parametrize("source_kind, destination_kind",
                         [("sqlite", "postgres"), ("postgres", "sqlite"), ("postgres", "postgres"),
                          ("sqlite", "sqlite")])
def test_the_copy_is_a_working_ledger_that_continues_after_the_copied_ids(
        tmp_path: Path, stack: ExitStack, source_kind: str, destination_kind: str) -> None:
    source = location(source_kind, tmp_path, stack, "source")
    destination = location(destination_kind, tmp_path, stack, "copy")
    seed(source)
    result = rollout(source, "ledger", "copy", "--to", destination)
    assert result.returncode == 0, result.stderr
    hashes = [word for word in result.stdout.split() if word.startswith("sha256:")]
    assert len(hashes) == 2 and hashes[0] == hashes[1], result.stdout
    assert pg.PASSWORD not in result.stdout + result.stderr

    copied = L.open_ledger(destination)
    try:
        assert copied.leases() == [], "a copy starts with every app unlocked"
        entries = copied.history()
        events = sum(len(copied.events(e.id)) for e in entries)
        newest_event = max(row["id"] for table, row in copied.dump() if table == "events")
        # The next entry, target row and event get new ids after the copied ones (sequences moved).
        new = copied.record(L.NewEntry("web", "reg.lan/web", "2.0", digest(9)))
        assert new.id == entries[0].id + 1
        copied.set_target(new.id, "web-1", outcome="applied")
        copied.set_status(new.id, L.HEALTHY)
        assert copied.current("web") == copied.get(new.id)
        assert [row["id"] for table, row in copied.dump() if table == "events"][-3:] == [
            newest_event + 1, newest_event + 2, newest_event + 3]
        assert sum(len(copied.events(e.id)) for e in copied.history()) == events + 3
        # Copied rows are as immutable as recorded ones: the triggers were on during the load.
        finished = entries[-1]
        assert finished.status == L.HEALTHY
        with pytest.raises(copied.database_errors):
            copied.set_status(finished.id, L.FAILED, error="rewritten")
        for sql in (f"DELETE FROM entries WHERE id = {finished.id}", "DELETE FROM events",
                    f"UPDATE entries SET digest = 'sha256:{'f' * 64}' WHERE id = {finished.id}"):
            with pytest.raises(copied.database_errors):
                with copied.transaction() as conn:
                    conn.execute(sql)  # type: ignore[attr-defined]
        assert copied.get(finished.id) == finished
    finally:
        copied.close()


# -- refusals: one line, documented exit code, nothing written ---------------------------------------------


@pytest.mark.parametrize("destination_kind", ["sqlite", "postgres"])
def test_a_destination_that_holds_anything_is_refused(tmp_path: Path, stack: ExitStack, destination_kind: str) -> None:
    source = location("sqlite", tmp_path, stack, "source")
    destination = location(destination_kind, tmp_path, stack, "copy")
    seed(source)
    seed(destination, deploys=1)
    before = rows_of(destination)
    result = rollout(source, "ledger", "copy", "--to", destination)
    line = one_line_error(result, EXIT_USAGE)
    assert "is not empty" in line and "entries" in line and pg.PASSWORD not in result.stderr
    assert rows_of(destination) == before


@pytest.mark.parametrize("destination_kind", ["sqlite", "postgres"])
def test_a_destination_with_only_a_lease_or_an_event_is_not_empty(tmp_path: Path, stack: ExitStack,
                                                                   destination_kind: str) -> None:
    source = location("sqlite", tmp_path, stack, "source")
    seed(source)
    leased, noted = (location(destination_kind, tmp_path, stack, name) for name in ("leased", "noted"))
    ledger = L.open_ledger(leased)
    ledger.take_lease("web", 600)  # a rollout already pointed at the new ledger
    ledger.close()
    ledger = L.open_ledger(noted)
    ledger.event(None, "lock:released-by-hand", {"app": "web"})
    ledger.close()
    for where, held in ((leased, "locks"), (noted, "events")):
        line = one_line_error(rollout(source, "ledger", "copy", "--to", where), EXIT_USAGE)
        assert f"holds {held}" in line
        assert len(rows_of(where)) == (1 if held == "events" else 0), "nothing was written"


@pytest.mark.parametrize("source_kind", ["sqlite", "postgres"])
def test_a_source_in_the_middle_of_a_rollout_is_refused_naming_it(tmp_path: Path, stack: ExitStack,
                                                                  source_kind: str) -> None:
    source = location(source_kind, tmp_path, stack, "source")
    destination = location("sqlite", tmp_path, stack, "copy")
    seed(source)
    ledger = L.open_ledger(source)
    try:
        lease = ledger.take_lease("web", 600)
        assert lease is not None
        result = rollout(source, "ledger", "copy", "--to", destination)
        line = one_line_error(result, EXIT_LOCKED)
        assert f"web is locked by {lease.holder} (pid {lease.pid}" in line and "rollout lock release web" in line
        ledger.release_lease(lease)

        # Cut short: no lease left, but an entry the next command must recover first.
        unfinished = ledger.record(L.NewEntry("web", "reg.lan/web", "9.9", digest(9)))
        ledger.set_status(unfinished.id, L.VERIFYING)
        line = one_line_error(rollout(source, "ledger", "copy", "--to", destination), EXIT_LOCKED)
        assert f"entry #{unfinished.id} of web is unfinished" in line and "rollout status web" in line
    finally:
        ledger.close()
    assert not Path(destination).exists(), "a refused source does not even create the destination"


def test_bad_destinations_are_refused_before_anything_is_opened(tmp_path: Path, stack: ExitStack) -> None:
    source = location("sqlite", tmp_path, stack, "source")
    seed(source)
    line = one_line_error(rollout(source, "ledger", "copy", "--to", "mysql://root:hunter2@db/ledger"), EXIT_USAGE)
    assert "mysql:// URL" in line and "hunter2" not in line
    line = one_line_error(rollout(source, "ledger", "copy", "--to", source), EXIT_USAGE)
    assert "is the configured ledger itself" in line
    missing = str(tmp_path / "nowhere" / "ledger.db")
    line = one_line_error(rollout(missing, "ledger", "copy", "--to", str(tmp_path / "copy.db")),
                          EXIT_USAGE)
    assert f"ledger {missing} does not exist" in line
    assert not Path(missing).exists() and not (tmp_path / "copy.db").exists()
    one_line_error(rollout(source, "ledger", "copy"), EXIT_USAGE)  # --to is required


def test_an_unreachable_server_exits_5_without_the_password(tmp_path: Path, stack: ExitStack) -> None:
    source = location("sqlite", tmp_path, stack, "source")
    seed(source)
    before = rows_of(source)
    nobody = f"postgresql://{pg.USER}:{pg.PASSWORD}@127.0.0.1:{free_port()}/ledger?connect_timeout=5"
    result = rollout(source, "ledger", "copy", "--to", nobody)
    line = one_line_error(result, EXIT_UNREACHABLE)
    assert "unreachable" in line and f"{pg.USER}:***@127.0.0.1" in line
    assert pg.PASSWORD not in result.stderr + result.stdout
    assert rows_of(source) == before
    result = rollout(nobody, "ledger", "copy", "--to", str(tmp_path / "copy.db"))
    assert pg.PASSWORD not in one_line_error(result, EXIT_UNREACHABLE)


# -- the checks inside one copy (through the interface, in this process) ------------------------------------


class Tampering:
    """A destination ledger whose load changes one value on the way: what a lossy driver would do."""

    def __init__(self, ledger: L.LedgerBackend) -> None:
        self.ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    def load(self, rows: Any) -> None:
        def changed() -> Iterator[tuple[str, dict[str, Any]]]:
            for table, row in rows:
                yield table, ({**row, "reason": "changed"} if table == "entries" and row["id"] == 2 else row)
        self.ledger.load(changed())


def test_a_copy_that_does_not_read_back_the_same_is_rolled_back(tmp_path: Path, ledger_location: str) -> None:
    source = str(tmp_path / "source.db")
    seed(source)
    opened, destination = L.open_ledger(source), L.open_ledger(ledger_location)
    try:
        with pytest.raises(CopyNotVerified) as refused:
            copy(opened, Tampering(destination))  # type: ignore[arg-type]
        assert refused.value.exit_code == EXIT_INTERNAL and "rolled back" in str(refused.value)
        assert list(destination.dump()) == []
        # Left empty, not broken: the next copy goes through and its ids start where the source's do.
        read, written = copy(opened, destination)
        assert read == written and read.rows["entries"] == 6
        assert destination.record(L.NewEntry("web", "reg.lan/web", "2.0", digest(9))).id == 7
    finally:
        opened.close()
        destination.close()


def test_an_entry_unfinished_in_the_snapshot_refuses_the_copy(tmp_path: Path, ledger_location: str) -> None:
    # A rollout that recorded its entry after the first check: the snapshot still sees it.
    seed(ledger_location)
    opened, destination = L.open_ledger(ledger_location), L.open_ledger(tmp_path / "copy.db")
    try:
        started = opened.record(L.NewEntry("web", "reg.lan/web", "3.0", digest(3)))
        with pytest.raises(SourceBusy, match=f"entry #{started.id} of web is unfinished"):
            copy(opened, destination)
        assert list(destination.dump()) == []
    finally:
        opened.close()
        destination.close()


def test_the_fingerprint_depends_on_every_value_and_on_order() -> None:
    rows = [("entries", {"id": 1, "reason": "a"}), ("entries", {"id": 2, "reason": None}),
            ("events", {"id": 1, "detail": "{}"})]

    def of(items: list[tuple[str, dict[str, Any]]]) -> Fingerprint:
        printed = Fingerprint()
        for table, row in items:
            printed.add(table, row)
        return printed

    assert of(rows) == of([(t, dict(reversed(list(r.items())))) for t, r in rows]), "column order does not matter"
    assert of(rows) != of([*rows[:1], ("entries", {"id": 2, "reason": ""}), rows[2]])
    assert of(rows).rows == {"entries": 2, "targets": 0, "events": 1}
    with pytest.raises(CopyNotVerified, match="out of order"):
        of([rows[1], rows[0]])
    with pytest.raises(CopyNotVerified, match="out of order"):
        of([rows[2], rows[0]])


@pytest.fixture
def operator_role() -> Iterator[tuple[str, str]]:
    """A login role of the test server that owns nothing (README, "Ledger backends": what operators
    should connect as): (name, password); dropped afterwards."""
    name, password = f"rollout_op_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with pg.admin() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        yield name, password
    finally:
        with pg.admin() as conn:
            conn.execute(f"DROP ROLE {name}")


def test_a_role_that_does_not_own_the_tables_works_but_cannot_unlock_history(
        operator_role: tuple[str, str], tmp_path: Path, stack: ExitStack) -> None:
    # operator_role first: fixtures are torn down in reverse, so the databases that grant it
    # something are dropped (stack) before the role is.
    import psycopg

    source = location("sqlite", tmp_path, stack, "source")
    seed(source)
    owned = location("postgres", tmp_path, stack, "")
    copy_json(source, owned)  # the owner (the role that created the tables) copies
    database = owned.rsplit("/", 1)[1]
    with psycopg.connect(host=str(pg.SOCKET_DIR), port=pg.PORT, user="postgres", dbname=database,
                         autocommit=True) as conn:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {operator_role[0]}")
    name, password = operator_role
    as_operator = f"postgresql://{name}:{password}@{pg.HOST}:{pg.PORT}/{database}"
    ledger = L.open_ledger(as_operator)
    try:
        # Everything a rollout does, with the README's grant...
        lease = ledger.take_lease("web", 30)
        assert lease is not None and ledger.renew_lease(lease, 30)
        entry = ledger.record(L.NewEntry("web", "reg.lan/web", "2.0", digest(2)))
        ledger.set_target(entry.id, "web-1", outcome="healthy", image_after=entry.image)
        ledger.set_status(entry.id, L.HEALTHY)
        ledger.release_lease(lease)
        assert ledger.current("web") == ledger.get(entry.id)
        # ...but not what would let it rewrite history: the triggers stay.
        for sql in ("DROP TRIGGER entries_no_delete ON entries", "ALTER TABLE events DISABLE TRIGGER ALL",
                    "TRUNCATE events", "DELETE FROM entries WHERE id = 1"):
            with pytest.raises(psycopg.Error):
                with ledger.transaction() as conn:
                    conn.execute(sql)  # type: ignore[attr-defined]
    finally:
        ledger.close()

    # A copy into a database as such a role cannot move the id sequences: refused, nothing written.
    empty = location("postgres", tmp_path, stack, "")
    L.open_ledger(empty).close()  # the owner creates the tables
    with psycopg.connect(host=str(pg.SOCKET_DIR), port=pg.PORT, user="postgres", dbname=empty.rsplit("/", 1)[1],
                         autocommit=True) as conn:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}")
    into = f"postgresql://{name}:{password}@{pg.HOST}:{pg.PORT}/{empty.rsplit('/', 1)[1]}"
    result = rollout(source, "ledger", "copy", "--to", into)
    line = one_line_error(result, EXIT_USAGE)
    assert "nothing was written" in line and "owns the ledger's tables" in line and password not in line
    assert rows_of(empty) == []
