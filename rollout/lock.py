"""One rollout per app at a time: leases stored in the ledger.

A lease names its holder (user@host, pid) and expires unless a heartbeat renews
it, so a holder killed with SIGKILL blocks others for at most one lease period,
and not at all on the same host, where a dead pid is noticed at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from rollout.errors import LeaseLost, LockHeld, one_line
from rollout.ledger import Ledger, default_actor, now_iso

LEASE_SECONDS = 30.0
POLL_SECONDS = 0.2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    app: str
    holder: str
    host: str
    pid: int
    acquired_at: str
    expires_at: float
    heartbeat_at: str | None = None

    def describe(self) -> str:
        return f"{self.holder} (pid {self.pid}, since {self.acquired_at})"

    def is_stale(self, now: float) -> bool:
        if self.expires_at <= now:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(ledger: Ledger, app: str | None = None) -> list[Lease]:
    sql = "SELECT app, holder, host, pid, acquired_at, expires_at, heartbeat_at FROM locks"
    params: list[str] = []
    if app is not None:
        sql += " WHERE app = ?"
        params.append(app)
    return [Lease(*row) for row in ledger.db.execute(sql + " ORDER BY app", params).fetchall()]


def try_acquire(ledger: Ledger, app: str, lease_seconds: float = LEASE_SECONDS) -> Lease | None:
    """Take the app's lease if it is free or stale; return None when someone alive holds it."""
    now = time.time()
    with ledger.transaction() as conn:
        held = read(ledger, app)
        if held and not held[0].is_stale(now):
            return None
        if held:
            ledger._event(None, "lock:taken-over", {"app": app, "from": held[0].holder, "pid": held[0].pid})
        started = now_iso()
        lease = Lease(app, default_actor(), socket.gethostname(), os.getpid(), started, now + lease_seconds, started)
        conn.execute(
            "INSERT OR REPLACE INTO locks (app, holder, host, pid, acquired_at, expires_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [lease.app, lease.holder, lease.host, lease.pid, lease.acquired_at, lease.expires_at, lease.heartbeat_at],
        )
    return lease


def acquire(ledger: Ledger, app: str, wait: float = 0.0, lease_seconds: float = LEASE_SECONDS) -> Lease:
    deadline = time.monotonic() + wait
    while True:
        lease = try_acquire(ledger, app, lease_seconds)
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            holders = read(ledger, app)
            holder = holders[0].describe() if holders else "another rollout"
            raise LockHeld(
                f"{app} is locked by {holder}: wait for it, retry with --wait SECONDS,"
                f" or `rollout lock release {app}` if that rollout is gone"
            )
        time.sleep(POLL_SECONDS)


def renew(ledger: Ledger, lease: Lease, lease_seconds: float = LEASE_SECONDS) -> bool:
    with ledger.transaction() as conn:
        cursor = conn.execute(
            "UPDATE locks SET expires_at = ?, heartbeat_at = ? WHERE app = ? AND pid = ? AND host = ?",
            [time.time() + lease_seconds, now_iso(), lease.app, lease.pid, lease.host],
        )
    return cursor.rowcount == 1


def release(ledger: Ledger, lease: Lease) -> None:
    with ledger.transaction() as conn:
        conn.execute("DELETE FROM locks WHERE app = ? AND pid = ? AND host = ?", [lease.app, lease.pid, lease.host])


def force_release(ledger: Ledger, app: str) -> Lease | None:
    held = read(ledger, app)
    with ledger.transaction() as conn:
        conn.execute("DELETE FROM locks WHERE app = ?", [app])
        if held:
            ledger._event(None, "lock:released-by-hand", {"app": app, "holder": held[0].holder, "pid": held[0].pid})
    return held[0] if held else None


def _still_held(lease: Lease) -> "Callable[[sqlite3.Connection], None]":
    def guard(conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT 1 FROM locks WHERE app = ? AND pid = ? AND host = ?",
                           [lease.app, lease.pid, lease.host]).fetchone()
        if row is None:
            raise LeaseLost(f"another rollout took over the lock on {lease.app} while this one ran:"
                            f" stopped without changing anything more; it now decides what {lease.app} runs"
                            f" (see `rollout status {lease.app}`)")
    return guard


@contextmanager
def held(ledger: Ledger, app: str, wait: float = 0.0, lease_seconds: float = LEASE_SECONDS) -> Iterator[Lease]:
    """Hold the app's lease for the block, renewing it from a background thread.

    Inside the block every ledger write first checks, under SQLite's write lock, that the
    lease is still ours (LeaseLost if not): a holder that stalled past its lease never
    writes over the rollout that took the app over. `Ledger.check_guard` asks the same
    before a step that changes a target without writing first.
    """
    # The heartbeat gets its own connection: sqlite3 connections are not for concurrent use.
    # Opened first: failing to open it must not leave a lease behind that nobody renews.
    heartbeat_ledger = Ledger(ledger.path)
    try:
        lease = acquire(ledger, app, wait, lease_seconds)
    except BaseException:
        heartbeat_ledger.close()
        raise
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_seconds / 3):
            try:
                if renew(heartbeat_ledger, lease, lease_seconds):
                    continue
            except sqlite3.Error as exc:
                # A full disk or a briefly unreadable ledger must not end the heartbeat, or the
                # lease would expire under a rollout that is still running: try again next beat.
                log.warning("cannot renew the lock on %s (%s); retrying", app, one_line(exc))
                continue
            # Our row is gone: we stalled past the lease (a suspended machine, a stopped process)
            # and another rollout took the app over. Taking it back would make two holders.
            try:
                taker = read(heartbeat_ledger, app)
                heartbeat_ledger.event(None, "lock:lost", {"app": app, "pid": lease.pid,
                                                           "to": taker[0].holder if taker else None})
            except sqlite3.Error:
                taker = []  # the warning below still goes out
            log.warning("the lock on %s was taken over by %s while this rollout ran: stopping at the next"
                        " step; the new holder decides what %s runs", app,
                        taker[0].describe() if taker else "`rollout lock release`", app)
            return

    thread = threading.Thread(target=beat, name=f"lease-{app}", daemon=True)
    thread.start()
    ledger.guard = _still_held(lease)
    try:
        yield lease
    finally:
        ledger.guard = None
        stop.set()
        thread.join()
        heartbeat_ledger.close()
        release(ledger, lease)
