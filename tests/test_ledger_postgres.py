"""What only the PostgreSQL ledger has, on the test bed's real server (a fresh database per test).

Everything both backends share (round trips, immutability through the ledger's and a plain
connection, a newer schema refused, a foreign `entries` table refused, ten openers of a new
ledger at once, migrations, leases) runs on both in test_ledger.py, test_lock.py and
test_migrations.py. Here: the triggers against the role that owns the tables (TRUNCATE too),
the lease judged by the server's clock whatever the client's says, the write guard under
PostgreSQL's isolation, the schema created in one transaction, privileges, libpq's conventions,
and the password kept out of every error.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from rollout import ledger as L
from rollout import ledger_postgres as LP
from rollout import lock
from rollout.errors import (EXIT_LOCKED, EXIT_UNREACHABLE, EXIT_USAGE, LeaseLost, LedgerBusy, LedgerError,
                            LedgerUnreachable, LockHeld)
from rollout.ledger import LedgerBackend, NewEntry, open_ledger
from support import pg
from support.cli import run_rollout
from support.fakes import IMAGE, fake_digest, plant
from support.raw_ledger import raw

HOUR = 3600.0


@pytest.fixture
def url() -> Iterator[str]:
    with pg.fresh_database() as location:
        yield location


@pytest.fixture
def ledger(url: str) -> Iterator[LedgerBackend]:
    opened = open_ledger(url)
    yield opened
    opened.close()


def database(url: str) -> str:
    """The database name of a test URL."""
    return url.rsplit("/", 1)[1]


def record(ledger: LedgerBackend, label: str, status: str | None = None) -> L.Entry:
    entry = ledger.record(NewEntry(app="web", repository=IMAGE, tag=label, digest=fake_digest(label),
                                   reason="launch", build_key="k1", base_digests={"busybox": fake_digest("base")}))
    for step in (L.APPLYING, L.VERIFYING, status) if status else ():
        ledger.set_status(entry.id, step)
    ledger.set_target(entry.id, "local", outcome="applied", image_after=entry.image)
    return ledger.get(entry.id)


def everything(url: str) -> tuple[object, ...]:
    with raw(url) as conn:
        return tuple(conn.execute(f"SELECT * FROM {table} ORDER BY id") for table in ("entries", "targets", "events"))


def skew_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's wall clock (time.time) off by `seconds`, as on a runner whose clock drifted."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)


# -- (a) immutability: the triggers refuse raw SQL from the role that owns the tables ----------

RECORDED = {  # every recorded field of an entry, and a new value for it
    "id": "id + 1000", "app": "'api'", "repository": "'evil.example/web'", "tag": "'v9'",
    "digest": "'sha256:' || md5(digest) || md5(digest)", "kind": "'revert'", "previous_id": "id",
    "reverts_to": "id", "actor": "'nobody@nowhere'", "reason": "'routine'", "created_at": "'2000-01-01T00:00:00+00:00'",
    "build_key": "'other-key'", "base_digests": "'{}'",
}
REFUSED = [
    *((f"UPDATE entries SET {field} = {value} WHERE id = ?", "what was deployed cannot be changed", f"update {field}")
      for field, value in RECORDED.items()),
    ("UPDATE entries SET status = 'failed' WHERE id = ?", "a finished entry keeps its outcome", "finished status"),
    ("UPDATE entries SET finished_at = NULL WHERE id = ?", "a finished entry keeps its outcome", "finished_at"),
    ("UPDATE entries SET error = 'never happened' WHERE id = ?", "a finished entry keeps its outcome", "finished error"),
    ("UPDATE events SET detail = '{}' WHERE entry_id = ?", "events are append-only", "update event"),
    ("DELETE FROM entries WHERE id = ?", "entries cannot be deleted", "delete entry"),
    ("DELETE FROM targets WHERE entry_id = ?", "target rows cannot be deleted", "delete targets"),
    ("DELETE FROM events WHERE entry_id = ?", "events are append-only", "delete events"),
    ("TRUNCATE entries CASCADE", "entries cannot be deleted", "truncate entries"),
    ("TRUNCATE targets", "target rows cannot be deleted", "truncate targets"),
    ("TRUNCATE events", "events are append-only", "truncate events"),
]


def test_rollout_s_role_owns_the_tables_and_cannot_switch_the_triggers_off_for_a_session(ledger: LedgerBackend,
                                                                                         url: str) -> None:
    # What the refusals below are worth: they hold against the very role rollout connects as,
    # and that role cannot skip triggers with session_replication_role (a superuser's right).
    with raw(url) as conn:
        assert conn.execute("SELECT DISTINCT tableowner = current_user FROM pg_tables"
                            " WHERE tablename IN ('entries', 'targets', 'events')") == [(True,)]
        with pytest.raises(conn.error, match="permission denied"):
            conn.execute("SET session_replication_role = replica")


@pytest.mark.parametrize("sql, refusal", [(sql, refusal) for sql, refusal, _ in REFUSED],
                         ids=[name for _, _, name in REFUSED])
def test_the_owner_role_cannot_rewrite_a_finished_entry_by_raw_sql(ledger: LedgerBackend, url: str, sql: str,
                                                                    refusal: str) -> None:
    entry = record(ledger, "v1", L.HEALTHY)
    before = everything(url)
    with raw(url) as conn, pytest.raises(conn.error, match=refusal):
        conn.execute(sql, [entry.id] if "?" in sql else [])
    assert everything(url) == before


@pytest.mark.parametrize("field", list(RECORDED))
def test_what_an_unfinished_entry_deployed_is_immutable_too(ledger: LedgerBackend, url: str, field: str) -> None:
    entry = record(ledger, "v1")
    before = everything(url)
    with raw(url) as conn, pytest.raises(conn.error, match="what was deployed cannot be changed"):
        conn.execute(f"UPDATE entries SET {field} = {RECORDED[field]} WHERE id = ?", [entry.id])
    assert everything(url) == before


def test_an_unfinished_entry_s_outcome_moves_forward_by_raw_sql_then_stays(ledger: LedgerBackend, url: str) -> None:
    entry = record(ledger, "v1")
    with raw(url) as conn:
        conn.execute("UPDATE entries SET status = 'applying' WHERE id = ?", [entry.id])
        conn.execute("UPDATE entries SET status = 'failed', error = 'killed', finished_at = 'now' WHERE id = ?",
                     [entry.id])
        with pytest.raises(conn.error, match="a finished entry keeps its outcome"):
            conn.execute("UPDATE entries SET status = 'healthy', error = NULL WHERE id = ?", [entry.id])
    done = ledger.get(entry.id)
    assert (done.status, done.error, done.digest) == (L.FAILED, "killed", fake_digest("v1"))


# -- (b) the lease is judged by the server's clock ------------------------------------------------

def test_a_client_an_hour_ahead_cannot_take_over_a_live_lease_from_another_host(
        ledger: LedgerBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    expires_at = ledger.now() + 60
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=4242, expires_at=expires_at)
    skew_clock(monkeypatch, HOUR)
    assert time.time() > expires_at, "by this client's clock the lease has expired"
    with pytest.raises(LockHeld, match="bob@elsewhere"):
        lock.acquire(ledger, "web", wait=0)
    assert [(held.holder, held.expires_at) for held in lock.read(ledger, "web")] == [("bob@elsewhere", expires_at)]
    # A lease this client takes lasts lease_seconds on the server's clock, not on its own.
    taken = lock.acquire(ledger, "api", lease_seconds=30)
    assert abs(taken.expires_at - (ledger.now() + 30)) < 5 and taken.expires_at < time.time()


def test_a_lease_expired_by_the_server_s_clock_is_taken_over_by_a_client_an_hour_behind(
        ledger: LedgerBackend, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expires_at = ledger.now() - 1
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=4242, expires_at=expires_at)
    skew_clock(monkeypatch, -HOUR)
    assert time.time() < expires_at, "by this client's clock the lease is still live"
    lease = lock.acquire(ledger, "web", wait=0)
    assert lock.read(ledger, "web") == [lease] and lease.holder == L.default_actor()
    with raw(url) as conn:
        assert conn.execute("SELECT event, detail FROM events WHERE entry_id IS NULL") == [
            ("lock:taken-over", json.dumps({"app": "web", "from": "bob@elsewhere", "pid": 4242}, sort_keys=True))]


# -- (c) the write guard under PostgreSQL's isolation ----------------------------------------------

TAKER = """
import sys
from rollout.ledger import open_ledger
ledger = open_ledger(sys.argv[1])
lease = ledger.take_lease("web", 60.0)
print(lease.pid if lease else "refused", flush=True)
"""


def wait_for_a_lock_wait(url: str, timeout: float = 30.0) -> None:
    """Until a session of the test database waits on a lock (pg_stat_activity), or fail."""
    deadline = time.monotonic() + timeout
    with raw(url) as conn:
        while not conn.one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND wait_event_type = 'Lock'"):
            assert time.monotonic() < deadline, "the take-over never waited on the guarded write"
            time.sleep(0.02)


def test_a_take_over_waits_for_a_guarded_write_then_the_guard_refuses_the_next(ledger: LedgerBackend,
                                                                               url: str) -> None:
    lease = ledger.take_lease("web", 0.2)
    assert lease is not None
    ledger.guard_writes(lease)
    while ledger.now() <= lease.expires_at:  # expired by the server's clock: another process may take it over
        time.sleep(0.02)
    with ledger.transaction():
        ledger.event(None, "guarded write")  # the guard has locked our lease row FOR SHARE
        taker = subprocess.Popen([sys.executable, "-c", TAKER, url], stdout=subprocess.PIPE, text=True)
        try:
            wait_for_a_lock_wait(url)
            assert taker.poll() is None, "the take-over slipped in while a guarded write was in progress"
            ledger.event(None, "second guarded write")
        except BaseException:
            taker.kill()
            raise
    out, _ = taker.communicate(timeout=30)
    assert taker.returncode == 0 and out.strip() == str(taker.pid), "the taker got the lease once we committed"
    with pytest.raises(LeaseLost, match="another rollout took over the lock on web"):
        ledger.event(None, "too late")
    with pytest.raises(LeaseLost):
        ledger.record(NewEntry(app="web", repository=IMAGE, tag="late", digest=fake_digest("late")))
    ledger.guard_writes(None)
    with raw(url) as conn:
        assert [event for (event,) in conn.execute("SELECT event FROM events ORDER BY id")] == [
            "guarded write", "second guarded write", "lock:taken-over"]
        assert conn.one("SELECT count(*) FROM entries") == 0
    assert [held.pid for held in ledger.leases("web")] == [taker.pid]


# -- (d) the schema ---------------------------------------------------------------------------------

def test_creating_the_schema_is_one_transaction(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The triggers come after the tables: failing there must not leave tables without them.
    monkeypatch.setattr(LP, "_TRIGGERS", LP._TRIGGERS + "\nSELECT rollout_no_such_function();")
    with pytest.raises(LedgerError) as caught:
        open_ledger(url)
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in str(caught.value)
    assert "cannot be set up" in str(caught.value) and pg.PASSWORD not in str(caught.value)
    with raw(url) as conn:
        assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
        assert conn.one("SELECT count(*) FROM pg_proc WHERE proname = 'rollout_refuse'") == 0
    monkeypatch.undo()
    open_ledger(url).close()
    with raw(url) as conn:
        assert conn.one("SELECT value FROM meta WHERE key = 'schema_version'") == str(L.SCHEMA_VERSION)


@pytest.fixture
def other_role() -> Iterator[tuple[str, str]]:
    """A login role that is not rollout's (name, password); dropped afterwards."""
    name, password = f"other_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with pg.admin() as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        yield name, password
    finally:
        with pg.admin() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {name}")


