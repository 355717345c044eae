"""App leases stored in a real ledger, held by real processes, on both backends (the
`ledger_location` fixture: a SQLite file, then a PostgreSQL database). Lease expiry is judged
by the ledger's clock (`ledger.now()`): what only PostgreSQL adds (the server's clock against
a skewed client, isolation of the write guard) is in tests/test_ledger_postgres.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from rollout import lock
from rollout.errors import EXIT_LOCKED, LeaseLost, LedgerBusy, LockHeld
from rollout.ledger import LedgerBackend, default_actor, open_ledger
from support.fakes import plant, take_over
from support.ledger_interface import InterfaceOnly
from support.raw_ledger import run_sql


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[LedgerBackend]:
    opened = open_ledger(ledger_location)
    yield opened
    opened.close()


def lock_events(ledger: LedgerBackend) -> list[str]:
    """The ledger's events about no entry, oldest first, read on a handle of its own (no write guard)."""
    reader = ledger.reopen()
    try:
        return [event for (event,) in run_sql(reader, "SELECT event FROM events WHERE entry_id IS NULL ORDER BY id")]
    finally:
        reader.close()


def test_acquire_then_release(ledger: LedgerBackend) -> None:
    lease = lock.acquire(ledger, "web")
    assert (lease.app, lease.holder, lease.host) == ("web", default_actor(), socket.gethostname())
    assert lock.read(ledger) == [lease]
    lock.release(ledger, lease)
    assert lock.read(ledger) == []
    assert lock.acquire(ledger, "web") is not None


def test_leases_are_per_app(ledger: LedgerBackend) -> None:
    web = lock.acquire(ledger, "web")
    api = lock.acquire(ledger, "api")
    assert [lease.app for lease in lock.read(ledger)] == ["api", "web"]
    assert lock.read(ledger, "web") == [web]
    lock.release(ledger, api)


HOLDER = textwrap.dedent("""
    import sys
    from rollout import lock
    from rollout.ledger import open_ledger
    with lock.held(open_ledger(sys.argv[1]), "web", lease_seconds=30):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_live_holder_blocks_and_is_named(ledger: LedgerBackend, ledger_location: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ledger_location], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld) as caught:
            lock.acquire(ledger, "web", wait=0.3, lease_seconds=1)
        assert caught.value.exit_code == EXIT_LOCKED
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and default_actor() in message
        assert "rollout lock release web" in message and "\n" not in message
    finally:
        holder.communicate("", timeout=10)
    assert holder.returncode == 0
    # The holder released on its way out.
    assert lock.read(ledger, "web") == []
    lock.acquire(ledger, "web")


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(ledger: LedgerBackend) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: the pid names no process now
    plant(ledger, "web", holder="bob@here", host=socket.gethostname(), pid=dead.pid, expires_at=ledger.now() + 3600)
    lease = lock.acquire(ledger, "web", wait=0)
    assert lock.read(ledger, "web") == [lease]
    assert "lock:taken-over" in lock_events(ledger)


def test_expired_lease_from_another_host_is_taken_over(ledger: LedgerBackend) -> None:
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=1, expires_at=ledger.now() - 1)
    lease = lock.acquire(ledger, "web", wait=0)
    assert lease.host == socket.gethostname()
    assert "lock:taken-over" in lock_events(ledger)


def test_unexpired_lease_from_another_host_blocks(ledger: LedgerBackend) -> None:
    # The pid means nothing here: it belongs to another machine.
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=999999, expires_at=ledger.now() + 3600)
    with pytest.raises(LockHeld, match="bob@elsewhere"):
        lock.acquire(ledger, "web", wait=0)


def test_held_renews_while_inside_and_releases_after(ledger: LedgerBackend) -> None:
    with lock.held(ledger, "web", lease_seconds=0.6) as lease:
        first = lock.read(ledger, "web")[0].expires_at
        assert first >= lease.expires_at  # equal unless a heartbeat already ran
        # The heartbeat runs every lease/3; wait until it has moved the expiry on.
        deadline = time.monotonic() + 10
        while lock.read(ledger, "web")[0].expires_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.read(ledger, "web")[0].expires_at > first
    assert lock.read(ledger, "web") == []


def test_held_releases_when_the_block_raises(ledger: LedgerBackend) -> None:
    with pytest.raises(RuntimeError):
        with lock.held(ledger, "web"):
            raise RuntimeError("deploy blew up")
    assert lock.read(ledger, "web") == []


def test_force_release_names_the_holder(ledger: LedgerBackend) -> None:
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=7, expires_at=ledger.now() + 3600)
    gone = lock.force_release(ledger, "web")
    assert gone is not None and gone.holder == "bob@elsewhere"
    assert lock.read(ledger) == []
    assert "lock:released-by-hand" in lock_events(ledger)
    assert lock.force_release(ledger, "web") is None


CONTENDER = textwrap.dedent("""
    import os, sys, time
    from rollout import lock
    from rollout.ledger import open_ledger
    location, marks = sys.argv[1], sys.argv[2]
    def mark(what):
        fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{what} {os.getpid()}\\n".encode())
        os.close(fd)
    with lock.held(open_ledger(location), "web", wait=60, lease_seconds=10):
        mark("start")
        time.sleep(0.02)
        mark("end")
""")


def test_contending_processes_hold_the_lease_one_at_a_time(ledger: LedgerBackend, ledger_location: str,
                                                            tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    contenders = [subprocess.Popen([sys.executable, "-c", CONTENDER, ledger_location, str(marks)])
                  for _ in range(10)]
    for process in contenders:
        assert process.wait(timeout=60) == 0
    lines = [line.split() for line in marks.read_text().splitlines()]
    assert len(lines) == 20
    # Holding one at a time means every start is followed by the same process's end.
    for start, end in zip(lines[::2], lines[1::2]):
        assert start[0] == "start" and end == ["end", start[1]], lines
    assert {pid for _, pid in lines} == {str(p.pid) for p in contenders}
    assert lock.read(ledger) == []


def test_a_failing_renewal_does_not_end_the_heartbeat(ledger: LedgerBackend, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    real_renew, calls = lock.renew, []

    def flaky(*args: object, **kwargs: object) -> bool:
        calls.append(1)
        if len(calls) == 1:
            # What the backend's driver raises for a full disk (sqlite3.OperationalError, psycopg's).
            raise ledger.database_errors[0]("database or disk is full")
        return real_renew(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lock, "renew", flaky)
    with lock.held(ledger, "web", lease_seconds=0.6) as lease:
        deadline = time.monotonic() + 10
        while lock.read(ledger, "web")[0].expires_at == lease.expires_at and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.read(ledger, "web")[0].expires_at > lease.expires_at  # renewed after the failure
    assert len(calls) >= 2
    assert "cannot renew the lock on web (database or disk is full)" in caplog.text


def test_a_lease_taken_over_is_not_taken_back(ledger: LedgerBackend, caplog: pytest.LogCaptureFixture) -> None:
    with lock.held(ledger, "web", lease_seconds=0.6) as lease:
        # As if this process had stalled past its lease and another rollout had taken over.
        take_over(ledger)
        # Our next write is refused inside its own transaction (SQLite: under its write lock;
        # PostgreSQL: after locking our lease row), whatever the heartbeat has noticed yet.
        with pytest.raises(LeaseLost, match="another rollout took over the lock on web"):
            ledger.event(None, "too-late")
        assert "too-late" not in lock_events(ledger)
        deadline = time.monotonic() + 10
        while "lock:lost" not in lock_events(ledger) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "lock:lost" in lock_events(ledger)
        assert lock.read(ledger, "web")[0].holder == "ops@other"
    # Leaving the block releases only our own lease, never the new holder's.
    assert [(held.holder, held.pid) for held in lock.read(ledger, "web")] == [("ops@other", 4242)]
    assert lease.pid != 4242
    assert "taken over by ops@other" in caplog.text


def test_a_heartbeat_connection_that_cannot_open_leaves_no_lease_behind(ledger: LedgerBackend, ledger_location: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def busy() -> LedgerBackend:
        raise LedgerBusy(f"ledger {ledger_location} is busy (database is locked)")

    # The heartbeat's handle is a second ledger object on the same ledger (LedgerBackend.reopen).
    monkeypatch.setattr(ledger, "reopen", busy)
    with pytest.raises(LedgerBusy):
        with lock.held(ledger, "web"):
            pytest.fail("the block must not run without a heartbeat")
    assert lock.read(ledger, "web") == [], "nobody would renew or release it"


def test_the_lock_needs_nothing_but_the_ledger_interface(ledger: LedgerBackend) -> None:
    # Handed a ledger that answers only LedgerBackend's operations (no SQL, no private
    # methods), every lock operation still works: it would on another backend too.
    only = InterfaceOnly(ledger)
    with lock.held(only, "web", lease_seconds=0.6) as lease:  # type: ignore[arg-type]
        assert lock.read(only, "web") == [lease]  # type: ignore[arg-type]
        with pytest.raises(LockHeld, match=f"pid {lease.pid}"):
            lock.acquire(only, "web", wait=0)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while lock.read(only, "web")[0].expires_at == lease.expires_at and time.monotonic() < deadline:  # type: ignore[arg-type]
            time.sleep(0.05)
        assert lock.read(only, "web")[0].expires_at > lease.expires_at, "the heartbeat renewed it"  # type: ignore[arg-type]
        only.event(None, "written while held")
    assert lock.read(only) == []  # type: ignore[arg-type]
    plant(ledger, "web", holder="bob@elsewhere", host="elsewhere.invalid", pid=1, expires_at=ledger.now() - 1)
    taken = lock.try_acquire(only, "web")  # type: ignore[arg-type]
    assert taken is not None and lock.renew(only, taken)  # type: ignore[arg-type]
    released = lock.force_release(only, "web")  # type: ignore[arg-type]
    assert released is not None and (released.holder, released.pid) == (taken.holder, taken.pid)
    assert lock.read(only) == []  # type: ignore[arg-type]
    assert lock_events(ledger) == ["written while held", "lock:taken-over", "lock:released-by-hand"]


# -- a lease is its token, not (host, pid) ---------------------------------------------------------


def test_a_lease_taken_over_by_a_holder_with_the_same_host_and_pid_is_still_lost(ledger: LedgerBackend) -> None:
    """Containers sharing a host name (host networking) reuse pids, pid 1 above all: the guard,
    the renewal and the release match the lease's own token, so the first holder cannot write
    over, renew or drop the lease of a second one that took the app over with the same pid."""
    first = lock.try_acquire(ledger, "web", lease_seconds=60)
    assert first is not None and first.token
    other = ledger.reopen()
    try:
        with other.transaction():
            run_sql(other, "DELETE FROM locks WHERE app = ?", ["web"])
            plant(other, "web", holder=first.holder, host=first.host, pid=first.pid, expires_at=other.now() + 60,
                  token="another-machine:0123")
    finally:
        other.close()
    ledger.guard_writes(first)
    with pytest.raises(LeaseLost):
        ledger.check_guard()
    ledger.guard_writes(None)
    assert not lock.renew(ledger, first)
    lock.release(ledger, first)
    [held] = lock.read(ledger, "web")
    assert held.token == "another-machine:0123", "the first holder's release left the second's lease alone"


def test_a_dead_pid_on_another_machine_with_the_same_host_name_is_not_stale(ledger: LedgerBackend) -> None:
    """Only on this machine (same boot and pid namespace) does a gone pid free a lease early."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    plant(ledger, "web", holder="ops@twin", host=socket.gethostname(), pid=pid, expires_at=ledger.now() + 60,
          token="other-boot-id-4026531836:0123")
    assert lock.try_acquire(ledger, "api") is not None  # another app is free
    assert lock.try_acquire(ledger, "web") is None, "a twin container's live lease is not taken over"
    from rollout.ledger import machine_identity

    run_sql(ledger, "UPDATE locks SET token = ? WHERE app = ?", [machine_identity() + ":0123", "web"])
    assert lock.try_acquire(ledger, "web") is not None, "on this machine a gone pid frees the lease at once"