def test_another_role_cannot_read_or_write_the_ledger(ledger: LedgerBackend, url: str,
                                                      other_role: tuple[str, str]) -> None:
    # The counterpart of the SQLite file's mode 0600: rollout grants nothing to anyone.
    record(ledger, "v1", L.HEALTHY)
    name, password = other_role
    import psycopg

    with psycopg.connect(f"postgresql://{name}:{password}@{pg.HOST}:{pg.PORT}/{database(url)}",
                         autocommit=True) as conn:
        for sql in ("SELECT * FROM entries", "SELECT * FROM events", "SELECT * FROM locks",
                    "INSERT INTO locks VALUES ('web', 'x', 'y', 1, 'now', 0, NULL)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_a_role_without_create_gets_a_one_line_error_and_nothing_is_created() -> None:
    # The counterpart of an unwritable SQLite directory: a database rollout's role may connect
    # to but not create tables in (PostgreSQL 15: the public schema is its owner's).
    name = "rollout_nocreate_" + uuid.uuid4().hex[:12]
    with pg.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with pytest.raises(LedgerError) as caught:
            open_ledger(pg.url(name))
        message = str(caught.value)
        assert caught.value.exit_code == EXIT_USAGE and "\n" not in message and pg.PASSWORD not in message
        assert "permission denied" in message and "the role needs CREATE" in message
        with raw(pg.url(name)) as conn:
            assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
    finally:
        pg.drop_database(name)


# -- (e) libpq's conventions -------------------------------------------------------------------------

def writes_and_reads(location: str, url: str) -> None:
    """Open `location`, record an entry, and find it through the test's own URL."""
    opened = open_ledger(location)
    try:
        entry = record(opened, "v1", L.HEALTHY)
    finally:
        opened.close()
    with raw(url) as conn:
        assert conn.execute("SELECT id, status FROM entries") == [(entry.id, L.HEALTHY)]


def no_password_anywhere(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for name in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))


def test_pg_environment_variables_fill_in_a_bare_url(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_password_anywhere(monkeypatch, tmp_path)
    monkeypatch.setenv("PGHOST", pg.HOST)
    monkeypatch.setenv("PGPORT", str(pg.PORT))
    monkeypatch.setenv("PGUSER", pg.USER)
    monkeypatch.setenv("PGPASSWORD", pg.PASSWORD)
    writes_and_reads(f"postgresql:///{database(url)}", url)


def test_a_pgpass_file_supplies_the_password(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_password_anywhere(monkeypatch, tmp_path)
    bare = pg.url(database(url), password=False)
    with pytest.raises(LedgerError, match="refused the login .*no password supplied") as refused:
        open_ledger(bare)  # without ~/.pgpass the server wants a password: bad input, not an outage
    assert refused.value.exit_code == EXIT_USAGE
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text(f"{pg.HOST}:{pg.PORT}:*:{pg.USER}:{pg.PASSWORD}\n")
    pgpass.chmod(0o600)
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    writes_and_reads(bare, url)


def test_sslmode_require_against_a_server_without_ssl_is_one_line_naming_the_cause(url: str) -> None:
    with pytest.raises(LedgerError) as caught:
        open_ledger(url + "?sslmode=require")
    message = str(caught.value)
    # A setting the server cannot meet: retrying cannot help, so exit 2, not 5.
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in message
    assert "SSL" in message and "nothing was changed" in message
    assert pg.PASSWORD not in message and "postgresql://rollout:***@" in message


# -- (f) the password never appears in an error ---------------------------------------------------

SECRET = "Sup3r-Secret-Pw"  # a wrong password: what a typo in a real one would show
RIGHT = pg.PASSWORD
LEAKS = {  # name: (URL, the password in it, what the error names instead, exit code)
    "bad password in the URL": (f"postgresql://{pg.USER}:{SECRET}@{pg.HOST}:{pg.PORT}/{{db}}", SECRET,
                                "password authentication failed", EXIT_USAGE),
    "bad password as ?password=": (f"postgresql://{pg.USER}@{pg.HOST}:{pg.PORT}/{{db}}?password={SECRET}", SECRET,
                                   "password authentication failed", EXIT_USAGE),
    "wrong port": (f"postgresql://{pg.USER}:{RIGHT}@{pg.HOST}:1/{{db}}", RIGHT, "Connection refused", EXIT_UNREACHABLE),
    "wrong port, ?password=": (f"postgresql://{pg.USER}@{pg.HOST}:1/{{db}}?sslmode=disable&password={RIGHT}", RIGHT,
                               "Connection refused", EXIT_UNREACHABLE),
    "no such database": (f"postgresql://{pg.USER}:{RIGHT}@{pg.HOST}:{pg.PORT}/no_such_db_here", RIGHT,
                         'database "no_such_db_here" does not exist', EXIT_USAGE),
    "port not a number": (f"postgresql://{pg.USER}:{RIGHT}@{pg.HOST}:notaport/{{db}}", RIGHT,
                          "its port is not a number", EXIT_USAGE),
    # Generated passwords hold characters a URL does not allow unencoded: libpq's own messages
    # would quote them, and a naive mask stops at the first '?' or '/'.
    "password with ?": (f"postgresql://{pg.USER}:Sekr3t?x@{pg.HOST}:{pg.PORT}/{{db}}", "Sekr3t?x",
                        "password authentication failed", EXIT_USAGE),
    "password with /": (f"postgresql://{pg.USER}:Sekr3t/x@{pg.HOST}:{pg.PORT}/{{db}}", "Sekr3t",
                        "its port is not a number", EXIT_USAGE),
    "password with a bad %-escape": (f"postgresql://{pg.USER}:Sekr3t%zz@{pg.HOST}:{pg.PORT}/{{db}}", "Sekr3t",
                                     "is not a valid PostgreSQL URL", EXIT_USAGE),
    "password with a space": (f"postgresql://{pg.USER}:Sekr3t x@{pg.HOST}:{pg.PORT}/{{db}}", "Sekr3t",
                              "is not a valid PostgreSQL URL", EXIT_USAGE),
    "password with @": (f"postgresql://{pg.USER}:abc@Sekr3t@{pg.HOST}:{pg.PORT}/{{db}}", "Sekr3t", "", None),
    "sslpassword": (f"postgresql://{pg.USER}@{pg.HOST}:1/{{db}}?sslpassword=Sekr3t", "Sekr3t",
                    "Connection refused", EXIT_UNREACHABLE),
}


@pytest.mark.parametrize("case", list(LEAKS))
def test_the_password_never_appears_in_an_error(url: str, tmp_path: Path, case: str) -> None:
    template, password, named, code = LEAKS[case]
    location = template.replace("{db}", database(url))
    with pytest.raises((LedgerError, LedgerUnreachable)) as caught:
        open_ledger(location)
    message = str(caught.value)
    assert password not in message and "\n" not in message and named in message
    assert "***" in message
    if code is None:  # where libpq's parse of the URL lands is its business: refused, not leaked
        code = caught.value.exit_code
    assert caught.value.exit_code == code
    # The same through the command a user runs: stdout, stderr, the exit code.
    result = run_rollout("history", env={"ROLLOUT_LEDGER_URL": location}, cwd=tmp_path)
    assert result.returncode == code
    assert password not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("rollout: error: ") and named in line


# -- (g) `rollout lock status --json` on a shared ledger ---------------------------------------------

SKEWED_CLOCK = """
import os, time
_real = time.time
time.time = lambda: _real() + float(os.environ["ROLLOUT_TEST_CLOCK_SKEW"])
"""


@pytest.mark.parametrize("skew", [0.0, HOUR, -HOUR], ids=["same clock", "client an hour ahead", "client an hour behind"])
def test_lock_status_json_shows_leases_stale_by_the_server_s_clock(ledger: LedgerBackend, url: str, tmp_path: Path,
                                                                   skew: float) -> None:
    now = ledger.now()
    plant(ledger, "api", holder="carol@ci-2", host="ci-2.invalid", pid=77, expires_at=now - 1)
    plant(ledger, "web", holder="bob@ci-1", host="ci-1.invalid", pid=4242, expires_at=now + 600)
    # The whole `rollout` process runs with its wall clock off by `skew` (Python's sitecustomize hook).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SKEWED_CLOCK)
    env = {"ROLLOUT_LEDGER_URL": url, "PYTHONPATH": str(hook), "ROLLOUT_TEST_CLOCK_SKEW": str(skew)}
    result = run_rollout("lock", "status", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [(s["app"], s["holder"], s["host"], s["pid"], s["stale"]) for s in shown] == [
        ("api", "carol@ci-2", "ci-2.invalid", 77, True), ("web", "bob@ci-1", "ci-1.invalid", 4242, False)]
    assert shown[1]["expires_at"] == pytest.approx(now + 600)
    assert pg.PASSWORD not in result.stdout + result.stderr
    clock = run_rollout("lock", "status", env=env, cwd=tmp_path)  # the table says the same
    assert [line.split()[-1] for line in clock.stdout.splitlines()[1:]] == ["stale", "held"]


def test_the_skewed_clock_hook_really_moves_the_child_s_clock(tmp_path: Path) -> None:
    # The hook the lock-status test relies on: without it, that test would prove nothing.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SKEWED_CLOCK)
    env = {**os.environ, "PYTHONPATH": str(hook), "ROLLOUT_TEST_CLOCK_SKEW": str(HOUR)}
    done = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    assert float(done.stdout) - time.time() == pytest.approx(HOUR, abs=60)


# -- what libpq would only find when connecting, and rows held by a stuck session ---------------------


def test_a_connect_timeout_that_is_not_a_number_is_bad_input(url: str) -> None:
    with pytest.raises(LedgerError, match=r"its connect_timeout is not a number") as caught:
        open_ledger(url + "?connect_timeout=soon")
    assert caught.value.exit_code == EXIT_USAGE and pg.PASSWORD not in str(caught.value)


def test_a_lease_row_held_by_a_stuck_session_is_ledger_busy_not_a_hang(ledger: LedgerBackend, url: str) -> None:
    """lock_timeout (30 s unless the URL's options say otherwise) ends the wait with LedgerBusy (exit 4)."""
    lease = ledger.take_lease("web", 60)
    assert lease is not None
    impatient = open_ledger(url + "?options=-c%20lock_timeout%3D300")
    try:
        with raw(url) as stuck:
            stuck.execute("BEGIN")
            stuck.execute("SELECT 1 FROM locks WHERE app = ? FOR UPDATE", ["web"])
            with pytest.raises(LedgerBusy, match="is busy: another session has held a row") as caught:
                impatient.release_lease(lease)
            assert caught.value.exit_code == EXIT_LOCKED and pg.PASSWORD not in str(caught.value)
            stuck.execute("ROLLBACK")
        assert [held.pid for held in impatient.leases("web")] == [lease.pid], "the refused release changed nothing"
    finally:
        impatient.close()


def test_a_schema_version_no_release_wrote_is_refused(url: str) -> None:
    open_ledger(url).close()
    with raw(url) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="has schema version 1, which no rollout release wrote to PostgreSQL"):
        open_ledger(url)
